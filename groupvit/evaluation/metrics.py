"""Segmentation metrics by confusion matrix (mmseg's mIoU): ignore label 255, absent classes left out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a [C, C] matrix of (ground truth, prediction) pixel counts over images."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray, target: np.ndarray) -> None:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and ground truth {target.shape} differ in size")
        keep = target != self.ignore_index
        t, p = target[keep].astype(np.int64), prediction[keep].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(f"ground-truth label {t.max()} outside 0..{self.num_classes - 1} (or {self.ignore_index})")
        self.matrix += np.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def all_reduce(self) -> None:
        """Sum the matrices of all ranks (exact: integer counts)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            total = torch.from_numpy(self.matrix)
            dist.all_reduce(total)
            self.matrix = total.numpy()

    def iou(self) -> np.ndarray:
        """Per-class IoU in [0, 1]; NaN for classes in neither the ground truth nor the predictions."""
        intersection = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, intersection / union, np.nan)

    def results(self, class_names: Sequence[str]) -> dict:
        """{'miou', 'pixel_accuracy', 'per_class': {name: IoU}} in percent; absent classes are None."""
        iou = self.iou()
        total = self.matrix.sum()
        return {
            "miou": float(np.nanmean(iou) * 100) if not np.isnan(iou).all() else float("nan"),
            "pixel_accuracy": float(np.diag(self.matrix).sum() / total * 100) if total else float("nan"),
            "per_class": {n: (None if np.isnan(v) else float(v * 100)) for n, v in zip(class_names, iou, strict=True)},
        }


def oracle_labels(groups: np.ndarray, target: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Give every predicted group the ground-truth class it overlaps most (ignored pixels do not vote).

    Scores the grouping apart from naming: "segmentation is good, classification is weak" (spec 6).
    """
    out = np.full_like(target, ignore_index)
    for g in np.unique(groups):
        inside = groups == g
        votes = target[inside & (target != ignore_index)]
        if votes.size:
            out[inside] = np.bincount(votes).argmax()
    return out


def classes_present(target: np.ndarray, has_background: bool, ignore_index: int = IGNORE_INDEX) -> list[int]:
    """Indices into the dataset's `class_names` of the classes a label map contains (background and ignored
    pixels left out)."""
    labels = np.unique(target[target != ignore_index])
    return [int(v) - 1 for v in labels if v > 0] if has_background else [int(v) for v in labels]


def recognition_recall(scores: np.ndarray, present: Sequence[int]) -> float:
    """Image-level recognition: the share of the `present` classes among the len(present) best-scored classes
    (`scores` [C]), so 1.0 when the image's classes are exactly its top-ranked ones. Ties rank lower indices first."""
    if not present:
        raise ValueError("recognition recall needs at least one class present in the image")
    top = np.argsort(-np.asarray(scores), kind="stable")[: len(present)]
    return len(set(top.tolist()) & set(present)) / len(present)


def prompt_similarity(class_embeddings: torch.Tensor, class_names: Sequence[str]) -> dict:
    """How far apart the text side puts the classes: the mean cosine over every pair of distinct classes and the
    closest pair. class_embeddings [C, D] L2-normalised (`segmentation.class_text_embeddings`). Early in training
    from scratch the prompts of different classes embed almost alike (cosine 0.95-0.99): no image can be named."""
    cosine = class_embeddings @ class_embeddings.t()  # [C, C]
    C = cosine.shape[0]
    if C < 2:
        raise ValueError("prompt similarity needs at least two classes")
    off = cosine.masked_fill(torch.eye(C, dtype=torch.bool, device=cosine.device), float("-inf"))
    worst = int(off.argmax())
    a, b = divmod(worst, C)
    mean = cosine.sum().item() - cosine.diagonal().sum().item()
    return {"mean": mean / (C * (C - 1)), "max": off.max().item(), "closest_pair": [class_names[a], class_names[b]]}
