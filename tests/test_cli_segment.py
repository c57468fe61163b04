"""`groupvit segment` / `classify` end to end on real photographs (scikit-image ships some) and odd images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from groupvit.viz import label_image, overlay, voc_palette


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupvit", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    files = {
        "chelsea": (Image.fromarray(skimage.data.chelsea()), "chelsea.jpg"),
        "astronaut": (Image.fromarray(skimage.data.astronaut()), "astronaut.png"),
        "gray": (Image.fromarray(skimage.data.camera()), "camera.png"),
        "rgba": (Image.fromarray(skimage.data.coffee()).convert("RGBA"), "coffee_rgba.png"),
        "tiny": (Image.fromarray(np.full((3, 5, 3), 200, np.uint8)), "tiny.png"),
    }
    out = {}
    for key, (img, name) in files.items():
        img.save(root / name)
        out[key] = root / name
    sixteen = (skimage.data.camera().astype(np.uint16) * 257)[:200, :300]
    Image.fromarray(sixteen).save(root / "camera16.png")  # uint16 -> mode I;16
    out["sixteen"] = root / "camera16.png"
    return out


@pytest.mark.slow
def test_segment_cli_writes_every_output(small_checkpoint, images, tmp_path):
    names = [str(images[k]) for k in ("chelsea", "astronaut", "gray", "rgba", "tiny", "sixteen")]
    result = run("segment", *names, "--classes", "cat,person,grass", "--checkpoint", str(small_checkpoint),
                 "--out", str(tmp_path), "--mode", "whole")  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in names:
        stem = Path(name).stem
        original = Image.open(name)
        summary = json.loads((tmp_path / f"{stem}.json").read_text())
        assert summary["size"] == [original.height, original.width]
        assert sum(summary["fractions"].values()) == pytest.approx(1.0)
        labels = Image.open(tmp_path / f"{stem}_labels.png")
        assert labels.mode == "P" and labels.size == original.size
        assert np.array(labels).max() <= 3
        overlay_png = Image.open(tmp_path / f"{stem}_overlay.png")
        assert overlay_png.height >= original.height and overlay_png.width > original.width  # legend column
        groups = Image.open(tmp_path / f"{stem}_groups.png")
        assert groups.width > 2 * original.width  # image + one panel per stage


@pytest.mark.slow
def test_segment_cli_slide_no_background_and_pamr(small_checkpoint, images, tmp_path):
    result = run("segment", str(images["chelsea"]), "--classes", "cat,grass", "--no-background", "--refine",
                 "pamr", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "chelsea.json").read_text())
    assert "background" not in summary["fractions"] and summary["background_threshold"] is None
    assert summary["refine"] == "pamr" and summary["naming"]["refine"] == "pamr" and summary["protocol"] == "variant"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jpg", "--classes", "cat"], "image not found"),
        (["IMG", "--classes", ""], "empty class name"),
        (["IMG", "--classes", "cat,Cat"], "duplicate class name"),
        (["IMG", "--classes", ",".join(f"class{i}" for i in range(256))], "at most 255"),
        (["IMG", "--classes", "cat", "--background-threshold", "1.5"], "background-threshold: 1.5 is not between"),
        (["IMG", "--classes", "cat", "--device", "cuda", "--bf16"], "cuda|GPU"),
    ],
)
def test_segment_cli_bad_arguments(small_checkpoint, images, tmp_path, args, message):
    args = [str(images["chelsea"]) if a == "IMG" else a for a in args]
    result = run("segment", *args, "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_segment_cli_bad_images_are_skipped_without_partial_output(small_checkpoint, images, tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    huge = tmp_path / "huge.png"
    Image.new("1", (20_000, 20_000)).save(huge)  # 400 megapixels, tiny on disk
    out = tmp_path / "out"
    result = run("segment", str(tmp_path / "notes.jpg"), str(huge), "--classes", "cat",
                 "--checkpoint", str(small_checkpoint), "--out", str(out))  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "notes.jpg is not an image" in result.stderr and "huge.png is too large" in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_segment_cli_needs_a_checkpoint(images):
    result = run("segment", str(images["chelsea"]), "--classes", "cat")
    assert result.returncode == 2 and "--checkpoint" in result.stderr


def test_classify_cli(small_checkpoint, images):
    result = run("classify", str(images["chelsea"]), "--classes", "cat,dog,car", "--checkpoint", str(small_checkpoint))
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(str(images["chelsea"])) and all(c in line for c in ("cat", "dog", "car"))


# ----------------------------------------------------------------------------- pictures with known colours


def test_voc_palette_known_colours():
    palette = voc_palette()
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]  # aeroplane
    assert palette[2].tolist() == [0, 128, 0]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # VOC's ignore colour


def test_label_png_round_trip(tmp_path):
    labels = np.array([[0, 1], [15, 20]])
    label_image(labels).save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P" and np.array(back).tolist() == labels.tolist()
    assert back.getpalette()[15 * 3 : 15 * 3 + 3] == [192, 128, 128]


def test_overlay_blends_foreground_only_and_lists_present_classes():
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), int)
    labels[:2] = 2  # class_names[1]
    out = np.array(overlay(image, labels, ["cat", "dog"], alpha=0.5, legend=False, min_side=1))
    assert out[3, 3].tolist() == [100, 100, 100]  # background untouched
    assert out[0, 0].tolist() == [50, 114, 50]  # 0.5 * 100 + 0.5 * (0, 128, 0)
    with_legend = overlay(image, labels, ["cat", "dog"], min_side=1)
    assert with_legend.width > 4
    legend = np.array(with_legend)[:, 4:]
    assert (legend == [0, 128, 0]).all(axis=-1).any()  # the dog swatch
    assert not (legend == [128, 0, 0]).all(axis=-1).any()  # no swatch for absent "cat"


def test_load_image_pixel_limit_and_modes(tmp_path):
    from groupvit.image import load_image

    Image.new("RGB", (50, 40)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="megapixels"):
        load_image(tmp_path / "a.png", max_pixels=1000)
    assert load_image(np.zeros((4, 6), np.uint16)).shape == (4, 6, 3)
    assert load_image(np.full((2, 2, 4), 255, np.uint8)).shape == (2, 2, 3)
    assert load_image(np.full((2, 2), 65535, np.uint16))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="expected an image"):
        load_image(np.zeros((2, 2, 2)))
