"""Imports run one way: no module imports, even lazily, one that imports it back (docs/architecture.md)."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "groupvit"


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, top-level and lazy alike (`from . import x` counts as `x`)."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts) for p in PACKAGE.rglob("*.py")}
    modules = {m.removesuffix(".__init__") for m in modules}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        name = ".".join(parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = parts[: len(parts) - node.level] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t not in (name, "groupvit")}
        graph[name] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, by depth-first search from every module."""
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in path and nxt > path[0]:  # each circle found from its smallest module only
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return [list(c) for c in sorted(found)]


def test_cycle_finder_finds_a_hand_made_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "e2"]]


def test_no_import_circles_in_the_package():
    graph = package_imports()
    assert "groupvit.checkpoint" in graph["groupvit.factory"]  # the reader sees imports at all
    assert "groupvit.evaluation.run" in graph["groupvit.demo"]  # and lazy ones, inside functions
    assert cycles(graph) == []


def test_checkpoint_load_model_still_importable_without_an_upward_import():
    graph = package_imports()
    assert "groupvit.factory" not in graph["groupvit.checkpoint"]
    code = "from groupvit.checkpoint import load_model; import groupvit.factory as f; assert load_model is f.load_model"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
