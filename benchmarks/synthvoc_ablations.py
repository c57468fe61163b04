"""The paper's comparisons on SynthVOC, from both demo recipes, each trained for the same budget: `groupvit demo`
once per (recipe, variant).

    python -m benchmarks.synthvoc_ablations --minutes 10 --out ablations/    # the paper's comparisons, both recipes
    python -m benchmarks.synthvoc_ablations --recipes fast --variants levers         # each lever of `fast` taken out
    python -m benchmarks.synthvoc_ablations --variants base,vit --minutes 20         # a subset
    python -m benchmarks.synthvoc_ablations --scene max_clutter=0 --scene max_objects=2   # on easier scenes
    python -m benchmarks.synthvoc_ablations --recipes paper --flags "--grouping-init fan_in"  # from a variant

Writes OUT/<recipe>/<variant>/ (each demo's results.json, report.html, checkpoint) and OUT/table.md + table.json.
On a GPU the same command runs each variant on it; on 2 CPU cores budget about (minutes + 2) per variant.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from groupvit.demo import RECIPES


def comparisons(recipe: str) -> dict[str, list[str]]:
    """The paper's comparisons as `groupvit demo` flags over `recipe`: the recipe itself, a plain ViT with the same
    losses, soft assignment, no multi-label loss, and the other number of grouping stages."""
    other = 1 if RECIPES[recipe]["stages"] == 2 else 2
    return {"base": [], "vit": ["--baseline", "vit"], "soft_assignment": ["--soft-assignment"],
            "no_multi_label": ["--no-multi-label"], f"stages_{other}": ["--stages", str(other)]}  # fmt: skip


# Each way the fast recipe departs from the paper's, put back one at a time (leave-one-out).
LEVERS: dict[str, list[str]] = {
    "softmax_losses": ["--loss", "softmax"],
    "own_positives": ["--noun-positives", "own"],
    "no_deep_noun_loss": ["--deep-noun-loss", "0"],
    "pooled_noun_loss": ["--noun-loss", "pooled"],
    "reference_init": ["--grouping-init", "reference"],
    "shard_loader": ["--no-in-memory"],
}


def variants(recipe: str) -> dict[str, list[str]]:
    """Every variant that can be run from `recipe`: its comparisons, and for `fast` its levers."""
    return comparisons(recipe) | (LEVERS if recipe == "fast" else {})


def table(rows: dict[tuple[str, str], dict], flags: Sequence[str] = ()) -> str:
    """Markdown table of the runs' results; with shared flags the base row is the recipe with those flags."""
    lines = ["| recipe | variant | mIoU | mIoU at 0.95 | groups in use | oracle-named mIoU | recognition % | "
             "images seen | minutes |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (recipe, name), r in rows.items():
        label = "base (with the shared flags)" if flags and name == "base" else name
        lines.append(
            f"| {recipe} | {label} | {r['miou']:.1f} | {r['miou_at_official_threshold']:.1f} | "
            f"{r['groups_in_use']:.2f} | {r['oracle']['miou']:.1f} | {r['recognition']['pooled']:.1f} | "
            f"{r['images_seen']} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--variants", default="comparisons",
                        help="comma-separated variant names, or 'comparisons' (the paper's, the default), 'levers' "
                        f"(the fast recipe's, put back one at a time: {', '.join(LEVERS)}), 'all'")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default="synthvoc_ablations")
    parser.add_argument("--data", help="SynthVOC folder (default: groupvit demo's cache)")
    parser.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE", help="scene option, as demo's")
    parser.add_argument("--flags", type=shlex.split, default=[],
                        help="`groupvit demo` flags for every variant, after the recipe and before the variant's own, "
                        "so the ablations can start from a variant of a recipe")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="training config key=value for every variant")
    return parser


def selected(recipe: str, spec: str) -> list[str]:
    """The variant names `spec` means for `recipe` (groups skip what the recipe does not have)."""
    groups = {"comparisons": list(comparisons(recipe)), "levers": list(LEVERS) if recipe == "fast" else [],
              "all": list(variants(recipe))}  # fmt: skip
    names = [n.strip() for n in spec.split(",") if n.strip()]
    out = [v for n in names for v in groups.get(n, [n])]
    unknown = [v for v in out if v not in variants(recipe)]
    if unknown or not names:
        problem = f"unknown variants {unknown} for recipe {recipe}" if unknown else "no variants given"
        raise ValueError(f"{problem}; choose from {', '.join([*groups, *variants(recipe)])}")
    return list(dict.fromkeys(out))


def demo_command(recipe: str, variant: str, args: argparse.Namespace) -> list[str]:
    """The `groupvit demo` command line of one run, with the options every run shares."""
    return [sys.executable, "-m", "groupvit", "demo", "--minutes", str(args.minutes),
            "--out", str(Path(args.out) / recipe / variant), "--recipe", recipe, *args.flags,
            *variants(recipe)[variant], *(["--data", args.data] if args.data else []),
            *(f"--scene={option}" for option in args.scene), *args.overrides]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if not recipes or any(r not in RECIPES for r in recipes):
        parser.error(f"--recipes takes names from {', '.join(RECIPES)}, got {args.recipes!r}")
    try:
        runs = [(recipe, name) for recipe in recipes for name in selected(recipe, args.variants)]
    except ValueError as e:
        parser.error(str(e))
    out = Path(args.out)
    rows = {}
    shared = "".join(f"{what}: `{' '.join(value)}`\n\n" for what, value in (
        ("flags of every variant", args.flags), ("scene", args.scene), ("overrides", args.overrides)
    ) if value)  # fmt: skip
    for recipe, name in runs:
        cmd = demo_command(recipe, name, args)
        print(f"== {recipe} / {name}: {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True)
        rows[(recipe, name)] = json.loads((out / recipe / name / "results.json").read_text())
        (out / "table.json").write_text(json.dumps({f"{r}/{n}": v for (r, n), v in rows.items()}, indent=2))
        report = shared + table(rows, args.flags)
        (out / "table.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
