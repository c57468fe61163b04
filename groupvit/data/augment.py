"""Training and evaluation image transforms: the GroupViT (DeiT-style) recipe on PIL + torch.

GroupViT trains with timm 0.4.12's `create_transform(is_training=True, auto_augment='rand-m9-mstd0.5-inc1',
re_prob=0.25, re_mode='pixel', re_count=1, interpolation='bilinear')`, i.e.

    RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3)) -> horizontal flip (p=0.5)
    -> RandAugment (2 ops, magnitude 9 +- N(0, 0.5), increasing op set) -> ToTensor + ImageNet Normalize
    -> RandomErasing (p=0.25, per-pixel normal noise)

Colour jitter is configured there too, but timm only applies it when no auto-augment is given, so it is
absent here. timm and torchvision cannot be used in this project, so the pipeline is re-implemented with
the same sampling rules. Every random draw comes from Python's `random` module or torch's global RNG
(as in timm), so seeding both in a data-loader worker makes the augmentation reproducible.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from ..image import IMAGENET_MEAN, IMAGENET_STD

# RandAugment fills pixels uncovered by geometric ops with the dataset mean on 0-255, as timm does
# (round(255 * mean)): (124, 116, 104).
FILL_COLOR: tuple[int, ...] = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# timm's choice for geometric RandAugment ops when no fixed interpolation is configured.
_RANDOM_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
_MAX_LEVEL = 10.0  # RandAugment magnitudes live on a 0-10 scale


def _resample(interpolation: str) -> Image.Resampling:
    if interpolation not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(_RESAMPLE)}")
    return _RESAMPLE[interpolation]


class Compose:
    """Apply transforms in order (torchvision's Compose, which is not available here)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"


def to_rgb(img: Image.Image) -> Image.Image:
    """The ops below assume 3-channel 8-bit images (the fill colour has 3 values)."""
    return img if img.mode == "RGB" else img.convert("RGB")


# ---------------------------------------------------------------------------------------------------------
# Random resized crop and flip
# ---------------------------------------------------------------------------------------------------------


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """Sample a crop box (top, left, h, w) with torchvision / timm semantics.

    Area is a uniform fraction `scale` of the image, aspect ratio w/h is log-uniform in `ratio`. After
    `attempts` misses (box larger than the image) fall back to a centre crop with the ratio clamped.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = random.randint(0, height - h)
            left = random.randint(0, width - w)
            return top, left, h, w
    # Fallback: the whole image, cut down to the nearest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class RandomResizedCrop:
    """Crop a random box (see `random_resized_crop_box`) and resize it to size x size."""

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
    ) -> None:
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.resample = _resample(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, h, w = random_resized_crop_box(img.width, img.height, self.scale, self.ratio)
        # Crop first, then resize (torchvision's resized_crop): edge pixels are not blended with outside ones.
        return img.crop((left, top, left + w, top + h)).resize((self.size, self.size), self.resample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability p (torch RNG, as torchvision's RandomHorizontalFlip)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1).item() < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


# ---------------------------------------------------------------------------------------------------------
# RandAugment ops. Geometric ops take (img, arg, fill, resample); colour ops take (img[, arg]).
# Affine coefficients (a, b, c, d, e, f) map an output pixel (x, y) to the input (a x + b y + c, d x + e y + f).
# ---------------------------------------------------------------------------------------------------------


def _affine(img: Image.Image, coeffs: tuple[float, ...], fill: tuple[int, ...], resample) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=resample, fillcolor=fill)


def shear_x(img: Image.Image, factor: float, fill: tuple[int, ...], resample) -> Image.Image:
    return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img: Image.Image, factor: float, fill: tuple[int, ...], resample) -> Image.Image:
    return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(img: Image.Image, pct: float, fill: tuple[int, ...], resample) -> Image.Image:
    """Shift content left by pct * width pixels (right when pct < 0)."""
    return _affine(img, (1, 0, pct * img.width, 0, 1, 0), fill, resample)


def translate_y_rel(img: Image.Image, pct: float, fill: tuple[int, ...], resample) -> Image.Image:
    """Shift content up by pct * height pixels (down when pct < 0)."""
    return _affine(img, (1, 0, 0, 0, 1, pct * img.height), fill, resample)


def rotate(img: Image.Image, degrees: float, fill: tuple[int, ...], resample) -> Image.Image:
    """Rotate counter-clockwise about the centre, keeping the size."""
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def auto_contrast(img: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image) -> Image.Image:
    return ImageOps.equalize(img)


def invert(img: Image.Image) -> Image.Image:
    return ImageOps.invert(img)


def solarize(img: Image.Image, threshold: int) -> Image.Image:
    """Invert every value >= threshold."""
    return ImageOps.solarize(img, threshold)


def solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    """Add `add` (saturating at 255) to every value below threshold."""
    lut = [min(255, v + add) if v < threshold else v for v in range(256)]
    return img.point(lut * len(img.getbands()))


def posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep only the `bits` most significant bits of each value; 0 bits gives black.

    Own LUT rather than ImageOps.posterize: recent Pillow rejects bits=0, which magnitude 10 produces.
    """
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return img.point([v & mask for v in range(256)] * len(img.getbands()))


def color(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(img).enhance(factor)


def contrast(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(factor)


# Magnitude (0-10) -> op argument, following timm's `LEVEL_TO_ARG` for the "increasing" variants: a larger
# magnitude is always a stronger change. Signed ops flip the sign with probability 0.5.


def _random_sign(v: float) -> float:
    return -v if random.random() > 0.5 else v


def _rotate_arg(m: float) -> float:
    return _random_sign(m / _MAX_LEVEL * 30.0)  # degrees in [-30, 30]


def _shear_arg(m: float) -> float:
    return _random_sign(m / _MAX_LEVEL * 0.3)  # shear factor in [-0.3, 0.3]


def _translate_rel_arg(m: float) -> float:
    return _random_sign(m / _MAX_LEVEL * 0.45)  # fraction of the side in [-0.45, 0.45]


def _enhance_increasing_arg(m: float) -> float:
    # 1.0 is the identity; moving towards 0.1 or 1.9 is stronger (floor 0.1 only matters if m > 10).
    return max(0.1, 1.0 + _random_sign(m / _MAX_LEVEL * 0.9))


def _posterize_increasing_arg(m: float) -> int:
    return 4 - int(m / _MAX_LEVEL * 4)  # bits kept: 4 (m < 2.5) down to 0 (m = 10)


def _solarize_increasing_arg(m: float) -> int:
    return 256 - int(m / _MAX_LEVEL * 256)  # threshold: 256 (no-op) down to 0 (invert all)


def _solarize_add_arg(m: float) -> int:
    return int(m / _MAX_LEVEL * 110)  # added value in [0, 110]


@dataclass(frozen=True)
class _OpSpec:
    fn: Callable[..., Image.Image]
    level_to_arg: Callable[[float], float] | None  # None: the op takes no argument
    geometric: bool = False  # geometric ops also take the fill colour and a resampling filter


# timm's `_RAND_INCREASING_TRANSFORMS`, in its order (selected by 'inc1').
RAND_INCREASING_OPS: dict[str, _OpSpec] = {
    "AutoContrast": _OpSpec(auto_contrast, None),
    "Equalize": _OpSpec(equalize, None),
    "Invert": _OpSpec(invert, None),
    "Rotate": _OpSpec(rotate, _rotate_arg, geometric=True),
    "PosterizeIncreasing": _OpSpec(posterize, _posterize_increasing_arg),
    "SolarizeIncreasing": _OpSpec(solarize, _solarize_increasing_arg),
    "SolarizeAdd": _OpSpec(solarize_add, _solarize_add_arg),
    "ColorIncreasing": _OpSpec(color, _enhance_increasing_arg),
    "ContrastIncreasing": _OpSpec(contrast, _enhance_increasing_arg),
    "BrightnessIncreasing": _OpSpec(brightness, _enhance_increasing_arg),
    "SharpnessIncreasing": _OpSpec(sharpness, _enhance_increasing_arg),
    "ShearX": _OpSpec(shear_x, _shear_arg, geometric=True),
    "ShearY": _OpSpec(shear_y, _shear_arg, geometric=True),
    "TranslateXRel": _OpSpec(translate_x_rel, _translate_rel_arg, geometric=True),
    "TranslateYRel": _OpSpec(translate_y_rel, _translate_rel_arg, geometric=True),
}


class AugmentOp:
    """One RandAugment op: applied with probability `prob` at a (noisy) magnitude on the 0-10 scale.

    `interpolation` is the resampling filter of geometric ops; "random" picks bilinear or bicubic per call,
    which is what timm does when no interpolation is configured.
    """

    def __init__(
        self,
        name: str,
        prob: float = 0.5,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        fill: tuple[int, ...] = FILL_COLOR,
        interpolation: str = "bilinear",
    ) -> None:
        if name not in RAND_INCREASING_OPS:
            raise ValueError(f"unknown RandAugment op {name!r}")
        self.name = name
        self.spec = RAND_INCREASING_OPS[name]
        self.prob = prob
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.fill = tuple(fill)
        self.resample = None if interpolation == "random" else _resample(interpolation)

    def sample_magnitude(self) -> float:
        """Magnitude + N(0, std) noise (uniform in [0, magnitude] if std is inf), clipped to [0, 10]."""
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = random.uniform(0, m)
        elif self.magnitude_std > 0:
            m = random.gauss(m, self.magnitude_std)
        return max(0.0, min(m, _MAX_LEVEL))

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        m = self.sample_magnitude()
        args = () if self.spec.level_to_arg is None else (self.spec.level_to_arg(m),)
        if not self.spec.geometric:
            return self.spec.fn(img, *args)
        resample = random.choice(_RANDOM_RESAMPLE) if self.resample is None else self.resample
        return self.spec.fn(img, *args, fill=self.fill, resample=resample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})"


class RandAugment:
    """Apply `num_layers` ops drawn uniformly with replacement, each with probability `prob` (timm semantics)."""

    def __init__(
        self,
        magnitude: float = 9.0,
        num_layers: int = 2,
        magnitude_std: float = 0.5,
        prob: float = 0.5,
        fill: tuple[int, ...] = FILL_COLOR,
        interpolation: str = "bilinear",
    ) -> None:
        self.num_layers = num_layers
        self.ops = [
            AugmentOp(name, prob, magnitude, magnitude_std, fill, interpolation) for name in RAND_INCREASING_OPS
        ]

    @classmethod
    def from_config(cls, config: str, **kwargs) -> RandAugment:
        """Parse a timm config string such as 'rand-m9-mstd0.5-inc1' (m, n, mstd and inc sections).

        Only the increasing op set ('inc1') is implemented; other keys raise. Extra kwargs go to __init__.
        """
        parts = config.split("-")
        if parts[0] != "rand":
            raise ValueError(f"not a RandAugment config: {config!r}")
        increasing = False
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)(\d.*)", part)
            if match is None:
                raise ValueError(f"bad RandAugment config section {part!r} in {config!r}")
            key, value = match.groups()
            if key == "m":
                kwargs["magnitude"] = float(value)
            elif key == "n":
                kwargs["num_layers"] = int(value)
            elif key == "mstd":
                std = float(value)
                kwargs["magnitude_std"] = float("inf") if std > 100 else std  # timm: > 100 means uniform
            elif key == "inc":
                increasing = bool(int(value))
            else:
                raise ValueError(f"unsupported RandAugment config key {key!r} in {config!r}")
        if not increasing:
            raise ValueError(f"only the increasing op set ('inc1') is implemented, got {config!r}")
        return cls(**kwargs)

    def __call__(self, img: Image.Image) -> Image.Image:
        # timm draws the ops with np.random.choice; Python's random keeps all draws on seedable global RNGs.
        for op in random.choices(self.ops, k=self.num_layers):
            img = op(img)
        return img

    def __repr__(self) -> str:
        ops = "".join(f"\n    {op!r}," for op in self.ops)
        return f"{type(self).__name__}(n={self.num_layers}, ops=[{ops}\n])"


# ---------------------------------------------------------------------------------------------------------
# Tensor conversion and random erasing
# ---------------------------------------------------------------------------------------------------------


class ToNormalizedTensor:
    """PIL RGB [H, W] uint8 -> float32 tensor [3, H, W], (x / 255 - mean) / std (ToTensor + Normalize)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean_std = (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # [3, 1, 1]
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # [3, 1, 1]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        array = np.array(to_rgb(img), dtype=np.uint8)  # [H, W, 3], a writable copy
        x = torch.from_numpy(array).permute(2, 0, 1).float().div_(255)  # [3, H, W] in [0, 1]
        return x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean_std[0]}, std={self.mean_std[1]})"


class RandomErasing:
    """With probability p, replace a random rectangle of a normalised [C, H, W] tensor (timm semantics).

    The rectangle covers a uniform fraction (min_area, max_area) of the image with a log-uniform aspect
    ratio h/w in (min_aspect, max_aspect), placed uniformly; 10 tries per rectangle, none if all miss.
    mode 'pixel' fills with per-pixel N(0, 1) noise (i.e. noise around the dataset mean after
    normalisation), 'rand' with one normal value per channel, 'const' with zeros.
    """

    def __init__(
        self,
        p: float = 0.25,
        min_area: float = 0.02,
        max_area: float = 1 / 3,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        mode: str = "pixel",
        count: int = 1,
    ) -> None:
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"unknown random erasing mode {mode!r}")
        self.p = p
        self.min_area = min_area
        self.max_area = max_area
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
        self.mode = mode
        self.count = count

    def sample_box(self, height: int, width: int) -> tuple[int, int, int, int] | None:
        """One rectangle (top, left, h, w) strictly smaller than the image, or None after 10 misses."""
        for _ in range(10):
            target_area = random.uniform(self.min_area, self.max_area) * height * width / self.count
            aspect = math.exp(random.uniform(*self.log_aspect))
            h = round(math.sqrt(target_area * aspect))
            w = round(math.sqrt(target_area / aspect))
            if w < width and h < height:
                return random.randint(0, height - h), random.randint(0, width - w), h, w
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"expected a [C, H, W] tensor, got shape {tuple(x.shape)}")
        if random.random() > self.p:
            return x
        x = x.clone()  # timm erases in place; a copy keeps the caller's tensor intact
        channels, height, width = x.shape
        for _ in range(self.count):
            box = self.sample_box(height, width)
            if box is None:
                continue
            top, left, h, w = box
            x[:, top : top + h, left : left + w] = self._fill((channels, h, w), x.dtype)
        return x

    def _fill(self, shape: tuple[int, int, int], dtype: torch.dtype) -> torch.Tensor:
        if self.mode == "pixel":
            return torch.empty(shape, dtype=dtype).normal_()  # [C, h, w]
        if self.mode == "rand":
            return torch.empty((shape[0], 1, 1), dtype=dtype).normal_()  # [C, 1, 1]
        return torch.zeros((shape[0], 1, 1), dtype=dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, mode={self.mode}, count={self.count})"


# ---------------------------------------------------------------------------------------------------------
# Evaluation resize / crop
# ---------------------------------------------------------------------------------------------------------


class ResizeShortSide:
    """Resize so the short side is `size`, keeping the aspect ratio (torchvision Resize(int) rounding)."""

    def __init__(self, size: int, interpolation: str = "bilinear") -> None:
        self.size = size
        self.resample = _resample(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        short, long = min(w, h), max(w, h)
        if short == self.size:
            return img
        new_long = int(self.size * long / short)  # truncated, as torchvision
        new_size = (self.size, new_long) if w <= h else (new_long, self.size)
        return img.resize(new_size, self.resample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class CenterCrop:
    """Crop the central size x size box (offsets rounded as torchvision); the image must be at least that big."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        top = round((img.height - self.size) / 2)
        left = round((img.width - self.size) / 2)
        return img.crop((left, top, left + self.size, top + self.size))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


# ---------------------------------------------------------------------------------------------------------
# Public pipelines
# ---------------------------------------------------------------------------------------------------------

GROUPVIT_RAND_AUGMENT = "rand-m9-mstd0.5-inc1"


LIGHT_CROP_SCALE = (0.5, 1.0)  # the light preset's default crop: a share of the image's area


class TensorLightAugment:
    """The "light" preset (or "flip", with `scale=None`) on a uint8 tensor [3, H, W] instead of a PIL image, for
    data held in memory (`training.data.MemoryPairs`): the same random draws in the same order (crop box from
    `random`, flip from torch), the crop resized with antialiased bilinear interpolation (PIL's bilinear filter), then
    normalised. Without a crop the central square is resized, as ResizeShortSide + CenterCrop."""

    def __init__(self, size: int, scale: tuple[float, float] | None = LIGHT_CROP_SCALE) -> None:
        self.size, self.scale = size, scale
        self.mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)  # [3, 1, 1]
        self.std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)  # [3, 1, 1]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            h = w = min(image.shape[1:])
            top, left = round((image.shape[1] - h) / 2), round((image.shape[2] - w) / 2)
        else:
            top, left, h, w = random_resized_crop_box(image.shape[2], image.shape[1], self.scale)
        crop = image[None, :, top : top + h, left : left + w].float()  # [1, 3, h, w]
        x = F.interpolate(crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)[0]
        if torch.rand(1).item() < 0.5:
            x = x.flip(-1)
        return (x.clamp_(0, 255).round_() / 255 - self.mean) / self.std  # rounded like the uint8 PIL path


def train_transform(
    size: int = 224, preset: str = "groupvit", crop_scale: tuple[float, float] = LIGHT_CROP_SCALE
) -> Callable[[Image.Image], torch.Tensor]:
    """Training pipeline: PIL image -> normalised float tensor [3, size, size].

    "groupvit": the paper's recipe (timm create_transform with the settings of GroupViT's default.yml).
    RandAugment's geometric ops use bilinear resampling because GroupViT sets interpolation='bilinear',
    which timm forwards to RandAugment (it only picks bilinear/bicubic at random for 'random').
    "light": crop (`crop_scale` of the area, by default 0.5-1) + flip + normalise, for small or synthetic data where
    heavy augmentation would swamp the signal. "flip": the whole image (its central square) + flip + normalise, so
    every object a caption names stays in the picture (a variant for SynthVOC, not in the paper).
    """
    if preset == "groupvit":
        return Compose(
            [
                to_rgb,
                RandomResizedCrop(size, scale=(0.08, 1.0), interpolation="bilinear"),
                RandomHorizontalFlip(0.5),
                RandAugment.from_config(GROUPVIT_RAND_AUGMENT, fill=FILL_COLOR, interpolation="bilinear"),
                ToNormalizedTensor(),
                RandomErasing(0.25, mode="pixel", count=1),
            ]
        )
    if preset == "light":
        return Compose(
            [
                to_rgb,
                RandomResizedCrop(size, scale=crop_scale, interpolation="bilinear"),
                RandomHorizontalFlip(0.5),
                ToNormalizedTensor(),
            ]
        )
    if preset == "flip":
        return Compose(
            [to_rgb, ResizeShortSide(size), CenterCrop(size), RandomHorizontalFlip(0.5), ToNormalizedTensor()]
        )
    raise ValueError(f"unknown augmentation preset {preset!r}; expected 'groupvit', 'light' or 'flip'")


TENSOR_PRESETS = ("light", "flip")  # the presets `tensor_transform` has for data held in memory


def tensor_transform(
    size: int, preset: str = "light", crop_scale: tuple[float, float] = LIGHT_CROP_SCALE
) -> TensorLightAugment:
    """`train_transform`'s light or flip preset on uint8 tensors [3, H, W] (`training.data.MemoryPairs`)."""
    if preset not in TENSOR_PRESETS:
        raise ValueError(f"data held in memory is augmented with {' or '.join(TENSOR_PRESETS)}, got {preset!r}")
    return TensorLightAugment(size, None if preset == "flip" else crop_scale)


def eval_transform(size: int = 224, resize: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """Evaluation pipeline: short side to `resize` (bilinear), centre crop size x size, normalise.

    `resize` defaults to int(size * 256 / 224), i.e. 256 for 224, as GroupViT's validation transform.
    Output: float tensor [3, size, size].
    """
    resize = int(size * 256 / 224) if resize is None else resize
    if resize < size:
        raise ValueError(f"resize ({resize}) must be at least the crop size ({size})")
    return Compose([to_rgb, ResizeShortSide(resize, "bilinear"), CenterCrop(size), ToNormalizedTensor()])
