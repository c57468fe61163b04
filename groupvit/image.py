"""Reading images of any common kind into RGB uint8 arrays, and the test-time resize/normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .checks import input_file

# ImageNet statistics; the test pipeline applies them on 0-255 RGB: mean (123.675, 116.28, 103.53) (spec 5.2).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 1 << 30  # an image file, before it is opened (64 megapixels of 16-bit RGBA are 512 MB raw)
# Long side over short side. The protocols resize the short side to 448 (segmentation) or 256 (classification),
# so a thin strip would become a huge intermediate (a 40000x1 PNG of 198 bytes: 10 GB) or, with the long side
# capped at 2048, a side of less than one pixel. At 50 the short side stays at least 40 px (over two patches).
MAX_ASPECT_RATIO = 50

ImageInput = str | Path | Image.Image | np.ndarray


def _to_uint8(array: np.ndarray, name: str = "the image") -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():  # NaN would make every pixel the same grey, or garbage, and the model answer regardless
        raise ValueError(f"{name} holds {array.size - int(finite.sum()):,} NaN or infinite values of {array.size:,}; "
                         "replace them with numbers first")  # fmt: skip
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    if 0.0 <= lo and hi <= 1.0:  # float images in [0, 1]
        return (array * 255).round().astype(np.uint8)
    return ((array - lo) / max(hi - lo, 1e-12) * 255).round().astype(np.uint8)


def load_image(image: ImageInput, max_pixels: int = MAX_PIXELS, formats: Sequence[str] | None = None) -> np.ndarray:
    """A path, PIL image or numpy array -> RGB uint8 [H, W, 3]. Grayscale, alpha and 16-bit are converted;
    EXIF orientation is applied. Raises ValueError with the reason for anything else.

    formats: Pillow format names a file may have (e.g. ("PNG", "JPEG")), whatever its extension; None allows
    every format Pillow reads. Servers should pass a list: some decoders (EPS) run external programs."""
    path = None
    if isinstance(image, str | Path):
        path = Path(image)
        try:
            input_file(path, "image", MAX_FILE_BYTES)  # never opens a FIFO or device
        except FileNotFoundError as e:  # one image of a batch: skipped with the others' errors
            raise ValueError(str(e)) from None
        try:
            pil = Image.open(path, formats=formats)
        except Image.DecompressionBombError as e:  # Pillow's own guard, above ~179 megapixels
            raise ValueError(f"{path} is too large to decode safely ({e}); downscale it first") from None
        except (UnidentifiedImageError, OSError) as e:
            kind = "an image Pillow can read" if formats is None else f"a {', '.join(formats)} image"
            raise ValueError(f"{path} is not {kind} ({e})") from None
        check_size(pil.width, pil.height, max_pixels, str(path))  # from the header, before decoding
        try:
            pil = ImageOps.exif_transpose(pil)
            pil.load()
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is damaged or truncated ({e})") from None
        image = pil
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = np.array(image)
        else:
            image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image path, PIL image or numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image array [H, W], [H, W, 3] or [H, W, 4], got shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    name = str(path) if isinstance(path, Path) else "the image"
    check_size(image.shape[1], image.shape[0], max_pixels, name)
    image = _to_uint8(image, name)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS, name: str = "the image") -> None:
    """Refuse an image over `max_pixels` or MAX_ASPECT_RATIO, saying what to do."""
    if width * height > max_pixels:
        raise ValueError(f"{name} is {width}x{height} = {width * height / 1e6:.3g} megapixels, over the limit of "
                         f"{max_pixels / 1e6:g}; downscale it first")  # fmt: skip
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ValueError(f"{name} is {width}x{height}: one side is more than {MAX_ASPECT_RATIO} times the other; "
                         "crop it into pieces first")  # fmt: skip


def rescale_size(height: int, width: int, short_side: int = 448, long_side: int = 2048) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: factor min(long/long side, short/short side), sizes rounded half up (at least 1)."""
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def to_tensor(image: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> normalised float [1, 3, h, w], resized bilinearly (no antialias, as cv2) to `size`.

    The resized image is rounded to 0-255 integers as the reference's uint8 pipeline does.
    """
    x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float()  # [1, 3, H, W]
    if size is not None and tuple(size) != tuple(x.shape[2:]):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (x - mean) / std
