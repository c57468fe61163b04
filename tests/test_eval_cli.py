"""`groupvit eval` on a tiny VOC-layout dataset equals segmenting each image and computing mIoU by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
from groupvit.evaluation.datasets import VOC_CLASSES, load_dataset
from tests.conftest import torchrun_two_processes, write_tiny_voc

VOC_NAMES = list(VOC_CLASSES)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_tiny_voc(tmp_path_factory.mktemp("voc"))


def hand_miou(predictions: list[np.ndarray], targets: list[np.ndarray], num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        inter = sum(np.sum((p == c) & (t == c)) for p, t in zip(predictions, targets, strict=True))
        union = sum(np.sum(((p == c) | (t == c)) & (t != 255)) for p, t in zip(predictions, targets, strict=True))
        if union:
            ious.append(inter / union)
    return 100 * float(np.mean(ious))


@pytest.mark.slow
def test_eval_cli_equals_per_image_segmentation(voc_root, small_checkpoint, tmp_path):
    out = tmp_path / "voc.json"
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "eval", "--dataset", "voc", "--root", str(voc_root), "--checkpoint",
         str(small_checkpoint), "--mode", "whole", "--short-side", "448", "--oracle", "--recognition", "--out",
         str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"miou", "pixel_accuracy", "per_class", "groups_in_use", "oracle", "recognition"}
    assert list(result["per_class"]) == ["background", *VOC_NAMES]
    assert result["protocol"] == "official" and result["background_threshold"] == 0.95

    model = groupvit.load_model(small_checkpoint)
    seg = groupvit.segmentation.ZeroShotSegmenter(model, VOC_NAMES, background_threshold=0.95, mode="whole",
                                                  short_side=448)  # fmt: skip
    predictions, targets = [], []
    for image_id in (voc_root / "ImageSets/Segmentation/val.txt").read_text().split():
        predictions.append(seg(voc_root / "JPEGImages" / f"{image_id}.jpg").labels)
        targets.append(np.array(Image.open(voc_root / "SegmentationClass" / f"{image_id}.png")))
    assert result["miou"] == pytest.approx(hand_miou(predictions, targets, 21), abs=1e-9)
    assert "mIoU" in run.stdout and "recognition" in run.stdout

    # Recognition: each image's classes (labels 1..20 present) among as many top classes by pooled embedding.
    text = groupvit.segmentation.class_text_embeddings(model, VOC_NAMES)
    recalls, ids = [], (voc_root / "ImageSets/Segmentation/val.txt").read_text().split()
    for image_id, target in zip(ids, targets, strict=True):
        present = {int(v) - 1 for v in np.unique(target) if 0 < v < 255}
        if present:
            rgb = np.array(Image.open(voc_root / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
            pixels = groupvit.image.to_tensor(rgb, groupvit.image.rescale_size(*rgb.shape[:2], 448))
            pixels = pixels[:, :, : pixels.shape[2] // 8 * 8, : pixels.shape[3] // 8 * 8]  # whole 8 px patches
            with torch.no_grad():
                scores = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)[0] @ text.T
            recalls.append(len(set(scores.topk(len(present)).indices.tolist()) & present) / len(present))
    assert result["recognition"]["images"] == len(recalls) > 0
    assert result["recognition"]["pooled"] == pytest.approx(100 * np.mean(recalls), abs=1e-9)


def test_eval_cli_wrong_root(small_checkpoint, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "eval", "--dataset", "voc", "--root", str(tmp_path), "--checkpoint",
         str(small_checkpoint)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "ImageSets" in run.stderr or "JPEGImages" in run.stderr


def test_calibration_uses_the_held_out_split(voc_root, small_checkpoint):
    from groupvit.evaluation.run import CALIBRATION_GRID, calibrate_background

    model = groupvit.load_model(small_checkpoint)
    held_out = load_dataset("voc", voc_root, split="train")
    threshold, curve = calibrate_background(model, held_out, images=1, mode="whole")
    assert list(curve) == list(CALIBRATION_GRID) and curve[threshold] == max(curve.values())


def test_imagenet_style_classification(small_checkpoint, tmp_path):
    """Top-1/top-5 from the CLI equal the classifier's own ranking of each image."""
    rng = np.random.default_rng(1)
    folders = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]  # ImageNet wnids
    for k, wnid in enumerate(folders):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (60 + k, 80, 3), dtype=np.uint8)).save(tmp_path / "val" / wnid / "a.JPEG")
    out = tmp_path / "imagenet.json"
    run = subprocess.run([sys.executable, "-m", "groupvit", "eval", "--dataset", "imagenet", "--root",
                          str(tmp_path / "val"), "--checkpoint", str(small_checkpoint), "--out", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    from groupvit.evaluation.datasets import ImageFolderClassification

    dataset = ImageFolderClassification(tmp_path / "val")
    assert dataset.class_names[:2] == ["tench", "goldfish"]
    clf = groupvit.ZeroShotClassifier(groupvit.load_model(small_checkpoint), dataset.class_names, "subset")
    top1 = top5 = 0
    for path, label in (dataset[i] for i in range(len(dataset))):
        ranking = [dataset.class_names.index(name) for name, _ in clf(path, top=5)]
        top1 += ranking[0] == label
        top5 += label in ranking
    assert result["images"] == 6
    assert result["top1"] == pytest.approx(100 * top1 / 6) and result["top5"] == pytest.approx(100 * top5 / 6)


def test_convert_coco_object_cli(tmp_path):
    raw = tmp_path / "stuff" / "stuffthingmaps_trainval2017" / "val2017"
    images = tmp_path / "stuff" / "images" / "val2017"
    raw.mkdir(parents=True)
    images.mkdir(parents=True)
    Image.fromarray(np.array([[0, 89, 120, 255]], np.uint8)).save(raw / "000000000139.png")
    Image.fromarray(np.zeros((1, 4, 3), np.uint8)).save(images / "000000000139.jpg")
    run = subprocess.run([sys.executable, "-m", "groupvit", "convert-coco-object", str(tmp_path / "stuff"), "--out",
                          str(tmp_path / "coco_object")], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = np.array(Image.open(tmp_path / "coco_object/annotations/val2017/000000000139_instanceTrainIds.png"))
    assert out.tolist() == [[1, 80, 0, 0]]  # person, toothbrush, stuff -> background, unlabelled -> background
    dataset = load_dataset("coco_object", tmp_path / "coco_object")
    assert len(dataset) == 1 and dataset.class_names[0] == "person"


@pytest.mark.slow
def test_eval_under_torchrun_merges_ranks_exactly(voc_root, small_checkpoint, tmp_path):
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    args = ["eval", "--dataset", "voc", "--root", str(voc_root), "--checkpoint", str(small_checkpoint), "--mode",
            "whole"]  # fmt: skip
    # One thread in every process: sums over another thread count may round differently and flip a tied pixel.
    torchrun, env = torchrun_two_processes()
    one = subprocess.run([sys.executable, "-m", "groupvit", *args, "--out", str(single)], capture_output=True,
                         text=True, env=env)  # fmt: skip
    assert one.returncode == 0, one.stderr
    two = subprocess.run([*torchrun, "-m", "groupvit", *args, "--out", str(double)], capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert two.returncode == 0, two.stderr
    a, b = json.loads(single.read_text()), json.loads(double.read_text())
    assert a["miou"] == b["miou"] and a["per_class"] == b["per_class"] and a["groups_in_use"] == b["groups_in_use"]
