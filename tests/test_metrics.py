"""mIoU by confusion matrix against per-class boolean-mask counting, and hand-built edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from groupvit.evaluation.metrics import ConfusionMatrix, classes_present, oracle_labels, recognition_recall


def iou_by_masks(predictions, targets, num_classes):
    """IoU per class from boolean masks over all images (ignore 255), NaN where a class is nowhere."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for p, t in zip(predictions, targets, strict=True):
        valid = t != 255
        for c in range(num_classes):
            inter[c] += np.sum((p == c) & (t == c) & valid)
            union[c] += np.sum(((p == c) | (t == c)) & valid)
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def test_random_label_maps_with_ignore_pixels():
    rng = np.random.default_rng(0)
    predictions = [rng.integers(0, 6, (30, 40)) for _ in range(5)]
    targets = [rng.integers(0, 6, (30, 40)) for _ in range(5)]
    for t in targets:
        t[rng.random(t.shape) < 0.2] = 255
    targets[0][targets[0] == 5] = 4  # class 5 rarer
    cm = ConfusionMatrix(7)  # class 6 appears nowhere
    for p, t in zip(predictions, targets, strict=True):
        cm.update(p, t)
    expected = iou_by_masks(predictions, targets, 7)
    np.testing.assert_allclose(cm.iou(), expected)
    result = cm.results([f"c{i}" for i in range(7)])
    assert result["per_class"]["c6"] is None
    assert result["miou"] == pytest.approx(np.nanmean(expected) * 100)
    valid = np.concatenate([(t != 255).ravel() for t in targets])
    correct = np.concatenate([((p == t) & (t != 255)).ravel() for p, t in zip(predictions, targets, strict=True)])
    assert result["pixel_accuracy"] == pytest.approx(correct.sum() / valid.sum() * 100)


def test_absent_classes_by_hand():
    cm = ConfusionMatrix(4)
    target = np.array([[0, 0, 1, 255]])
    prediction = np.array([[0, 2, 1, 3]])  # class 2 predicted but absent from GT -> IoU 0, counted
    cm.update(prediction, target)
    result = cm.results(["bg", "a", "b", "c"])
    # bg: 1 / 2; a: 1 / 1; b: 0 / 1; c: only on an ignored pixel -> absent
    assert result["per_class"] == {"bg": 50.0, "a": 100.0, "b": 0.0, "c": None}
    assert result["miou"] == pytest.approx(50.0)
    assert result["pixel_accuracy"] == pytest.approx(200 / 3)


def test_errors_and_empty():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ in size"):
        cm.update(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        cm.update(np.zeros((1, 2)), np.array([[0, 7]]))
    assert math.isnan(cm.results(["a", "b", "c"])["miou"])


def test_oracle_gives_each_group_its_majority_class():
    groups = np.array([[0, 0, 1, 1], [0, 0, 1, 2]])
    target = np.array([[3, 3, 5, 255], [3, 4, 5, 255]])
    assert oracle_labels(groups, target).tolist() == [[3, 3, 5, 5], [3, 3, 5, 255]]


def test_classes_present_skip_background_and_ignored_pixels():
    target = np.array([[0, 0, 3], [5, 255, 3]])
    assert classes_present(target, has_background=True) == [2, 4]  # labels 3, 5 are class_names[2], [4]
    assert classes_present(target, has_background=False) == [0, 3, 5]
    assert classes_present(np.array([[0, 255]]), has_background=True) == []


def test_recognition_recall_by_hand():
    scores = np.array([0.1, 0.9, 0.5, 0.3])  # ranking: 1, 2, 3, 0
    assert recognition_recall(scores, [1]) == 1.0
    assert recognition_recall(scores, [2]) == 0.0
    assert recognition_recall(scores, [1, 3]) == 0.5  # top two are {1, 2}
    assert recognition_recall(scores, [3, 2, 1]) == 1.0
    assert recognition_recall(np.zeros(3), [0, 2]) == 0.5  # ties: lower index first, so the top two are {0, 1}
    with pytest.raises(ValueError, match="at least one class"):
        recognition_recall(scores, [])
