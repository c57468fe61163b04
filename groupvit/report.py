"""The demo's report: report.html with its tables, the mIoU curve as inline SVG, and the grids of scenes."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .evaluation.datasets import IGNORE_INDEX
from .recipes import NAMINGS, PAPER_VARIANT, RECIPES, SHIPPED


def largest_object_named(prediction: np.ndarray, target: np.ndarray) -> tuple[int, float]:
    """The scene's largest object class (most ground-truth pixels, background 0 and ignore 255 left out) and the
    IoU of the prediction with it; the report grid's check counts the scenes where that IoU reaches a bar (the
    largest object segmented and named correctly). (-1, 0.0) for a scene without objects."""
    counts = np.bincount(target[(target != 0) & (target != IGNORE_INDEX)].ravel(), minlength=1)
    if counts.sum() == 0:
        return -1, 0.0
    largest = int(counts.argmax())
    valid = target != IGNORE_INDEX
    truth, predicted = (target == largest) & valid, (prediction == largest) & valid
    return largest, float((truth & predicted).sum() / (truth | predicted).sum())


def write_report(model, dataset, scenes: dict, result: dict, out: Path, size: int, images: int = 12, shipped=None,
                 min_iou: float = 0.5, shipped_title: str = f"shipped {SHIPPED}") -> dict:  # fmt: skip
    """report.html: the numbers, the mIoU curve, and a grid of image / ground truth / prediction (at the model's
    recorded test settings: the naming and threshold chosen on calib) / group maps;
    with `shipped` (the model shipped in the package, or the one a fine-tuning run started from: `shipped_title`),
    its prediction beside the fresh model's. Returns the grid's check: in how many of its scenes the largest object
    is segmented and named correctly (IoU >= `min_iou`)."""
    from .segmentation import ZeroShotSegmenter
    from .viz import comparison_grid, group_maps_image, result_grid

    segmenter = ZeroShotSegmenter(model, dataset.class_names, mode="whole", short_side=size)
    other = None if shipped is None else ZeroShotSegmenter(shipped, dataset.class_names, group_maps=False)
    rows, groups, largest, ious = [], [], [], []
    for i in range(min(images, len(dataset))):
        image_id, image, target = dataset[i]
        seg = segmenter(image)
        label, iou = largest_object_named(seg.labels, target)
        ious.append(iou)
        largest.append({"id": image_id, "class": dataset.label_names[label] if label >= 0 else None,
                        "iou": round(100 * iou, 1)})  # fmt: skip
        rows.append((image, target, seg.labels, *([] if other is None else [other(image).labels])))
        groups.append([group_maps_image(image, seg.group_maps)])
    titles = ("image", "ground truth", "this run", *([] if other is None else [shipped_title]))
    names = [dataset.samples[i][0] for i in range(len(rows))]
    captions = [f"{name}: {scenes[name]['caption']}" for name in names]
    comparison_grid(rows, dataset.label_names, titles, captions=captions).save(out / "report_grid.png")
    result_grid(groups, captions=captions).save(out / "report_groups.png")
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'absent' if iou is None else f'{iou:.1f}'}</td></tr>"
        for name, iou in result["per_class"].items()
    )
    check = {"scenes": len(rows), "largest_object_correct": sum(iou >= min_iou for iou in ious),
             "min_iou": min_iou, "per_scene": largest}  # fmt: skip
    caption_list = "".join(f"<li>{html.escape(caption)}</li>" for caption in captions)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>groupvit demo</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:0.1em 1em;text-align:left}}
table{{border-collapse:collapse;margin:0.5em 0}}tr:nth-child(even){{background:#f2f2f2}}img{{max-width:100%}}
</style></head><body>
<h1>SynthVOC zero-shot segmentation</h1>
<p>Trained on captions only for {result["minutes"]:.1f} minutes ({result["steps"]} steps, {result["images_seen"]}
image-caption pairs); recipe <b>{html.escape(result["recipe"])}</b>.</p>
<h2>Results on {result["images"]} validation scenes</h2>
{results_table(result)}
{finetune_paragraph(result)}
{shipped_paragraph(result.get("shipped_model"), in_grid=not result.get("init"))}
<h2>Departures from the paper's recipe</h2>
{departures_table(result["departures_from_paper"])}
{curve_svg(result["curve"])}
<h2>Validation scenes</h2>
<p>The predictions of this run are at the settings the model records: the naming chosen on calib
({html.escape(result["naming_choice"]["chosen"])}, threshold {result["naming_choice"]["threshold"]}). The largest object
segmented and named correctly (IoU >= {min_iou:.1f}) in <b>{check["largest_object_correct"]} of {check["scenes"]}</b>
scenes below.</p>
<img src="report_grid.png" alt="image, ground truth and prediction">
<img src="report_groups.png" alt="final groups of every stage">
<ol start="0">{caption_list}</ol>
<h2>Per class IoU</h2><table>{table}</table></body></html>"""
    (out / "report.html").write_text(page)
    return check


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small HTML table, every cell escaped."""

    def row(cells: Sequence[object], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells) + "</tr>"

    return f"<table>{row(header, 'th')}{''.join(row(r, 'td') for r in rows)}</table>"


def results_table(result: dict) -> str:
    """The report's numbers, one per row, each saying what it measures."""
    recognition, naming = result["recognition"], result["naming_choice"]
    by_objects = ", ".join(
        f"{n} object{'s' * (n != '1')}: {g:.2f}" for n, g in result["groups_in_use_by_objects"].items()
    )
    rows = [
        ("mIoU (21 classes with background)", f"{result['miou']:.2f}",
         f"background threshold {result['background_threshold']}, chosen on the calib split"),
        ("mIoU at the official threshold 0.95", f"{result['miou_at_official_threshold']:.2f}", ""),
        ("mIoU of oracle-named groups", f"{result['oracle']['miou']:.2f}",
         "each group named by the class it overlaps most: grouping apart from naming"),
        ("Recognition, pooled embedding / best group",
         f"{recognition['pooled']:.1f} % / {recognition['best_group']:.1f} %",
         "each scene's classes among its top-ranked classes"),
        ("Final groups in use per image", f"{result['groups_in_use']:.2f}", by_objects),
        (f"mIoU with the naming chosen on calib: {naming['chosen']}", f"{naming['val_miou']:.2f}",
         f"threshold {naming['threshold']}, among {', '.join(NAMINGS)} (a protocol variant; groupvit.naming); "
         "the model records it"),
    ]  # fmt: skip
    return html_table(("", "value", "how"), rows)


def departures_table(departures: dict) -> str:
    if not departures:
        return "<p>None: this run is the paper's recipe.</p>"
    paper = RECIPES["paper"] | PAPER_VARIANT
    return html_table(("option", "this run", "paper"), [(k, v, paper[k]) for k, v in departures.items()])


def finetune_paragraph(result: dict) -> str:
    """What fine-tuning changed (the model before, in the grid's last column) and what was forgotten of VOC."""
    parts = []
    if result.get("init"):
        b = result["before"]
        parts.append(f"Fine-tuned from <code>{html.escape(result['init'])}</code> on the {result['vocabulary']} "
                     f"classes. Before fine-tuning, calibrated the same way: <b>mIoU {b['miou']:.2f}</b>, recognition "
                     f"{b['recognition']['pooled']:.1f} %; its predictions are the grid's last column.")  # fmt: skip
    if "voc_miou" in result:
        before = result.get("before", {})

        def was(key: str) -> str:
            return f" (before: {before[key]:.2f})" if key in before else ""

        parts.append(f"Trained on the {result['vocabulary']} classes with {100 * result['replay']:.0f} % of the "
                     f"scenes from VOC (replay). What it knows of VOC, at its recorded settings: VOC val mIoU "
                     f"<b>{result['voc_miou']:.2f}</b>{was('voc_miou')}; the 40-class split (VOC and new) "
                     f"<b>{result['combined_miou']:.2f}</b>{was('combined_miou')}.")  # fmt: skip
    return f"<p>{' '.join(parts)}</p>" if parts else ""


def shipped_paragraph(scores: dict | None, in_grid: bool = True) -> str:
    if scores is None:
        return "<p>No model is shipped in this copy of the package to compare with.</p>"
    column = "; its predictions are the last column of the grid" if in_grid else ""
    return (
        f"<p>On the same scenes, the model shipped in the package (<code>{SHIPPED}</code>: "
        f"{html.escape(scores['about'])}) scores <b>mIoU {scores['miou']:.2f}</b> at the threshold recorded with "
        f"it ({scores['background_threshold']}), oracle-named {scores['oracle_miou']:.2f}, recognition "
        f"{scores['recognition']['pooled']:.1f} %{column}.</p>"
    )


def curve_svg(history: list[dict], width: int = 480, height: int = 200) -> str:
    """An inline SVG chart of validation mIoU against training minutes: a marker and its value per evaluation, joined
    by a line, on axes from 0 (so a short run's one or two evaluations show too)."""
    if not history:
        return "<p>No validation mIoU was measured during training (eval_every=0).</p>"
    top_x = max(h["minutes"] for h in history) or 1.0
    top_y = max(100.0, *(h["miou"] for h in history))
    points = [(40 + (width - 50) * h["minutes"] / top_x, height - 20 - (height - 30) * h["miou"] / top_y, h)
              for h in history]  # fmt: skip
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
    marks = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="steelblue"/><text x="{x - 8:.1f}" y="{y - 6:.1f}" '
        f'font-size="10">{h["miou"]:.1f}</text>'
        for x, y, h in points
    )
    steps = (
        f"at step {history[0]['step']}"
        if len(history) == 1
        else f"at steps {', '.join(str(h['step']) for h in history)}"
    )
    return (
        f"<h2>Validation mIoU (first 200 scenes, threshold 0.95) during training</h2><p>Measured {steps}.</p>"
        f'<svg width="{width}" height="{height}"><line x1="40" y1="{height - 20}" x2="{width - 10}" y2="{height - 20}" '
        f'stroke="black"/><line x1="40" y1="10" x2="40" y2="{height - 20}" stroke="black"/><polyline points="{line}" '
        f'fill="none" stroke="steelblue" stroke-width="2"/>{marks}<text x="36" y="{height - 4}" font-size="11">0</text>'
        f'<text x="{width - 60}" y="{height - 4}" font-size="11">{top_x:.1f} min</text><text x="4" y="16" '
        f'font-size="11">{top_y:.0f}</text><text x="24" y="{height - 20}" font-size="11">0</text></svg>'
    )
