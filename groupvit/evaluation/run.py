"""Zero-shot segmentation evaluation on a labelled dataset (spec 5.2-5.4), split across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..image import load_image, rescale_size, to_tensor
from ..model import GroupViT
from ..segmentation import ZeroShotSegmenter, class_text_embeddings
from ..templates import get_templates
from .metrics import ConfusionMatrix, classes_present, oracle_labels, recognition_recall

DATASET_DEFAULT = object()  # "use the dataset's own background threshold"
CALIBRATION_GRID = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate_segmentation(
    model: GroupViT,
    dataset,
    mode: str = "slide",
    background_threshold: float | object | None = DATASET_DEFAULT,
    templates: str | Sequence[str] = "simple",
    refine: str | None = None,
    limit: int | None = None,
    oracle: bool = False,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    short_side: int = 448,
    per_image: bool = False,
) -> dict:
    """mIoU, pixel accuracy and per-class IoU (percent) of `dataset` (see groupvit.evaluation.datasets), plus
    the mean number of final groups in use per image and, with `oracle`, the scores of the oracle naming.
    short_side: images are resized to it (448 in the protocol; SynthVOC uses its training size).
    per_image: also list each image's id and final groups in use (this rank's images only)."""
    rank, world = _rank_world()
    if not dataset.has_background:
        threshold = None
    elif background_threshold is DATASET_DEFAULT:
        threshold = dataset.background_threshold
    else:
        threshold = background_threshold
    segmenter = ZeroShotSegmenter(
        model, dataset.class_names, background_threshold=threshold, mode=mode, templates=templates, refine=refine,
        batch_size=batch_size, autocast_dtype=autocast_dtype, short_side=short_side,
    )  # fmt: skip
    names = (["background"] if dataset.has_background else []) + list(dataset.class_names)
    scores, oracle_scores = ConfusionMatrix(len(names)), ConfusionMatrix(len(names))
    total = len(dataset) if limit is None else min(limit, len(dataset))
    groups_used = torch.zeros(2, dtype=torch.float64)  # [sum of groups in use, images]
    images = []
    for i in tqdm(range(rank, total, world), disable=not (progress and rank == 0), desc=f"eval {dataset.name}"):
        image_id, image, target = dataset[i]
        result = segmenter(image)
        prediction = result.labels if dataset.has_background else result.labels - 1
        scores.update(prediction, target)
        final_groups = result.group_maps[-1]
        in_use = len(np.unique(final_groups))
        groups_used += torch.tensor([in_use, 1.0], dtype=torch.float64)
        images.append({"id": image_id, "groups_in_use": in_use})
        if oracle:
            oracle_scores.update(oracle_labels(final_groups, target), target)
    scores.all_reduce()
    if world > 1:
        dist.all_reduce(groups_used)
    out = {
        "dataset": dataset.name,
        "images": total,
        "mode": mode,
        "background_threshold": threshold,
        "templates": templates if isinstance(templates, str) else list(templates),
        "protocol": "official"
        if refine is None and background_threshold is DATASET_DEFAULT and short_side == 448
        else "variant",
        **scores.results(names),
        "groups_in_use": float(groups_used[0] / max(groups_used[1], 1)),
    }
    if refine:
        out["refine"] = refine
    if per_image:
        out["per_image"] = images
    if oracle:
        oracle_scores.all_reduce()
        out["oracle"] = oracle_scores.results(names)
    return out


def calibrate_background(
    model: GroupViT, dataset, images: int, mode: str = "slide", thresholds: Sequence[float] = CALIBRATION_GRID,
    **kwargs,
) -> tuple[float, dict]:  # fmt: skip
    """Pick the background threshold with the best mIoU on the first `images` images of `dataset` (which must
    be held apart from the split that is reported). Returns (threshold, {threshold: mIoU})."""
    curve = {}
    for t in thresholds:
        result = evaluate_segmentation(model, dataset, mode, t, limit=images, progress=False, **kwargs)
        curve[t] = result["miou"]
    best = max(curve, key=lambda t: curve[t])
    return best, curve


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


@torch.no_grad()
def evaluate_recognition(model: GroupViT, dataset, templates: str | Sequence[str] = "simple",
                         short_side: int = 448, limit: int | None = None) -> dict:  # fmt: skip
    """Image-level zero-shot recognition on a segmentation set, to tell naming failures from grouping ones:
    per image, the recall of its classes (those its label map contains) among as many top-ranked class
    prompts, by the pooled image embedding and by each class's best-matching final group. Percent; images
    without an object class are left out (None when there is none). The whole image at `short_side`, cut to
    whole patches as whole-image segmentation does; images split across ranks."""
    rank, world = _rank_world()
    model.eval()
    device, p = next(model.parameters()).device, model.config.vision.patch_size
    text = class_text_embeddings(model, dataset.class_names, get_templates(templates))  # [C, D]
    sums = torch.zeros(3, dtype=torch.float64)  # [pooled recall, best-group recall, images]
    total = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(rank, total, world):
        _, image, target = dataset[i]
        present = classes_present(target, dataset.has_background)
        if not present:
            continue
        rgb = load_image(image)
        pixels = to_tensor(rgb, rescale_size(*rgb.shape[:2], short_side)).to(device)  # [1, 3, H, W]
        out = model.encode_image_groups(pixels[:, :, : pixels.shape[2] // p * p, : pixels.shape[3] // p * p])
        image_scores = F.normalize(out.image_embeds[0].float(), dim=-1) @ text.T  # [C]
        group_scores = (F.normalize(out.group_embeds[0].float(), dim=-1) @ text.T).amax(dim=0)  # [C]
        recalls = [recognition_recall(s.cpu().numpy(), present) for s in (image_scores, group_scores)]
        sums += torch.tensor([*recalls, 1.0], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(sums)
    if sums[2] == 0:  # no image holds an object class: nothing to recognise
        return {"images": 0, "pooled": None, "best_group": None}
    pooled, best_group = (100 * float(s / sums[2]) for s in sums[:2])
    return {"images": int(sums[2]), "pooled": pooled, "best_group": best_group}
