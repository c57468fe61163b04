"""Evaluation datasets: tiny datasets written in each benchmark's exact on-disk layout, remapped labels checked
against hand-computed values, and the errors a wrong root, a missing file or mismatched label values give."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groupvit.evaluation.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    COCO_OBJECT_CLASSES,
    CONTEXT_CLASSES,
    DATASETS,
    IMAGENET_CLASSES,
    IMAGENET_WNIDS,
    VOC_CLASSES,
    ImageFolderClassification,
    convert_coco_object,
    convert_coco_object_labels,
    load_dataset,
)

H, W = 6, 8


def write_jpg(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def write_gray(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(path)


def write_palette(path: Path, labels: np.ndarray) -> None:
    """A VOC-style palette PNG: the stored index is the label, the colours are arbitrary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(path)


def label_map(values: list[int]) -> np.ndarray:
    """An H x W map holding `values` in its first pixels (row-major), the rest the first value."""
    labels = np.full(H * W, values[0], dtype=np.uint8)
    labels[: len(values)] = values
    return labels.reshape(H, W)


def first_pixels(labels: np.ndarray, n: int) -> list[int]:
    return labels.reshape(-1)[:n].tolist()


# ---------------------------------------------------------------------------------------------------------------
# class lists


def test_class_lists():
    assert DATASETS == ("voc", "context", "coco_object", "voc20", "context59", "ade20k", "cityscapes", "synthvoc")
    sizes = {VOC_CLASSES: 20, CONTEXT_CLASSES: 59, COCO_OBJECT_CLASSES: 80, ADE20K_CLASSES: 150, CITYSCAPES_CLASSES: 19}
    for names, n in sizes.items():
        assert len(names) == n and len(set(names)) == n and "background" not in names
        assert all(name == name.strip() and name for name in names)
    assert {"table", "plant", "monitor"} <= set(VOC_CLASSES)
    assert {"airplane", "plant", "monitor"} <= set(CONTEXT_CLASSES)
    assert not {"aeroplane", "pottedplant", "tvmonitor", "diningtable"} & set(CONTEXT_CLASSES)
    assert {"motorcycle", "couch", "potted plant", "dining table", "tv"} <= set(COCO_OBJECT_CLASSES)
    assert (COCO_OBJECT_CLASSES[0], COCO_OBJECT_CLASSES[-1]) == ("person", "toothbrush")
    assert (ADE20K_CLASSES[0], ADE20K_CLASSES[7], ADE20K_CLASSES[-1]) == ("wall", "bed", "flag")
    assert CITYSCAPES_CLASSES[11] == "person" and CITYSCAPES_CLASSES[-1] == "bicycle"


def test_imagenet_lists():
    assert len(IMAGENET_WNIDS) == 1000 == len(set(IMAGENET_WNIDS)) and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    assert all(re.fullmatch(r"n\d{8}", w) for w in IMAGENET_WNIDS)
    assert len(IMAGENET_CLASSES) == 1000
    assert (IMAGENET_CLASSES[0], IMAGENET_CLASSES[999]) == ("tench", "toilet paper")
    assert (IMAGENET_CLASSES[134], IMAGENET_CLASSES[517]) == ("crane bird", "construction crane")
    # CLIP's list names two classes "missile" and two "sunglasses"; kept as published
    duplicates = [i for i, name in enumerate(IMAGENET_CLASSES) if IMAGENET_CLASSES.count(name) > 1]
    assert duplicates == [657, 744, 836, 837]


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'pascal'.*voc, context, coco_object"):
        load_dataset("pascal", tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# PASCAL VOC 2012 (voc, voc20)

VOC_IDS = ["2007_000033", "2007_000042", "2008_000002"]
VOC_RAW = [0, 8, 15, 20, 255]  # background, cat, person, monitor, ignore


@pytest.fixture
def voc_root(tmp_path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for k, image_id in enumerate(VOC_IDS):
        write_jpg(root / "JPEGImages" / f"{image_id}.jpg", seed=k)
        write_palette(root / "SegmentationClass" / f"{image_id}.png", label_map(VOC_RAW))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text(f"{VOC_IDS[2]}\n{VOC_IDS[0]}\n\n")
    (root / "ImageSets/Segmentation/train.txt").write_text(f"{VOC_IDS[1]}\n")
    return root


def test_voc(voc_root):
    data = load_dataset("voc", voc_root)
    assert (data.name, data.has_background, data.background_threshold) == ("voc", True, 0.95)
    assert len(data) == 2 and data.num_classes == 21 and data.class_names == list(VOC_CLASSES)
    assert data.label_names[:2] == ["background", "aeroplane"]
    ids = [data[i][0] for i in range(len(data))]
    assert ids == [VOC_IDS[2], VOC_IDS[0]]  # split-file order
    _, image, labels = data[0]
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert labels.shape == (H, W) and labels.dtype == np.int64
    assert first_pixels(labels, 5) == [0, 8, 15, 20, 255]  # the palette index, not the colour
    assert [data.label_names[v] for v in (8, 15, 20)] == ["cat", "person", "monitor"]
    assert [s[0] for s in load_dataset("voc", voc_root, split="train").samples] == [VOC_IDS[1]]


def test_voc20(voc_root):
    data = load_dataset("voc20", str(voc_root))
    assert (data.has_background, data.background_threshold, data.num_classes) == (False, None, 20)
    _, _, labels = data[1]
    assert first_pixels(labels, 5) == [255, 7, 14, 19, 255]  # background ignored, 1..20 -> 0..19
    assert [data.class_names[v] for v in (7, 14, 19)] == ["cat", "person", "monitor"]
    assert np.sum(labels == 255) == H * W - 3


def test_voc_wrong_root(voc_root, tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "ImageSets" / "Segmentation"))):
        load_dataset("voc", tmp_path)  # the folder above VOCdevkit ...
    with pytest.raises(ValueError, match=re.escape(f"is the dataset root {voc_root} ")):
        load_dataset("voc", tmp_path)  # ... with a pointer to the right one
    with pytest.raises(ValueError, match=r"dataset root folder not found: .*nowhere"):
        load_dataset("voc", tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"split file not found: .*test\.txt \(split files there: train\.txt, val"):
        load_dataset("voc", voc_root, split="test")


def test_voc_missing_files(voc_root):
    (voc_root / "JPEGImages" / f"{VOC_IDS[0]}.jpg").unlink()
    with pytest.raises(ValueError, match=rf"image not found: .*JPEGImages/{VOC_IDS[0]}\.jpg"):
        load_dataset("voc", voc_root)
    (voc_root / "SegmentationClass" / f"{VOC_IDS[1]}.png").unlink()
    with pytest.raises(ValueError, match=rf"label file not found: .*SegmentationClass/{VOC_IDS[1]}\.png"):
        load_dataset("voc", voc_root, split="train")


def test_voc_bad_labels(voc_root):
    label = voc_root / "SegmentationClass" / f"{VOC_IDS[2]}.png"
    write_palette(label, label_map([0, 37, 21]))
    data = load_dataset("voc", voc_root)  # files are read lazily ...
    expected = f"mismatched label values: found 21, 37 in {label}; expected 0..20 or 255 — is this the right"
    with pytest.raises(ValueError, match=re.escape(expected)):
        data[0]  # ... so the values are checked on access
    with pytest.raises(ValueError, match=re.escape("expected 0..20 or 255")):
        load_dataset("voc20", voc_root)[0]
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(label)  # colour-coded instead of palette indices
    with pytest.raises(ValueError, match="is a RGB colour image; expected one label per pixel"):
        data[0]
    write_palette(label, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=r"label .* is 8x7 but image .* is 8x6"):
        data[0]
    (voc_root / "JPEGImages" / f"{VOC_IDS[0]}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read image"):
        data[1]


# ---------------------------------------------------------------------------------------------------------------
# PASCAL Context (context, context59), mmseg-converted

CONTEXT_IDS = ["2008_000002", "2008_000009"]
CONTEXT_RAW = [0, 1, 40, 55, 59]  # background, airplane, plant, monitor, wood


@pytest.fixture
def context_root(tmp_path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2010"
    for k, image_id in enumerate(CONTEXT_IDS):
        write_jpg(root / "JPEGImages" / f"{image_id}.jpg", seed=k, size=(H + k, W))
        write_gray(root / "SegmentationClassContext" / f"{image_id}.png", np.resize(CONTEXT_RAW, (H + k, W)))
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (root / "ImageSets/SegmentationContext/val.txt").write_text("\n".join(CONTEXT_IDS) + "\n")
    return root


def test_context(context_root):
    data = load_dataset("context", context_root)
    assert (data.has_background, data.background_threshold, data.num_classes, len(data)) == (True, 0.35, 60, 2)
    image_id, image, labels = data[1]
    assert image_id == CONTEXT_IDS[1] and image.shape == (H + 1, W, 3) and labels.shape == (H + 1, W)
    assert first_pixels(labels, 5) == CONTEXT_RAW
    assert [data.label_names[v] for v in CONTEXT_RAW] == ["background", "airplane", "plant", "monitor", "wood"]


def test_context59(context_root):
    data = load_dataset("context59", context_root)
    assert (data.has_background, data.background_threshold, data.num_classes) == (False, None, 59)
    _, _, labels = data[0]
    assert first_pixels(labels, 5) == [255, 0, 39, 54, 58]
    assert [data.class_names[v] for v in (0, 39, 54, 58)] == ["airplane", "plant", "monitor", "wood"]


def test_context_errors(context_root, tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "ImageSets" / "SegmentationContext"))):
        load_dataset("context", tmp_path)
    (context_root / "SegmentationClassContext").rename(context_root / "SegmentationClass")
    with pytest.raises(ValueError, match=r"label folder not found: .*SegmentationClassContext"):
        load_dataset("context59", context_root)
    (context_root / "SegmentationClass").rename(context_root / "SegmentationClassContext")
    label = context_root / "SegmentationClassContext" / f"{CONTEXT_IDS[0]}.png"
    write_gray(label, label_map([0, 60]))
    with pytest.raises(ValueError, match=re.escape(f"found 60 in {label}; expected 0..59 or 255")):
        load_dataset("context", context_root)[0]


# ---------------------------------------------------------------------------------------------------------------
# COCO-Object from COCO-Stuff-164k

COCO_IDS = ["000000000139", "000000000285"]
# raw COCO-Stuff pixels (category id - 1): person, toothbrush (id 90), stop sign (id 13), backpack (id 27),
# bicycle, first and last stuff classes, unlabelled
COCO_RAW = [0, 89, 12, 26, 1, 91, 181, 255]
COCO_OBJECT = [1, 80, 12, 25, 2, 0, 0, 0]


@pytest.fixture
def coco_stuff(tmp_path) -> Path:
    stuff = tmp_path / "coco_stuff164k"
    for k, image_id in enumerate(COCO_IDS):
        write_jpg(stuff / "images" / "val2017" / f"{image_id}.jpg", seed=k)
        write_gray(stuff / "stuffthingmaps_trainval2017" / "val2017" / f"{image_id}.png", label_map(COCO_RAW))
    return stuff


def test_convert_coco_object_labels():
    converted = convert_coco_object_labels(np.array([COCO_RAW], dtype=np.uint8))
    assert converted.dtype == np.uint8 and converted[0].tolist() == COCO_OBJECT
    assert [COCO_OBJECT_CLASSES[v - 1] for v in COCO_OBJECT[:5]] == [
        "person", "toothbrush", "stop sign", "backpack", "bicycle",
    ]  # fmt: skip
    every_thing = [i - 1 for i in (1, 11, 13, 25, 27, 28, 31, 44, 46, 65, 67, 70, 72, 82, 84, 90)]
    assert convert_coco_object_labels(np.array([every_thing])).tolist() == [
        [1, 11, 12, 24, 25, 26, 27, 40, 41, 60, 61, 62, 63, 73, 74, 80]
    ]
    # COCO's unused category ids (12 street sign, 91 hair brush, ...) and values past the stuff range never
    # occur in COCO-Stuff: refuse them rather than guess
    for value in (11, 90, 182):
        with pytest.raises(ValueError, match=f"mismatched label values: found {value} in x.png"):
            convert_coco_object_labels(np.array([[0, value]], dtype=np.uint8), "x.png")


def test_coco_object(coco_stuff, tmp_path):
    out = tmp_path / "coco_object"
    assert convert_coco_object(coco_stuff, out) == 2
    assert (out / "images" / "val2017").is_dir()  # linked from coco_stuff164k/images/val2017
    written = sorted(p.name for p in (out / "annotations" / "val2017").iterdir())
    assert written == [f"{i}_instanceTrainIds.png" for i in COCO_IDS]
    data = load_dataset("coco_object", out)
    assert (data.has_background, data.background_threshold, data.num_classes) == (True, 0.95, 81)
    assert [s[0] for s in data.samples] == COCO_IDS
    image_id, image, labels = data[1]
    assert image_id == COCO_IDS[1] and image.shape == (H, W, 3)
    assert first_pixels(labels, 8) == COCO_OBJECT and labels.max() == 80
    assert data.label_names[80] == "toothbrush"


def test_coco_object_errors(coco_stuff, tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "stuffthingmaps_trainval2017" / "val2017"))):
        convert_coco_object(tmp_path, tmp_path / "out")
    raw = coco_stuff / "stuffthingmaps_trainval2017" / "val2017" / f"{COCO_IDS[0]}.png"
    write_gray(raw, label_map([0, 90]))
    with pytest.raises(ValueError, match=re.escape(f"found 90 in {raw}")):
        convert_coco_object(coco_stuff, tmp_path / "out")
    # the raw COCO-Stuff PNGs where converted ones belong
    root = tmp_path / "unconverted"
    write_jpg(root / "images" / "val2017" / f"{COCO_IDS[0]}.jpg")
    write_gray(root / "annotations" / "val2017" / f"{COCO_IDS[0]}.png", label_map([0]))
    with pytest.raises(ValueError, match=r"label file not found: .*_instanceTrainIds\.png.*convert_coco_object"):
        load_dataset("coco_object", root)
    label = root / "annotations" / "val2017" / f"{COCO_IDS[0]}_instanceTrainIds.png"
    write_gray(label, label_map([0, 81, 90]))
    with pytest.raises(ValueError, match=re.escape(f"found 81, 90 in {label}; expected 0..80 or 255")):
        load_dataset("coco_object", root)[0]
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "images" / "val2017"))):
        load_dataset("coco_object", tmp_path)


def test_convert_coco_object_in_place(tmp_path):
    """mmseg's COCO-Stuff layout: raw labels in annotations/val2017, converted files written beside them."""
    root = tmp_path / "coco_stuff164k"
    write_jpg(root / "images" / "val2017" / f"{COCO_IDS[0]}.jpg")
    write_gray(root / "annotations" / "val2017" / f"{COCO_IDS[0]}.png", label_map(COCO_RAW))
    write_gray(root / "annotations" / "val2017" / f"{COCO_IDS[0]}_labelTrainIds.png", label_map([0]))
    assert convert_coco_object(root, root) == 1
    assert first_pixels(load_dataset("coco_object", root)[0][2], 8) == COCO_OBJECT


# ---------------------------------------------------------------------------------------------------------------
# ADE20K

ADE_IDS = ["ADE_val_00000001", "ADE_val_00000002"]
ADE_RAW = [0, 1, 8, 150, 13]


@pytest.fixture
def ade_root(tmp_path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    for k, image_id in enumerate(reversed(ADE_IDS)):
        write_jpg(root / "images" / "validation" / f"{image_id}.jpg", seed=k)
        write_gray(root / "annotations" / "validation" / f"{image_id}.png", label_map(ADE_RAW))
    return root


def test_ade20k(ade_root):
    data = load_dataset("ade20k", ade_root)
    assert (data.has_background, data.background_threshold, data.num_classes) == (False, None, 150)
    assert [s[0] for s in data.samples] == ADE_IDS  # sorted
    image_id, image, labels = data[0]
    assert image_id == ADE_IDS[0] and image.shape == (H, W, 3)
    assert first_pixels(labels, 5) == [255, 0, 7, 149, 12]  # 0 = unlabelled -> ignore, 1..150 -> 0..149
    assert [data.class_names[v] for v in (0, 7, 149, 12)] == ["wall", "bed", "flag", "person"]


def test_ade20k_errors(ade_root, tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(ade_root / "images" / "training"))):
        load_dataset("ade20k", ade_root, split="train")
    with pytest.raises(ValueError, match=f"is the dataset root {re.escape(str(ade_root))} "):
        load_dataset("ade20k", tmp_path)
    label = ade_root / "annotations" / "validation" / f"{ADE_IDS[1]}.png"
    write_gray(label, label_map([0, 151, 200]))
    with pytest.raises(ValueError, match=re.escape(f"found 151, 200 in {label}; expected 0..150 or 255")):
        load_dataset("ade20k", ade_root)[1]


# ---------------------------------------------------------------------------------------------------------------
# Cityscapes

CITY_IDS = ["frankfurt_000000_000294", "lindau_000001_000019", "munster_000002_000019"]
CITY_RAW = [0, 18, 255, 11, 13]


@pytest.fixture
def city_root(tmp_path) -> Path:
    root = tmp_path / "cityscapes"
    for k, image_id in enumerate(CITY_IDS):
        city = image_id.split("_")[0]
        pixels = np.random.default_rng(k).integers(0, 256, (H, W, 3), dtype=np.uint8)
        (root / "leftImg8bit" / "val" / city).mkdir(parents=True)
        Image.fromarray(pixels).save(root / "leftImg8bit" / "val" / city / f"{image_id}_leftImg8bit.png")
        labels = root / "gtFine" / "val" / city
        write_gray(labels / f"{image_id}_gtFine_labelTrainIds.png", label_map(CITY_RAW))
        write_gray(labels / f"{image_id}_gtFine_labelIds.png", label_map([7, 33]))  # raw ids: not read
    return root


def test_cityscapes(city_root):
    data = load_dataset("cityscapes", city_root)
    assert (data.has_background, data.background_threshold, data.num_classes, len(data)) == (False, None, 19, 3)
    assert [s[0] for s in data.samples] == CITY_IDS
    image_id, image, labels = data[2]
    expected = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert image_id == CITY_IDS[2] and np.array_equal(image, expected)  # PNG: exact pixels
    assert first_pixels(labels, 5) == CITY_RAW
    assert [data.class_names[v] for v in (0, 18, 11, 13)] == ["road", "bicycle", "person", "car"]


def test_cityscapes_errors(city_root):
    for p in (city_root / "gtFine").rglob("*_labelTrainIds.png"):
        p.unlink()
    with pytest.raises(ValueError, match=r"frankfurt_000000_000294_gtFine_labelTrainIds\.png and 2 more of 3"):
        load_dataset("cityscapes", city_root)
    with pytest.raises(ValueError, match="createTrainIdLabelImgs"):
        load_dataset("cityscapes", city_root)
    label = city_root / "gtFine/val/lindau" / f"{CITY_IDS[1]}_gtFine_labelTrainIds.png"
    for image_id in CITY_IDS:
        city = image_id.split("_")[0]
        write_gray(city_root / "gtFine/val" / city / f"{image_id}_gtFine_labelTrainIds.png", label_map([0, 19, 33]))
    with pytest.raises(ValueError, match=re.escape(f"found 19, 33 in {label}; expected 0..18 or 255")):
        load_dataset("cityscapes", city_root)[1]
    with pytest.raises(ValueError, match=re.escape(str(city_root / "leftImg8bit" / "test"))):
        load_dataset("cityscapes", city_root, split="test")


# ---------------------------------------------------------------------------------------------------------------
# ImageNet-style classification folders


def test_image_folder_imagenet_wnids(tmp_path):
    files = {"n03126707": ["b.JPEG"], "n01440764": ["x.JPEG", "a.jpeg"], "n02012849": ["c.JPEG"]}
    for wnid, names in files.items():
        for name in names:
            (tmp_path / wnid).mkdir(exist_ok=True)
            (tmp_path / wnid / name).write_bytes(b"not decoded here")  # images open lazily
    (tmp_path / "n01440764" / "notes.txt").write_text("skipped")
    data = ImageFolderClassification(tmp_path)
    assert data.uses_imagenet_names and data.classes == ["n01440764", "n02012849", "n03126707"]
    assert data.class_names == ["tench", "crane bird", "construction crane"]
    assert len(data) == 4
    assert [(p.relative_to(tmp_path).as_posix(), i) for p, i in (data[k] for k in range(4))] == [
        ("n01440764/a.jpeg", 0), ("n01440764/x.JPEG", 0), ("n02012849/c.JPEG", 1), ("n03126707/b.JPEG", 2),
    ]  # fmt: skip


def test_image_folder_plain_names(tmp_path):
    for name in ("golden_retriever", "cat", "n99999999"):
        write_jpg(tmp_path / name / "0.jpg")
    data = ImageFolderClassification(tmp_path)
    assert not data.uses_imagenet_names
    assert data.class_names == ["cat", "golden retriever", "n99999999"]
    assert [i for _, i in data.samples] == [0, 1, 2]
    with pytest.raises(ValueError, match="image folder root not found"):
        ImageFolderClassification(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        ImageFolderClassification(tmp_path / "cat")
