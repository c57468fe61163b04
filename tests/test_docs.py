"""Every code block of README.md and docs/ runs, offline (common rule: the docs' commands must work as written).

Blocks are found in README.md and every docs/**/*.md, also docs added later. A ```bash (or sh, shell) block runs in
bash with `set -euo pipefail` in a fresh folder holding `photo.jpg` (the user's photograph the docs talk about),
with the package's `groupvit` first on PATH, no network (HF_HUB_OFFLINE=1) and empty caches. The ```python blocks
of one file run in order in one namespace, as a reader would paste them, in such a folder too. Blocks of any other
language (text, yaml, json, ...) are not code.

A block that cannot run here (released weights to download, datasets, GPUs, trainings of minutes, servers that
never return) says so in its fence: ```bash no-run: WHY. Each such block is a skipped case of this file with its
reason, listed by `pytest -rs`; nothing is left out silently.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("bash", "sh", "shell")
PYTHON = ("python", "py")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    no_run: str | None  # the reason it does not run, or None
    code: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (fences may be indented, as in lists)."""
    found, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, info = opening["indent"], opening["info"].strip()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{i + 1}: a code block that is never closed"
        language, _, rest = info.partition(" ")
        rest = rest.strip()
        no_run = rest.removeprefix("no-run").lstrip(":").strip() if rest.startswith("no-run") else None
        code = textwrap.dedent("\n".join(line.removeprefix(indent) for line in lines[i + 1 : end]))
        found.append(Block(str(path.relative_to(ROOT)), i + 1, language.lower(), no_run, code))
        i = end + 1
    return found


ALL = [b for path in doc_files() for b in blocks(path)]
SHELL_BLOCKS = [b for b in ALL if b.language in SHELLS]
PYTHON_FILES = sorted({b.file for b in ALL if b.language in PYTHON})


def test_blocks_are_found_and_every_block_that_does_not_run_says_why():
    assert {"README.md", "docs/models.md", "docs/protocol.md"} <= {b.file for b in ALL}
    assert any(b.no_run is None for b in SHELL_BLOCKS) and any(b.language in PYTHON for b in ALL)
    unexplained = [b.id for b in ALL if b.no_run is not None and len(b.no_run) < 10]
    assert not unexplained, f"say why these blocks do not run (```bash no-run: WHY): {unexplained}"
    marked_text = [b.id for b in ALL if b.no_run is not None and b.language not in SHELLS + PYTHON]
    assert not marked_text, f"no-run marks code blocks only (bash, python); these are text already: {marked_text}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh folder with the photograph the docs name, and caches that hold nothing."""
    folder = tmp_path / "work"
    folder.mkdir()
    y, x = np.mgrid[0:240, 0:320]
    photo = np.stack([x * 255 // 320, y * 255 // 240, (x + y) * 255 // 560], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(folder / "photo.jpg")
    return folder


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "GROUPVIT_CACHE": str(tmp_path / "groupvit"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.id for b in SHELL_BLOCKS])
def test_shell_block_runs(block: Block, workdir: Path, tmp_path: Path):
    if block.no_run is not None:
        pytest.skip(f"{block.id} marked no-run: {block.no_run}")
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=offline_env(tmp_path),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, f"{block.id} failed ({run.returncode}):\n{block.code}\n{run.stdout}\n{run.stderr}"


@pytest.mark.parametrize("file", PYTHON_FILES)
def test_python_blocks_run(file: str, workdir: Path, tmp_path: Path):
    """A file's python blocks in order, in one namespace, in a subprocess (a fresh interpreter, offline)."""
    runnable = [b for b in ALL if b.file == file and b.language in PYTHON and b.no_run is None]
    if not runnable:
        pytest.skip("every python block of this file is marked no-run: " + "; ".join(
            b.no_run or "" for b in ALL if b.file == file and b.language in PYTHON))  # fmt: skip
    script = "namespace = {'__name__': '__main__'}\n" + "".join(
        f"print('--- block at {b.id}', flush=True)\nexec(compile({b.code!r}, {b.id!r}, 'exec'), namespace)\n"
        for b in runnable
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=offline_env(tmp_path), capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, f"{file}'s python blocks failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
