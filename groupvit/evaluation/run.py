"""Zero-shot segmentation evaluation on a labelled dataset (spec 5.2-5.4), split across ranks."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..image import load_image
from ..io import atomic_write
from ..model import GroupViT
from ..naming import Naming, coordinate_ascent
from ..segmentation import SegmentationResult, ZeroShotSegmenter
from ..settings import Requested, Resolved, resolve_settings
from .metrics import ConfusionMatrix, classes_present, oracle_labels, recognition_recall

if TYPE_CHECKING:
    from ..factory import ModelChoice

DATASET_DEFAULT = object()  # "use the dataset's own background threshold"
CALIBRATION_GRID = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))
# The options of `groupvit eval` that change each test setting, for the line saying where each came from.
EVAL_SOURCES = {"short_side": "--short-side", "mode": "--mode", "background_threshold": "--background-threshold",
                "naming": "the naming options"}  # fmt: skip


def benchmark_settings(
    model: GroupViT,
    dataset,
    background_threshold: float | object | None = DATASET_DEFAULT,
    naming: Naming | None = None,
    mode: str | None = None,
    short_side: int | None = None,
    sources: Mapping[str, str] | None = None,
) -> Resolved:
    """A benchmark run's test settings, through groupvit.settings.resolve_settings: the resize and mode are the
    caller's, else the model's; the background threshold is the caller's (None: no background), else the dataset's
    (DATASET_DEFAULT), never the model's, since a benchmark is scored under its protocol; none where the dataset has
    no background class; the naming is the caller's, else the official one (not one the model records); the classes
    are the dataset's."""
    default = background_threshold is DATASET_DEFAULT
    protocol = replace(model.test_settings, background_threshold=None, naming=Naming())
    requested = Requested(short_side=short_side, mode=mode, naming=naming,
                          background_threshold=None if default else background_threshold,
                          dataset=dataset.name if default and dataset.has_background else None,
                          dataset_threshold=getattr(dataset, "background_threshold", None) if default else None,
                          background=dataset.has_background and background_threshold is not None)  # fmt: skip
    sources = {"no_background": f"dataset {dataset.name} (no background class)" if default else "the caller",
               "classes": f"dataset {dataset.name}", **(sources or {})}  # fmt: skip
    return resolve_settings(protocol, model.config, requested, dataset.class_names, sources)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Tally:
    """One naming's running scores: confusion matrices, final groups in use and recognition, image by image."""

    def __init__(self, label_names: Sequence[str], has_background: bool, oracle: bool, recognition: bool) -> None:
        self.label_names, self.has_background = list(label_names), has_background
        self.scores = ConfusionMatrix(len(label_names))
        self.oracle = ConfusionMatrix(len(label_names)) if oracle else None
        self.recognition = torch.zeros(3, dtype=torch.float64) if recognition else None  # [pooled, groups, images]
        self.groups_used = torch.zeros(2, dtype=torch.float64)  # [sum of final groups in use, images]
        self.images: list[dict] = []

    def update(self, image_id: str, result: SegmentationResult, target: np.ndarray) -> None:
        self.scores.update(result.labels if self.has_background else result.labels - 1, target)
        if result.group_maps:
            final_groups = result.group_maps[-1]
            in_use = len(np.unique(final_groups))
            self.groups_used += torch.tensor([in_use, 1.0], dtype=torch.float64)
            self.images.append({"id": image_id, "groups_in_use": in_use})
            if self.oracle is not None:
                self.oracle.update(oracle_labels(final_groups, target), target)
        present = classes_present(target, self.has_background)
        if self.recognition is not None and present:  # images without an object class have nothing to recognise
            recalls = [recognition_recall(s, present) for s in (result.pooled_scores, result.group_scores)]
            self.recognition += torch.tensor([*recalls, 1.0], dtype=torch.float64)

    def results(self) -> dict:
        """mIoU, pixel accuracy, per-class IoU, groups in use (and oracle, recognition), summed over ranks."""
        self.scores.all_reduce()
        counts = [c for c in (self.groups_used, self.recognition) if c is not None]
        if _rank_world()[1] > 1:
            for c in counts:
                dist.all_reduce(c)
        out = {**self.scores.results(self.label_names),
               "groups_in_use": float(self.groups_used[0] / max(self.groups_used[1], 1))}  # fmt: skip
        if self.oracle is not None:
            self.oracle.all_reduce()
            out["oracle"] = self.oracle.results(self.label_names)
        if self.recognition is not None:
            sums = self.recognition
            pooled, best_group = (100 * float(s / sums[2]) if sums[2] else None for s in sums[:2])
            out["recognition"] = {"images": int(sums[2]), "pooled": pooled, "best_group": best_group}
        return out


def _label_names(dataset) -> list[str]:
    return (["background"] if dataset.has_background else []) + list(dataset.class_names)


def _check_options(dataset, segmenter: ZeroShotSegmenter, options: Mapping[str, tuple[float | None, Naming]]):
    """Every option usable on this dataset and vocabulary, before any image is encoded."""
    for threshold, naming in options.values():
        if not dataset.has_background and naming.makes_background():
            raise ValueError(f"{dataset.name} has no background class; background words, the area filter and "
                             "per-class thresholds need one")  # fmt: skip
        segmenter.background_threshold, segmenter.naming = threshold, naming
        segmenter.query()


def evaluate_namings(
    model: GroupViT,
    dataset,
    options: Mapping[str, tuple[float | object | None, Naming]],
    mode: str | None = None,
    templates: str | Sequence[str] = "simple",
    limit: int | None = None,
    oracle: bool = False,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    short_side: int | None = None,
    per_image: bool = False,
    recognition: bool = False,
) -> dict[str, dict]:
    """Zero-shot segmentation scores of `dataset` under several (background threshold, naming) options at once:
    each image is encoded once and named under every option. Returns {option: results}, each with mIoU, pixel
    accuracy and per-class IoU (percent) and the mean number of final groups in use per image. A threshold of
    DATASET_DEFAULT is the dataset's own; any other threshold, naming option (refinement included) or size makes
    the results a protocol variant (`"protocol": "variant"`, the options under `naming`).

    mode, short_side: 'slide' or 'whole', and the short side images are resized to; None for the model's test
    settings (groupvit.settings: the protocol's slide mode at 448 for the released models, what a SynthVOC model
    recorded).
    oracle: also score each final group named by the ground-truth class it overlaps most (grouping apart from
    naming). per_image: also list each image's id and final groups in use (this rank's images only).
    recognition: also score image-level recognition from the same encoder pass: per image, the recall of its
    classes among as many top-ranked class prompts, by the pooled embedding and by each class's best final group,
    on the whole image at `short_side` (percent; images without an object class left out, None if none has one).
    """
    rank, world = _rank_world()
    runs = {key: benchmark_settings(model, dataset, t, n, mode, short_side) for key, (t, n) in options.items()}
    resolved = {key: (runs[key].background_threshold, n) for key, (_, n) in options.items()}
    settings = next(iter(runs.values())).settings if runs else model.test_settings
    segmenter = ZeroShotSegmenter(
        model, dataset.class_names, background_threshold=None, mode=settings.mode, templates=templates,
        batch_size=batch_size, autocast_dtype=autocast_dtype, short_side=settings.short_side,
    )  # fmt: skip
    _check_options(dataset, segmenter, resolved)
    members = any(n.hierarchical is not None for _, n in resolved.values())
    keep_pixels = any(n.refine is not None for _, n in resolved.values())
    tallies = {key: Tally(_label_names(dataset), dataset.has_background, oracle, recognition) for key in resolved}
    total = len(dataset) if limit is None else min(limit, len(dataset))
    for i in tqdm(range(rank, total, world), disable=not (progress and rank == 0), desc=f"eval {dataset.name}"):
        image_id, image, target = dataset[i]
        encoded = segmenter.encode(image, members, keep_pixels)
        for key, (threshold, naming) in resolved.items():
            segmenter.background_threshold, segmenter.naming = threshold, naming
            tallies[key].update(image_id, segmenter.name(encoded), target)
    out = {}
    # The protocol's resize (and windows, when sliding); another size is a variant.
    protocol_size = segmenter.short_side == 448 and (
        segmenter.mode == "whole" or (segmenter.crop_size, segmenter.stride) == (448, 224)
    )
    for key, (threshold, naming) in resolved.items():
        official = options[key][0] is DATASET_DEFAULT and naming.official and protocol_size
        out[key] = {
            "dataset": dataset.name,
            "images": total,
            "mode": segmenter.mode,
            "short_side": segmenter.short_side,
            "background_threshold": threshold,
            "templates": templates if isinstance(templates, str) else list(templates),
            "protocol": "official" if official else "variant",
            **tallies[key].results(),
        }
        if not naming.official:
            out[key]["naming"] = naming.to_dict()
        if per_image:
            out[key]["per_image"] = tallies[key].images
    return out


def evaluate_segmentation(
    model: GroupViT,
    dataset,
    mode: str | None = None,
    background_threshold: float | object | None = DATASET_DEFAULT,
    naming: Naming | None = None,
    **options,
) -> dict:
    """mIoU, pixel accuracy and per-class IoU (percent) of `dataset` (see groupvit.evaluation.datasets), plus
    the mean number of final groups in use per image, under one background threshold (default: the dataset's)
    and naming (groupvit.naming; default: the official one). `options` are those of `evaluate_namings`."""
    return evaluate_namings(model, dataset, {"": (background_threshold, naming or Naming())}, mode, **options)[""]


class CalibrationImages:
    """The first `images` images of a held-out split, encoded once, to score naming options on: the background
    threshold, per-class thresholds, or which option to use. Keeps the encoder outputs in memory (slide mode at
    448: about 1.6 MB per VOC image; a 64 px SynthVOC scene: 33 kB; `keep_pixels`, for PAMR, adds the resized image:
    2.4 MB at 448 x 448). Images split across ranks, scores summed."""

    def __init__(
        self, model: GroupViT, dataset, images: int, mode: str | None = None, members: bool = False,
        keep_pixels: bool = False, **options,
    ) -> None:  # fmt: skip
        rank, world = _rank_world()
        self.dataset = dataset
        self.segmenter = ZeroShotSegmenter(model, dataset.class_names, mode=mode, group_maps=False, **options)
        self.items = []  # (encoded image, ground truth)
        for i in tqdm(range(rank, min(images, len(dataset)), world), disable=rank != 0, desc=f"encode {dataset.name} "
                      f"{getattr(dataset, 'split', '')} for calibration", unit="image"):  # fmt: skip
            _, image, target = dataset[i]
            self.items.append((self.segmenter.encode(image, members, keep_pixels), target))

    def miou(self, threshold: float | None, naming: Naming | None = None) -> float:
        """mIoU (percent) of the calibration images under one option (default naming: the official one)."""
        return self.curve([threshold], naming)[threshold]

    def curve(self, thresholds: Sequence[float | None], naming: Naming | None = None) -> dict[float | None, float]:
        """{threshold: mIoU} under one naming. Each image is named under every threshold in turn, so what does
        not depend on the threshold (PAMR of the class channels) is computed once per image."""
        naming = naming or Naming()
        _check_options(self.dataset, self.segmenter, {t: (t, naming) for t in thresholds})
        has_background = self.dataset.has_background
        tallies = {t: Tally(_label_names(self.dataset), has_background, False, False) for t in thresholds}
        for encoded, target in self.items:
            for t, tally in tallies.items():
                self.segmenter.background_threshold = t
                tally.update("", self.segmenter.name(encoded), target)
        return {t: tally.results()["miou"] for t, tally in tallies.items()}

    def threshold(
        self, naming: Naming | None = None, grid: Sequence[float] = CALIBRATION_GRID
    ) -> tuple[float, dict[float, float]]:
        """The background threshold with the best mIoU -> (threshold, {threshold: mIoU})."""
        curve = self.curve(grid, naming)
        return max(curve, key=lambda t: curve[t]), curve

    def class_thresholds(
        self, start: float, naming: Naming | None = None, grid: Sequence[float] = CALIBRATION_GRID, rounds: int = 2
    ) -> tuple[dict[str, float], float]:
        """One threshold per class by coordinate ascent from `start` for all (groupvit.naming.coordinate_ascent)
        -> ({class: threshold}, mIoU)."""
        names = self.segmenter.class_names

        def score(values: list[float]) -> float:
            return self.miou(None, replace(naming or Naming(), class_thresholds=dict(zip(names, values, strict=True))))

        values, best = coordinate_ascent(score, [start] * len(names), grid, rounds)
        return dict(zip(names, values, strict=True)), best


def choose_naming(
    images: CalibrationImages, candidates: Mapping[str, Naming], grid: Sequence[float] = CALIBRATION_GRID
) -> tuple[str, dict[str, dict]]:
    """Each candidate naming with its own background threshold chosen on the calibration images. Returns (the
    candidate with the best mIoU, {candidate: {'threshold', 'miou', 'curve': {threshold: mIoU}}})."""
    scores = {}
    for key, naming in candidates.items():
        threshold, curve = images.threshold(naming, grid)
        scores[key] = {"threshold": threshold, "miou": curve[threshold], "curve": curve}
    return max(scores, key=lambda k: scores[k]["miou"]), scores


def calibrate_background(
    model: GroupViT, dataset, images: int, mode: str | None = None, thresholds: Sequence[float] = CALIBRATION_GRID,
    naming: Naming | None = None, **options,
) -> tuple[float, dict]:  # fmt: skip
    """Pick the background threshold with the best mIoU on the first `images` images of `dataset` (which must
    be held apart from the split that is reported), under `naming`. Returns (threshold, {threshold: mIoU})."""
    members = naming is not None and naming.hierarchical is not None
    return CalibrationImages(model, dataset, images, mode, members, **options).threshold(naming, thresholds)


def evaluate_calibrated(
    model: GroupViT,
    dataset,
    mode: str | None = None,
    background_threshold: float | None = None,
    naming: Naming | None = None,
    *,
    held_out=None,
    calibration_images: int = 0,
    calibration_split: str = "",
    grid: Sequence[float] | None = None,
    per_class_thresholds: bool = False,
    limit: int | None = None,
    oracle: bool = False,
    recognition: bool = False,
    settings_line: bool = False,
    **options,
) -> dict:
    """`evaluate_segmentation` of `dataset` (`groupvit eval`), with its background threshold (and with
    `per_class_thresholds` one per class) first chosen on the first `calibration_images` images of `held_out`, a
    split apart from the reported one; the choice and its curve are in the result's "calibration". Without
    calibration the threshold is the caller's, else the dataset's (`benchmark_settings`). With `settings_line`,
    the settings the run uses and where each came from, on stderr. `options`: templates, batch_size,
    autocast_dtype, short_side."""
    threshold = DATASET_DEFAULT if background_threshold is None else background_threshold
    naming = naming or Naming()
    if per_class_thresholds and not calibration_images:
        raise ValueError("--per-class-thresholds calibrates on held-out images: also pass --calibrate-background N")
    calibration = None
    if calibration_images:
        images = CalibrationImages(model, held_out, calibration_images, mode,
                                   members=naming.hierarchical is not None, keep_pixels=naming.refine is not None,
                                   **options)  # fmt: skip
        grid = grid or CALIBRATION_GRID
        threshold, curve = images.threshold(naming, grid)
        calibration = {"split": calibration_split, "images": calibration_images, "chosen": threshold,
                       "miou_by_threshold": curve}  # fmt: skip
        if per_class_thresholds:
            class_thresholds, miou = images.class_thresholds(threshold, naming, grid)
            naming = replace(naming, class_thresholds=class_thresholds)
            calibration.update(class_thresholds=class_thresholds, miou_with_class_thresholds=miou,
                               method="coordinate ascent over the grid from the chosen threshold")  # fmt: skip
    if settings_line and _rank_world()[0] == 0:
        calibrated = f"calibration on {calibration_images} {calibration_split} images"
        sources = EVAL_SOURCES | ({"background_threshold": calibrated} if calibration else {})
        sources |= {"naming": f"per-class {calibrated}"} if per_class_thresholds else {}
        run = benchmark_settings(model, dataset, threshold, naming, mode, options.get("short_side"), sources)
        used = run.settings.describe("none" if run.background_threshold is None else f"{run.background_threshold:g}")
        print(f"groupvit eval: {used} ({run.origins})", file=sys.stderr)
    result = evaluate_segmentation(model, dataset, mode, threshold, limit=limit, oracle=oracle,
                                   naming=naming, recognition=recognition, **options)  # fmt: skip
    if calibration:
        result["calibration"] = calibration
    result["runtime"] = model.runtime  # pytorch, or onnxruntime for an ONNX export
    return result


def evaluate_benchmark(
    model: ModelChoice,
    dataset: str,
    root: str | Path,
    *,
    split: str = "val",
    out: str | Path | None = None,
    templates: str | None = None,
    background_threshold: float | None = None,
    naming: Naming | None = None,
    calibrate_background: int = 0,
    calibration_split: str = "train",
    calibration_grid: Sequence[float] | None = None,
    **options,
) -> dict:
    """What `groupvit eval` runs, one process per device under torchrun: a benchmark (`load_dataset`'s names, or
    imagenet for classification) at `root` scored with `model` (groupvit.factory.ModelChoice), printed as a table
    and written to `out` as JSON by rank 0. Segmentation is `evaluate_calibrated` (templates: simple by default;
    `options`: its mode, per_class_thresholds, limit, oracle, recognition, batch_size, short_side);
    classification is `evaluate_classification` (templates: subset by default, spec 5.5; `options`: limit)."""
    from ..distributed import setup_distributed
    from .datasets import ImageFolderClassification, load_dataset

    rank, _, _ = setup_distributed()
    if dataset == "imagenet":
        result = evaluate_classification(model.load(), ImageFolderClassification(root), templates or "subset",
                                         options.get("limit"))  # fmt: skip
        table = f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  ({result['images']} images)"
    else:
        data = load_dataset(dataset, root, split=split)
        loaded = model.load()
        dtype = model.autocast_dtype()
        held_out = load_dataset(dataset, root, split=calibration_split) if calibrate_background else None
        result = evaluate_calibrated(loaded, data, options.pop("mode", None), background_threshold, naming,
                                     held_out=held_out, calibration_images=calibrate_background,
                                     calibration_split=calibration_split, grid=calibration_grid,
                                     templates=templates or "simple", autocast_dtype=dtype, settings_line=True,
                                     **options)  # fmt: skip
        table = format_table(result)
    if rank == 0:
        print(table)
        if out:
            atomic_write(Path(out), lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
            print(f"wrote {out}")
    return result


def format_table(result: dict) -> str:
    """A console table of per-class IoU and the summary numbers."""
    rows = [f"{'class':<24}{'IoU':>8}"]
    for name, iou in result["per_class"].items():
        rows.append(f"{name:<24}{'absent' if iou is None else f'{iou:.2f}':>8}")
    rows.append(f"{'mIoU':<24}{result['miou']:>8.2f}")
    rows.append(f"{'pixel accuracy':<24}{result['pixel_accuracy']:>8.2f}")
    rows.append(f"{'final groups in use':<24}{result['groups_in_use']:>8.2f}")
    if "oracle" in result:
        rows.append(f"{'oracle-named mIoU':<24}{result['oracle']['miou']:>8.2f}")
    if result.get("recognition", {}).get("images"):
        rows.append(f"{'recognition (pooled) %':<24}{result['recognition']['pooled']:>8.2f}")
        rows.append(f"{'recognition (groups) %':<24}{result['recognition']['best_group']:>8.2f}")
    return "\n".join(rows)


@torch.no_grad()
def evaluate_classification(
    model: GroupViT, dataset, templates: str | Sequence[str] = "subset", limit: int | None = None,
    batch_size: int = 64, progress: bool = True,
) -> dict:  # fmt: skip
    """Zero-shot top-1 / top-5 accuracy (percent) on an ImageFolder-style set (spec 5.5: short side 256, centre
    crop 224, CLIP's 7-template subset, cosine logits)."""
    from PIL import Image

    from ..classification import ZeroShotClassifier

    rank, world = _rank_world()
    classifier = ZeroShotClassifier(model, dataset.class_names, templates=templates)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    indices = list(range(rank, total, world))
    counts = torch.zeros(3, dtype=torch.float64)  # [top-1 hits, top-5 hits, images]
    for start in tqdm(range(0, len(indices), batch_size), disable=not (progress and rank == 0), desc="classify"):
        items = [dataset[i] for i in indices[start : start + batch_size]]
        pixels = torch.stack([classifier.transform(Image.fromarray(load_image(path))) for path, _ in items])
        labels = torch.tensor([label for _, label in items])
        top = classifier.logits(pixels).topk(min(5, len(dataset.class_names)), dim=-1).indices.cpu()
        hits = top == labels[:, None]
        counts += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(), len(items)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    images = max(counts[2].item(), 1)
    return {
        "dataset": "imagenet",
        "images": int(counts[2]),
        "templates": templates if isinstance(templates, str) else list(templates),
        "top1": counts[0].item() / images * 100,
        "top5": counts[1].item() / images * 100,
    }


def evaluate_recognition(model: GroupViT, dataset, templates: str | Sequence[str] = "simple",
                         short_side: int | None = None, limit: int | None = None) -> dict:  # fmt: skip
    """Image-level recognition alone (see `evaluate_segmentation(..., recognition=True)`, which gives it from the
    segmentation pass): the whole image at `short_side` (default: the model's), {'images', 'pooled', 'best_group'}
    in percent."""
    return evaluate_segmentation(model, dataset, "whole", None, templates=templates, limit=limit, progress=False,
                                 short_side=short_side, recognition=True)["recognition"]  # fmt: skip
