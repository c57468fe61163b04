"""The paper's comparisons on SynthVOC, each trained for the same budget: `groupvit demo` once per variant.

    python -m benchmarks.synthvoc_ablations --minutes 10 --out ablations/          # all variants, in turn
    python -m benchmarks.synthvoc_ablations --variants paper,vit --minutes 20      # a subset
    python -m benchmarks.synthvoc_ablations --scene max_clutter=0 --scene max_objects=2   # on easier scenes
    python -m benchmarks.synthvoc_ablations --flags "--grouping-init fan_in --noun-loss max_token"  # from a variant

Writes OUT/<variant>/ (each demo's results.json, report.html, checkpoint) and OUT/table.md + OUT/table.json.
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

# variant -> `groupvit demo` flags
VARIANTS: dict[str, list[str]] = {
    "paper": [],
    "vit": ["--baseline", "vit"],
    "soft_assignment": ["--soft-assignment"],
    "no_multi_label": ["--no-multi-label"],
    "one_stage": ["--stages", "1"],
    "max_token": ["--noun-loss", "max_token"],
    "vit_max_token": ["--baseline", "vit", "--noun-loss", "max_token"],
    "fan_in_init": ["--grouping-init", "fan_in"],
    "fan_in_max_token": ["--grouping-init", "fan_in", "--noun-loss", "max_token"],
    "drop_boilerplate_nouns": ["--drop-boilerplate-nouns"],
}


def table(rows: dict[str, dict], flags: Sequence[str] = ()) -> str:
    """Markdown table of the variants' results; with shared flags the flag-free variant is their base, not the paper."""
    lines = ["| variant | mIoU | mIoU at 0.95 | groups in use | oracle-named mIoU | recognition % | images seen "
             "| minutes |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        label = "base (the shared flags)" if flags and not VARIANTS[name] else name
        lines.append(
            f"| {label} | {r['miou']:.1f} | {r['miou_at_official_threshold']:.1f} | {r['groups_in_use']:.2f} | "
            f"{r['oracle']['miou']:.1f} | {r['recognition']['pooled']:.1f} | {r['images_seen']} | {r['minutes']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", default="synthvoc_ablations")
    parser.add_argument("--data", help="SynthVOC folder (default: groupvit demo's cache)")
    parser.add_argument("--scene", action="append", default=[], metavar="KEY=VALUE", help="scene option, as demo's")
    parser.add_argument("--flags", type=shlex.split, default=[],
                        help="`groupvit demo` flags for every variant, before its own, so the ablations can start "
                        "from a variant instead of the paper's recipe")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="training config key=value for every variant")
    return parser


def demo_command(variant: str, args: argparse.Namespace) -> list[str]:
    """The `groupvit demo` command line of one variant, with the options every variant shares."""
    return [sys.executable, "-m", "groupvit", "demo", "--minutes", str(args.minutes),
            "--out", str(Path(args.out) / variant), *args.flags, *VARIANTS[variant],
            *(["--data", args.data] if args.data else []),
            *(f"--scene={option}" for option in args.scene), *args.overrides]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        problem = f"unknown variants {unknown}" if unknown else "no variants given"
        parser.error(f"{problem}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    rows = {}
    shared = "".join(f"{what}: `{' '.join(value)}`\n\n" for what, value in (
        ("flags of every variant", args.flags), ("scene", args.scene), ("overrides", args.overrides)
    ) if value)  # fmt: skip
    for name in names:
        cmd = demo_command(name, args)
        print(f"== {name}: {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True)
        rows[name] = json.loads((out / name / "results.json").read_text())
        (out / "table.json").write_text(json.dumps(rows, indent=2))
        report = shared + table(rows, args.flags)
        (out / "table.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
