"""Training / evaluation augmentation: crop geometry, flips, every RandAugment op, erasing, seeding."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from groupvit.data import augment as A

BILINEAR = Image.Resampling.BILINEAR
MEAN = np.array(A.IMAGENET_MEAN)
STD = np.array(A.IMAGENET_STD)


def _grey(values: np.ndarray) -> Image.Image:
    """[H, W] uint8 values -> RGB image with the same values in all channels."""
    return Image.fromarray(np.stack([values.astype(np.uint8)] * 3, axis=-1))


def _noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def _op(name: str, magnitude: float = 9.0) -> A.AugmentOp:
    """An op that always fires at exactly `magnitude` (sign of signed ops still random)."""
    return A.AugmentOp(name, prob=1.0, magnitude=magnitude, magnitude_std=0.0)


# --- tensor conversion, pipelines --------------------------------------------------------------------------


def test_fill_color_is_rounded_imagenet_mean():
    assert A.FILL_COLOR == (124, 116, 104)


def test_to_normalized_tensor_constant_image():
    img = Image.new("RGB", (4, 6), (255, 0, 128))  # width 4, height 6
    x = A.ToNormalizedTensor()(img)
    assert x.shape == (3, 6, 4) and x.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]  # 2.2489, -2.0357, 0.4264
    for c in range(3):
        torch.testing.assert_close(x[c], torch.full((6, 4), expected[c]), atol=1e-5, rtol=0)


def test_to_normalized_tensor_keeps_pixel_layout():
    arr = np.random.RandomState(1).randint(0, 256, (5, 7, 3), dtype=np.uint8)
    x = A.ToNormalizedTensor()(Image.fromarray(arr))
    back = (x.permute(1, 2, 0).numpy() * STD + MEAN) * 255
    np.testing.assert_allclose(back, arr, atol=1e-3)


@pytest.mark.parametrize("preset", ["groupvit", "light", "flip"])
def test_train_transform_shape_and_dtype(preset):
    t = A.train_transform(size=32, preset=preset)
    for mode in ("RGB", "L", "RGBA"):
        x = t(_noise_image(50, 40).convert(mode))
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_train_transform_default_size_and_unknown_preset():
    assert A.train_transform()(_noise_image()).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="preset"):
        A.train_transform(preset="heavy")


@pytest.mark.parametrize("preset", ["light", "flip"])
def test_light_preset_on_constant_image_is_constant(preset):
    # Crop, flip and resize cannot change a constant image; no RandAugment / erasing in "light" or "flip".
    x = A.train_transform(size=16, preset=preset)(Image.new("RGB", (40, 30), (124, 116, 104)))
    expected = (np.array([124, 116, 104]) / 255 - MEAN) / STD
    np.testing.assert_allclose(x.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert float(x.std(dim=(1, 2)).max()) < 1e-5


def test_eval_transform_resize_and_centre_crop():
    # Short side 300 -> 256, long 400 -> int(256 * 400 / 300) = 341, as torchvision's Resize(int).
    assert A.ResizeShortSide(256)(Image.new("RGB", (300, 400))).size == (256, 341)
    assert A.ResizeShortSide(256)(Image.new("RGB", (400, 300))).size == (341, 256)
    # Centre crop of a numbered 10 x 8 (w x h) image: left = 3, top = 2.
    values = np.arange(80).reshape(8, 10)
    crop = np.array(A.CenterCrop(4)(_grey(values)))[..., 0]
    np.testing.assert_array_equal(crop, values[2:6, 3:7])
    x = A.eval_transform()(Image.new("RGB", (300, 400), (255, 0, 128)))
    assert x.shape == (3, 224, 224)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([2.2489, -2.0357, 0.4264]), atol=1e-4, rtol=0)
    assert A.eval_transform(size=448)(Image.new("RGB", (600, 500))).shape == (3, 448, 448)
    with pytest.raises(ValueError):
        A.eval_transform(size=224, resize=200)


# --- random resized crop, flip ---------------------------------------------------------------------------


def test_random_resized_crop_box_ranges():
    random.seed(0)
    width, height = 300, 300  # square, so every area fraction up to 1 has an allowed aspect ratio
    fractions, ratios = [], []
    for _ in range(3000):
        top, left, h, w = A.random_resized_crop_box(width, height)
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        fractions.append(w * h / (width * height))
        # Sides are rounded to whole pixels, so allow half a pixel either way.
        assert (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / (h - 0.5) >= 3 / 4
        ratios.append(w / h)
    fractions = np.array(fractions)
    assert fractions.min() >= 0.08 - 0.01 and fractions.max() <= 1.0
    # Area is uniform in [0.08, 1] before rejection, so both ends of the range must be reached.
    assert fractions.min() < 0.1 and fractions.max() > 0.9
    # Log-uniform aspect: about as many crops wider than tall as taller than wide.
    log_ratios = np.log(ratios)
    assert abs(log_ratios.mean()) < 0.03 and log_ratios.min() < -0.25 and log_ratios.max() > 0.25


def test_random_resized_crop_fallback_is_centre_crop_with_clamped_ratio():
    # No box of >= 90% of a 1000 x 10 image has an aspect ratio <= 4/3: fall back to 13 x 10 in the centre.
    random.seed(0)
    assert A.random_resized_crop_box(1000, 10, scale=(0.9, 1.0)) == (0, 493, 10, 13)
    assert A.random_resized_crop_box(10, 1000, scale=(0.9, 1.0)) == (493, 0, 13, 10)
    assert A.random_resized_crop_box(12, 10, scale=(0.9, 1.0), attempts=0) == (0, 0, 10, 12)


def test_random_resized_crop_output():
    random.seed(0)
    out = A.RandomResizedCrop(24)(Image.new("RGB", (100, 60), (10, 20, 30)))
    assert out.size == (24, 24)
    assert (np.array(out) == (10, 20, 30)).all()


def test_flip_mirrors_and_probability():
    img = _noise_image(9, 5)
    arr = np.array(img)
    np.testing.assert_array_equal(np.array(A.RandomHorizontalFlip(1.0)(img)), arr[:, ::-1])
    np.testing.assert_array_equal(np.array(A.RandomHorizontalFlip(0.0)(img)), arr)
    torch.manual_seed(0)
    flip = A.RandomHorizontalFlip(0.5)
    flipped = sum(not np.array_equal(np.array(flip(img)), arr) for _ in range(1000))
    assert 440 < flipped < 560


# --- RandAugment ops at a fixed magnitude ----------------------------------------------------------------


def test_invert():
    values = np.array([[0, 1, 128, 255]])
    out = np.array(_op("Invert")(_grey(values)))[..., 0]
    np.testing.assert_array_equal(out, [[255, 254, 127, 0]])


def test_solarize_increasing_threshold():
    # m=9 -> threshold 256 - int(0.9 * 256) = 26: values >= 26 are inverted.
    values = np.array([[0, 25, 26, 200, 255]])
    out = np.array(_op("SolarizeIncreasing")(_grey(values)))[..., 0]
    np.testing.assert_array_equal(out, [[0, 25, 229, 55, 0]])
    # m=0 -> threshold 256: nothing changes.
    np.testing.assert_array_equal(np.array(_op("SolarizeIncreasing", 0)(_grey(values)))[..., 0], values)


def test_posterize_increasing_bits():
    values = np.array([[0, 100, 127, 128, 200, 255]])
    # m=9 -> keep 4 - int(3.6) = 1 bit (mask 0x80).
    out = np.array(_op("PosterizeIncreasing")(_grey(values)))[..., 0]
    np.testing.assert_array_equal(out, [[0, 0, 0, 128, 128, 128]])
    # m=5 -> keep 4 - int(2.0) = 2 bits (mask 0xC0).
    out = np.array(_op("PosterizeIncreasing", 5)(_grey(values)))[..., 0]
    np.testing.assert_array_equal(out, [[0, 64, 64, 128, 192, 192]])
    # m=10 -> 0 bits: black.
    assert np.array(_op("PosterizeIncreasing", 10)(_grey(values))).max() == 0


def test_solarize_add():
    # m=9 -> add int(0.9 * 110) = 99 to values below 128, saturating at 255.
    values = np.array([[0, 100, 127, 128, 200]])
    out = np.array(_op("SolarizeAdd")(_grey(values)))[..., 0]
    np.testing.assert_array_equal(out, [[99, 199, 226, 128, 200]])


def test_auto_contrast_stretches_range():
    values = np.array([[50, 100, 150]])  # 50 -> 0, 150 -> 255, 100 -> int(100 * 2.55 - 127.5) = 127
    out = np.array(_op("AutoContrast")(_grey(values)))[..., 0]
    np.testing.assert_array_equal(out, [[0, 127, 255]])


def test_equalize_flattens_histogram():
    # 4096 pixels, values 100..115 each 256 times. PIL: step = (4096 - 256) // 255 = 15 and value 100 + k
    # maps to min(255, (7 + 256 k) // 15): 0, 17, 34, ..., 239, 255.
    values = (100 + np.arange(64 * 64) % 16).reshape(64, 64)
    out = np.array(_op("Equalize")(_grey(values)))[..., 0]
    for k in range(16):
        assert (out[values == 100 + k] == min(255, (7 + 256 * k) // 15)).all()


@pytest.mark.parametrize(("name", "axis"), [("TranslateXRel", 1), ("TranslateYRel", 0)])
def test_translate_rel_shifts_with_fill(name, axis):
    # m=10 -> +-0.45 of the side: 9 of 20 pixels. Pixel values encode their position along the axis.
    ramp = np.arange(20) * 10
    values = np.tile(ramp, (6, 1)) if axis == 1 else np.tile(ramp[:, None], (1, 6))
    fill = np.array(A.FILL_COLOR)
    random.seed(0)
    seen = set()
    for _ in range(20):
        out = np.array(_op(name, 10)(_grey(values)))
        line = out[0] if axis == 1 else out[:, 0]  # [20, 3]
        if line[0, 0] == 90:  # content moved towards 0 by 9 px
            np.testing.assert_array_equal(line[:11, 0], ramp[9:])
            assert (line[11:] == fill).all()
            seen.add("neg")
        else:  # moved away from 0 by 9 px
            assert (line[:9] == fill).all()
            np.testing.assert_array_equal(line[9:, 0], ramp[:11])
            seen.add("pos")
    assert seen == {"neg", "pos"}  # both signs occur


def test_translate_relative_to_size():
    # pct 0.25 of an 8-pixel width is 2 pixels, whatever the resampling filter.
    values = np.tile(np.arange(8) * 30, (3, 1))
    for resample in (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC):
        out = np.array(A.translate_x_rel(_grey(values), 0.25, A.FILL_COLOR, resample))[0, :, 0]
        np.testing.assert_array_equal(out, [60, 90, 120, 150, 180, 210, 124, 124])


def test_rotate():
    img = _noise_image(9, 9)
    np.testing.assert_array_equal(
        np.array(A.rotate(img, 90.0, A.FILL_COLOR, BILINEAR)), np.rot90(np.array(img))
    )  # counter-clockwise
    # m=10 -> +-30 degrees about the centre: corners leave the image and take the fill colour, the centre stays.
    square = Image.new("RGB", (21, 21), (255, 255, 255))
    random.seed(0)
    for _ in range(4):
        out = np.array(_op("Rotate", 10)(square))
        for y, x in [(0, 0), (0, 20), (20, 0), (20, 20)]:
            assert tuple(out[y, x]) == A.FILL_COLOR
        assert tuple(out[10, 10]) == (255, 255, 255)


@pytest.mark.parametrize("name", ["ShearX", "ShearY"])
def test_shear(name):
    # m=10 -> factor +-0.3. Output (x, y) samples input (x + 0.3 y, y) for ShearX: the far corner of the
    # last row (or column, for ShearY) falls outside and takes the fill colour; the origin corner stays.
    img = Image.new("RGB", (10, 10), (200, 200, 200))
    random.seed(1)
    seen = set()
    for _ in range(20):
        out = np.array(_op(name, 10)(img))
        assert tuple(out[0, 0]) == (200, 200, 200) or tuple(out[9, 9]) == (200, 200, 200)
        corners = (out[9, 9], out[9, 0]) if name == "ShearX" else (out[9, 9], out[0, 9])
        filled = [tuple(c) == A.FILL_COLOR for c in corners]
        assert sum(filled) == 1  # exactly one of the two far corners, depending on the sign
        seen.add(filled[0])
    assert seen == {True, False}


def test_brightness_increasing():
    # m=9 -> factor 1 +- 0.81: a constant 100 becomes 181 or 19.
    random.seed(0)
    results = {
        int(np.array(_op("BrightnessIncreasing")(Image.new("RGB", (3, 3), (100,) * 3)))[0, 0, 0]) for _ in range(20)
    }
    assert results == {181, 19}


def test_contrast_increasing():
    # m=5 -> factor 1.45 or 0.55 around the grey mean 100 of a half-0, half-200 image.
    values = np.zeros((4, 4)).astype(int)
    values[2:] = 200
    random.seed(0)
    results = set()
    for _ in range(20):
        out = np.array(_op("ContrastIncreasing", 5)(_grey(values)))[..., 0]
        results.add((int(out[0, 0]), int(out[3, 0])))
    assert results == {(0, 245), (45, 155)}  # 100 -+ 145 clipped, 100 -+ 55


def test_color_increasing():
    # Red (255, 0, 0) has luma 76; m=5 -> factor 0.55: 76 + 0.55 * (255 - 76) = 174, 76 - 0.55 * 76 = 34;
    # factor 1.45 saturates to pure red.
    random.seed(0)
    results = {
        tuple(np.array(_op("ColorIncreasing", 5)(Image.new("RGB", (2, 2), (255, 0, 0))))[0, 0]) for _ in range(20)
    }
    assert results == {(174, 34, 34), (255, 0, 0)}


def test_sharpness_increasing():
    # One 130 pixel on black: PIL's smooth kernel (centre weight 5 of 13) gives 50, so the result is
    # 50 + f * 80: 166 for f=1.45, 94 for f=0.55 (m=5).
    values = np.zeros((5, 5)).astype(int)
    values[2, 2] = 130
    random.seed(0)
    results = {int(np.array(_op("SharpnessIncreasing", 5)(_grey(values)))[2, 2, 0]) for _ in range(20)}
    assert results == {166, 94}


def test_zero_magnitude_is_identity_for_signed_and_enhance_ops():
    img = _noise_image(12, 10)
    for name in ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "ColorIncreasing",
                 "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "SolarizeIncreasing",
                 "SolarizeAdd"]:  # fmt: skip
        np.testing.assert_array_equal(np.array(_op(name, 0)(img)), np.array(img), err_msg=name)


# --- RandAugment sampling --------------------------------------------------------------------------------


def test_op_list_matches_timm_increasing_set():
    assert list(A.RAND_INCREASING_OPS) == [
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
        "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
        "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    ]  # fmt: skip


def test_magnitude_noise_distribution():
    random.seed(0)
    op = A.AugmentOp("Invert", magnitude=9, magnitude_std=0.5)
    draws = np.array([op.sample_magnitude() for _ in range(20000)])
    assert draws.min() >= 0 and draws.max() <= 10
    # N(9, 0.5) clipped at 10 (2 sigma): mean 8.996, std a little under 0.5.
    assert abs(draws.mean() - 9.0) < 0.02
    assert 0.46 < draws.std() < 0.51
    assert (draws == 10).mean() == pytest.approx(0.0228, abs=0.005)  # P(N(9, 0.5) > 10)
    assert A.AugmentOp("Invert", magnitude=9, magnitude_std=0).sample_magnitude() == 9
    uniform = A.AugmentOp("Invert", magnitude=9, magnitude_std=float("inf"))
    draws = np.array([uniform.sample_magnitude() for _ in range(5000)])
    assert draws.min() >= 0 and draws.max() <= 9 and abs(draws.mean() - 4.5) < 0.15


def test_op_probability():
    random.seed(0)
    op = A.AugmentOp("Invert", prob=0.5)
    img = Image.new("RGB", (2, 2), (10, 10, 10))
    applied = sum(np.array(op(img))[0, 0, 0] == 245 for _ in range(2000))
    assert 900 < applied < 1100


def test_rand_augment_picks_two_ops_uniformly_with_replacement():
    random.seed(0)
    ra = A.RandAugment()
    calls: list[list[int]] = []

    def recorder(i):
        def op(img):
            calls[-1].append(i)
            return img

        return op

    ra.ops = [recorder(i) for i in range(len(ra.ops))]
    for _ in range(3000):
        calls.append([])
        ra(Image.new("RGB", (2, 2)))
    assert all(len(c) == 2 for c in calls)
    counts = np.bincount([i for c in calls for i in c], minlength=15)
    assert counts.min() > 6000 / 15 * 0.8 and counts.max() < 6000 / 15 * 1.2
    repeats = sum(c[0] == c[1] for c in calls)  # expected 3000 / 15 = 200 with replacement
    assert 150 < repeats < 250


def test_rand_augment_from_config():
    ra = A.RandAugment.from_config("rand-m9-mstd0.5-inc1")
    assert ra.num_layers == 2 and len(ra.ops) == 15
    assert all(op.magnitude == 9 and op.magnitude_std == 0.5 and op.prob == 0.5 for op in ra.ops)
    assert all(op.fill == (124, 116, 104) and op.resample == BILINEAR for op in ra.ops)
    ra = A.RandAugment.from_config("rand-m7-n3-mstd101-inc1", interpolation="random")
    assert ra.num_layers == 3 and ra.ops[0].magnitude == 7 and math.isinf(ra.ops[0].magnitude_std)
    assert ra.ops[0].resample is None
    for bad in ["rand-m9-mstd0.5", "rand-m9-inc0", "augmix-m5", "rand-x3-inc1", "rand-m9-w0-inc1"]:
        with pytest.raises(ValueError):
            A.RandAugment.from_config(bad)


def test_random_interpolation_uses_both_filters():
    # With interpolation="random" a geometric op draws bilinear or bicubic per call (timm's default).
    img = _noise_image(16, 16)
    op = A.AugmentOp("ShearX", prob=1.0, magnitude=5, magnitude_std=0, interpolation="random")
    random.seed(0)
    outputs = {np.array(op(img)).tobytes() for _ in range(30)}
    assert len(outputs) == 4  # 2 signs x 2 filters


# --- random erasing --------------------------------------------------------------------------------------


def test_random_erasing_box_ranges():
    random.seed(0)
    erase = A.RandomErasing(p=1.0)
    height, width = 60, 80
    areas, aspects = [], []
    for _ in range(2000):
        box = erase.sample_box(height, width)
        if box is None:
            continue
        top, left, h, w = box
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        assert h < height and w < width
        areas.append(h * w / (height * width))
        aspects.append(h / w)
    assert len(areas) > 1900
    areas = np.array(areas)
    # Sides are rounded to whole pixels; allow for that at the small end (0.02 * 4800 = 96 px).
    assert areas.min() > 0.015 and areas.max() < 1 / 3 + 0.02
    assert areas.min() < 0.03 and areas.max() > 0.3
    assert min(aspects) > 0.3 * 0.8 and max(aspects) < 3.34 * 1.25


def test_random_erasing_fills_one_rectangle_with_noise():
    random.seed(0)
    torch.manual_seed(0)
    x = torch.zeros(3, 60, 80)
    out = A.RandomErasing(p=1.0)(x)
    assert x.abs().sum() == 0  # input untouched
    changed = out != 0  # N(0, 1) noise is never exactly 0
    assert (changed == changed[0]).all()  # the same rectangle in every channel
    rows = torch.nonzero(changed[0].any(dim=1)).flatten()
    cols = torch.nonzero(changed[0].any(dim=0)).flatten()
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert changed[0, top:bottom, left:right].all() and changed[0].sum() == (bottom - top) * (right - left)
    area = float((bottom - top) * (right - left)) / (60 * 80)
    assert 0.015 < area < 1 / 3 + 0.02
    noise = out[:, top:bottom, left:right]
    if noise.numel() > 500:
        assert abs(float(noise.mean())) < 0.2 and 0.8 < float(noise.std()) < 1.2


def test_random_erasing_probability():
    random.seed(0)
    torch.manual_seed(0)
    erase = A.RandomErasing(p=0.25)
    x = torch.zeros(3, 32, 32)
    erased = sum(bool(erase(x).any()) for _ in range(2000))
    assert 430 < erased < 570  # 500 expected
    with pytest.raises(ValueError):
        erase(torch.zeros(2, 3, 8, 8))


# --- reproducibility -------------------------------------------------------------------------------------


def _run(seed: int, transform, img) -> list[torch.Tensor]:
    random.seed(seed)
    torch.manual_seed(seed)
    return [transform(img) for _ in range(8)]


def test_same_seeds_same_output():
    img = _noise_image(80, 60)
    transform = A.train_transform(size=48)
    first, second = _run(3, transform, img), _run(3, transform, img)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    other = _run(4, transform, img)
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert len({a.numpy().tobytes() for a in first}) == 8  # successive calls differ


def test_flip_preset_keeps_the_whole_picture():
    # No random crop: every draw is the evaluation view of the image (short side resized, centre crop) or its mirror.
    torch.manual_seed(0)
    image = _noise_image(50, 40)
    whole = A.eval_transform(size=32, resize=32)(image)
    outputs = [A.train_transform(size=32, preset="flip")(image) for _ in range(12)]
    assert all(torch.equal(x, whole) or torch.equal(x, whole.flip(-1)) for x in outputs)
    assert any(torch.equal(x, whole.flip(-1)) for x in outputs) and any(torch.equal(x, whole) for x in outputs)
