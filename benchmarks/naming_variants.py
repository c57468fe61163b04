"""The naming variants (groupvit.naming) on SynthVOC val, for one or more trained models: a table per model.

    python -m benchmarks.naming_variants synthvoc_demo/model.safetensors runs/60min/model.safetensors \\
        --data ~/.cache/groupvit/synthvoc-0 --out naming_variants/
    python -m benchmarks.naming_variants MODEL --data ROOT --out DIR --rows official,calibrated,voc_words \\
        --grid 0.1,0.3,0.5,0.7,0.9      # some rows, a coarser grid (per-class rows name calib ~2 x 20 x grid times)

Every threshold is chosen on SynthVOC's labelled `calib` split, never on `val`: per row the single threshold
(a grid over `--grid`) or, for the per-class rows, one threshold per class by coordinate ascent from it. Each
model's val scenes are encoded once and named under every row. Columns: mIoU, background IoU, mean object IoU
(the classes without background), oracle-named mIoU (each final group named by the class it overlaps most: the
grouping alone, the same for every row), mIoU on val scenes with exactly 1 and exactly 4 objects (what top-k and
gating do to few and many objects), and mIoU on dense scenes of 6 or more objects (more classes than final groups
can hold: hierarchical naming). The dense scenes are generated once under OUT/dense (`--dense-scene KEY=VALUE`
over the defaults min_objects=6, max_objects=8, object_scale=[0.2,0.4]; scenes that fit fewer than 6 objects
are left out). Writes OUT/table.md and OUT/results.json. Every number is a protocol variant of the SynthVOC
demo's evaluation (whole image at the model's input size).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groupvit.checkpoint import load_model
from groupvit.data.synthvoc import SynthVOCSpec, generate, voc_root
from groupvit.demo import scene_options
from groupvit.evaluation.datasets import load_dataset
from groupvit.evaluation.run import CALIBRATION_GRID, CalibrationImages, evaluate_namings
from groupvit.naming import CAR_WORDS, SCLIP_WORDS, Naming

# row -> (naming, threshold): a number, None (no threshold rule), "calib" (chosen on calib) or "per_class"
# (one per class by coordinate ascent on calib, from the calibrated single threshold).
ROWS: dict[str, tuple[Naming, float | str | None]] = {
    "official": (Naming(), 0.95),
    "calibrated": (Naming(), "calib"),
    "per_class": (Naming(), "per_class"),
    "voc_words": (Naming(background_words=SCLIP_WORDS), None),
    "voc_words_calibrated": (Naming(background_words=SCLIP_WORDS), "calib"),
    "car_words_calibrated": (Naming(background_words=CAR_WORDS), "calib"),
    "area_0.1": (Naming(min_area=0.1), "calib"),
    "top_1": (Naming(top_k=1), "calib"),
    "top_3": (Naming(top_k=3), "calib"),
    "all_classes": (Naming(top_k=None), "calib"),
    "gate_0.1": (Naming(top_k=None, gate=0.1), "calib"),
    "gate_0.3": (Naming(top_k=None, gate=0.3), "calib"),
    "hierarchical_0.3": (Naming(hierarchical=0.3), "calib"),
    "hierarchical_0.6": (Naming(hierarchical=0.6), "calib"),
    "voc_words_area": (Naming(background_words=SCLIP_WORDS, min_area=0.1), "calib"),
    "voc_words_per_class": (Naming(background_words=SCLIP_WORDS), "per_class"),
    "voc_words_hierarchical": (Naming(background_words=SCLIP_WORDS, hierarchical=0.3), "calib"),
    "words_area_hierarchical_per_class": (Naming(background_words=SCLIP_WORDS, min_area=0.1, hierarchical=0.3),
                                          "per_class"),
}  # fmt: skip
DENSE_SCENE = ("min_objects=6", "max_objects=8", "object_scale=[0.2,0.4]")
COLUMNS = ("mIoU", "background IoU", "mean object IoU", "oracle-named mIoU", "mIoU 1 object", "mIoU 4 objects",
           "mIoU 6+ objects", "calib mIoU", "threshold")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="trained weights (model.safetensors of groupvit demo or train)")
    parser.add_argument("--data", required=True, help="a SynthVOC root (groupvit demo's --data or its cache)")
    parser.add_argument("--out", required=True, help="folder for table.md, results.json and the dense scenes")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--calib-images", type=int, default=100, help="calib scenes the thresholds are chosen on")
    parser.add_argument("--val-images", type=int, help="only the first N val scenes (default: all)")
    parser.add_argument("--grid", type=lambda s: [float(t) for t in s.split(",")], default=list(CALIBRATION_GRID),
                        help="thresholds tried on calib (default 0.05 to 0.95 by 0.05)")  # fmt: skip
    parser.add_argument("--dense-scenes", type=int, default=300, help="dense scenes to generate")
    parser.add_argument("--dense-scene", action="append", default=[], metavar="KEY=VALUE",
                        help=f"dense scene option over {' '.join(DENSE_SCENE)} and --data's own")  # fmt: skip
    return parser


def object_counts(root: Path) -> dict[str, int]:
    """Scene id -> number of objects placed in it (SynthVOC's scenes.json)."""
    return {k: len(v["objects"]) for k, v in json.loads((voc_root(root) / "scenes.json").read_text()).items()}


def subset(dataset, keep) -> object:
    """The dataset restricted to the scenes whose id `keep` accepts."""
    return dataclasses.replace(dataset, samples=[s for s in dataset.samples if keep(s[0])])


def dense_root(data: Path, out: Path, scenes: int, overrides: Sequence[str]) -> Path:
    """Generate (once, cached by its manifest) val scenes with --data's options and the dense overrides."""
    spec = json.loads((data / "manifest.json").read_text())["spec"]
    scene = scene_options(spec["scene"], [*DENSE_SCENE, *overrides])
    root = out / "dense"
    generate(root, SynthVOCSpec(seed=spec["seed"], train=0, val=scenes, test=0, calib=0, scene=scene), progress=False)
    return root


def thresholds_on_calib(images: CalibrationImages, naming: Naming, threshold, grid: Sequence[float]) -> dict:
    """The row's threshold and naming after calibration, with the calib mIoU."""
    if threshold not in ("calib", "per_class"):
        return {"threshold": threshold, "naming": naming, "calib_miou": images.miou(threshold, naming)}
    chosen, curve = images.threshold(naming, grid)
    if threshold == "calib":
        return {"threshold": chosen, "naming": naming, "calib_miou": curve[chosen]}
    per_class, miou = images.class_thresholds(chosen, naming, grid)
    return {"threshold": None, "naming": dataclasses.replace(naming, class_thresholds=per_class), "calib_miou": miou,
            "start": chosen}  # fmt: skip


def summary(result: dict | None) -> dict:
    """mIoU, background IoU and the mean IoU of the object classes (percent; None when absent)."""
    if result is None:
        return {"miou": None, "background": None, "objects": None}
    objects = [v for k, v in result["per_class"].items() if k != "background" and v is not None]
    return {"miou": result["miou"], "background": result["per_class"]["background"],
            "objects": float(np.mean(objects)) if objects else None}  # fmt: skip


def cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def threshold_cell(threshold: float | str | None) -> str:
    """A row's background threshold: none (no threshold rule), a number, or 'per class from T'."""
    return "none" if threshold is None else threshold if isinstance(threshold, str) else f"{threshold:g}"


def evaluate_model(path: str, rows: Sequence[str], args: argparse.Namespace, dense: Path | None) -> dict:
    """One model: thresholds chosen on calib, then every row on val, its 1- and 4-object scenes and the dense ones."""
    model = load_model(path)
    size = model.config.vision.image_size  # SynthVOC is scored at the model's input size, as the demo does
    data = Path(args.data)
    val = load_dataset("voc", voc_root(data), "val")
    val = dataclasses.replace(val, samples=val.samples[: args.val_images or len(val)])
    images = CalibrationImages(model, load_dataset("voc", voc_root(data), "calib"), args.calib_images, "whole",
                               members=True, short_side=size)  # fmt: skip
    chosen = {row: thresholds_on_calib(images, *ROWS[row], args.grid) for row in rows}
    options = {row: (c["threshold"], c["naming"]) for row, c in chosen.items()}
    counts = object_counts(data)
    parts = {"1_object": subset(val, lambda i: counts[i] == 1), "4_object": subset(val, lambda i: counts[i] == 4)}
    if dense is not None:
        dense_counts = object_counts(dense)
        parts["6plus"] = subset(load_dataset("voc", voc_root(dense), "val"), lambda i: dense_counts[i] >= 6)
    common = dict(mode="whole", short_side=size, progress=False)
    results = {"val": evaluate_namings(model, val, options, oracle=True, **common)}
    results.update({k: evaluate_namings(model, d, options, **common) if d.samples else None for k, d in parts.items()})
    table = {}
    for row in rows:
        c = chosen[row]
        table[row] = {
            **summary(results["val"][row]),
            "oracle": results["val"][row]["oracle"]["miou"],
            **{k: summary(results[k] and results[k][row])["miou"] for k in parts},
            "calib_miou": c["calib_miou"],
            "threshold": f"per class from {c['start']}" if "start" in c else c["threshold"],
            "naming": c["naming"].to_dict(),
        }
    scenes = {"calib": len(images.items), "val": len(val), **{k: len(d) for k, d in parts.items()}}
    return {"model": path, "scenes": scenes, "rows": table}


def markdown(report: dict) -> str:
    lines = [f"### {report['model']}", "", "scenes: " + ", ".join(f"{k} {v}" for k, v in report["scenes"].items()), "",
             "| row | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]  # fmt: skip
    for row, r in report["rows"].items():
        values = [r["miou"], r["background"], r["objects"], r["oracle"], r.get("1_object"), r.get("4_object"),
                  r.get("6plus"), r["calib_miou"]]  # fmt: skip
        lines.append(f"| {row} | " + " | ".join(cell(v) for v in values) + f" | {threshold_cell(r['threshold'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"{f'unknown rows {unknown}' if unknown else 'no rows given'}; choose from {', '.join(ROWS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense = dense_root(Path(args.data), out, args.dense_scenes, args.dense_scene) if args.dense_scenes else None
    reports = []
    for path in args.models:
        print(f"== {path}", flush=True)
        reports.append(evaluate_model(path, rows, args, dense))
        text = "\n".join(markdown(r) for r in reports)
        (out / "table.md").write_text(text)
        (out / "results.json").write_text(json.dumps(reports, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
