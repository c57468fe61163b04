"""Pictures of segmentations and groupings: palettes, overlays with legends, group maps, result grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A legend stays bounded whatever the class list: names are shortened to this many characters, and entries past
# the row limit are summed up in a last row.
MAX_LEGEND_NAME = 40
MAX_LEGEND_ROWS = 40
# Pictures of small images (SynthVOC scenes are 96-160 px) are enlarged by a whole factor until their long side is at
# least this, to be readable on a screen: photographs smoothly, label and group maps pixel for pixel.
MIN_DISPLAY_SIDE = 384


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map [n, 3] uint8: class i's bits spread over the high bits of R, G, B."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def display_scale(shape: Sequence[int], min_side: int = MIN_DISPLAY_SIDE) -> int:
    """The whole factor that brings an image of `shape` [H, W, ...] to a long side of at least `min_side` (1 when it
    is that large already)."""
    return max(1, math.ceil(min_side / max(shape[:2])))


def enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    """A label or group map [H, W] (or an RGB image) `factor` times larger, each pixel a block (nearest)."""
    return array if factor == 1 else array.repeat(factor, axis=0).repeat(factor, axis=1)


def enlarge_photo(image: np.ndarray, factor: int) -> np.ndarray:
    """An RGB uint8 image `factor` times larger, resampled smoothly (bicubic)."""
    if factor == 1:
        return image
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * factor, height * factor), Image.Resampling.BICUBIC))


def outline(colors: np.ndarray, index_map: np.ndarray, width: int = 2) -> np.ndarray:
    """Draw each region's border (where the index changes) in a lighter shade of its colour, `width` pixels wide, so
    that dark palette colours (VOC's cat, plant, ...) stay visible on black. colors: [H, W, 3] uint8."""
    edge = np.zeros(index_map.shape, bool)
    for shift in range(1, width + 1):
        edge[:-shift] |= index_map[:-shift] != index_map[shift:]
        edge[shift:] |= index_map[shift:] != index_map[:-shift]
        edge[:, :-shift] |= index_map[:, :-shift] != index_map[:, shift:]
        edge[:, shift:] |= index_map[:, shift:] != index_map[:, :-shift]
    lighter = (colors + (255 - colors.astype(np.int32)) * 0.6).astype(np.uint8)
    return np.where(edge[..., None], lighter, colors)


def label_image(labels: np.ndarray) -> Image.Image:
    """[H, W] labels (0..255) -> a palette ('P' mode) PNG-ready image with the VOC palette."""
    if labels.min() < 0 or labels.max() > 255:
        raise ValueError("a palette image holds labels 0..255")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().ravel().tolist())
    return img


def colorize(index_map: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """[H, W] integer map -> [H, W, 3] uint8 colours (VOC palette by default)."""
    palette = voc_palette() if palette is None else palette
    return palette[np.asarray(index_map) % len(palette)]


def group_palette(n: int, seed: int = 0) -> np.ndarray:
    """n well-separated random colours for group indices (groups have no class meaning)."""
    hues = (np.arange(n) * 0.618033988749895 + np.random.default_rng(seed).random()) % 1.0
    rgb = np.stack([np.clip(np.abs((hues * 6 + k) % 6 - 3) - 1, 0, 1) for k in (0, 4, 2)], axis=1)
    return (rgb * 200 + 40).astype(np.uint8)


def _font(size: int = 14) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def add_legend(image: Image.Image, entries: Sequence[tuple[str, tuple[int, int, int]]], top: int = 4) -> Image.Image:
    """Append a legend column (colour swatch + name per entry, from `top` pixels down) to the right of `image`; at
    most MAX_LEGEND_ROWS rows of names of at most MAX_LEGEND_NAME characters."""
    font, row = _font(), 20
    keep = len(entries) if len(entries) <= MAX_LEGEND_ROWS else MAX_LEGEND_ROWS - 1
    rows = [(_short(name), color) for name, color in entries[:keep]]
    if keep < len(entries):
        rows.append((f"... and {len(entries) - keep} more", None))
    width = 24 + max((int(ImageDraw.Draw(image).textlength(name, font=font)) for name, _ in rows), default=0)
    canvas = Image.new("RGB", (image.width + width + 12, max(image.height, top + row * len(rows) + 4)), "white")
    canvas.paste(image.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(rows):
        y = top + i * row
        if color is not None:
            draw.rectangle([image.width + 6, y + 2, image.width + 20, y + 16], fill=tuple(int(c) for c in color))
        draw.text((image.width + 26, y + 1), name, fill="black", font=font)
    return canvas


def _short(name: str) -> str:
    return name if len(name) <= MAX_LEGEND_NAME else name[: MAX_LEGEND_NAME - 3] + "..."


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    alpha: float = 0.55,
    legend: bool = True,
    min_side: int = MIN_DISPLAY_SIDE,
    legend_top: int = 4,
) -> Image.Image:
    """Blend VOC-coloured labels over the RGB image (background left as is) and add a legend of the classes
    present, from `legend_top` pixels down. labels: 0 = background, i = class_names[i - 1]. A small image is
    enlarged to a long side of at least `min_side` (display_scale)."""
    factor = display_scale(image.shape, min_side)
    image, labels = enlarge_photo(image, factor), enlarge(labels, factor)
    colors = colorize(labels)
    fg = (labels > 0)[..., None]
    blended = np.where(fg, (1 - alpha) * image + alpha * colors, image).astype(np.uint8)
    out = Image.fromarray(blended)
    if not legend:
        return out
    present = [int(i) for i in np.unique(labels) if i > 0]
    names = ["background", *class_names]
    return add_legend(out, [(names[i], tuple(voc_palette()[i])) for i in present], top=legend_top)


def group_maps_image(
    image: np.ndarray, group_maps: Sequence[np.ndarray], alpha: float = 0.6, min_side: int = MIN_DISPLAY_SIDE
) -> Image.Image:
    """Side-by-side pictures of each stage's pixel->group map blended over the image, titled above (a small image
    enlarged to a long side of at least `min_side`)."""
    factor = display_scale(image.shape, min_side)
    image = enlarge_photo(image, factor)
    panels, titles = [Image.fromarray(image)], ["image"]
    for stage, groups in enumerate(group_maps):
        groups = enlarge(groups, factor)
        palette = group_palette(int(groups.max()) + 1, seed=stage)
        panels.append(Image.fromarray(((1 - alpha) * image + alpha * palette[groups]).astype(np.uint8)))
        titles.append(f"stage {stage + 1}: {len(np.unique(groups))} groups")
    return result_grid([panels], titles)


def hstack(images: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap
    return canvas


def result_grid(
    rows: Sequence[Sequence[Image.Image]], titles: Sequence[str] | None = None, captions: Sequence[str] | None = None
) -> Image.Image:
    """Rows of pictures (e.g. image, ground truth, prediction, group maps) stacked into one grid image, with column
    titles above and a caption under each row (e.g. the scene's name and caption)."""
    lines = [hstack(row) for row in rows]
    header, below = (20 if titles else 0), (20 if captions else 0)
    height = header + sum(im.height + below + 4 for im in lines)
    canvas = Image.new("RGB", (max(im.width for im in lines), height), "white")
    draw = ImageDraw.Draw(canvas)
    if titles:
        x = 0
        for title, im in zip(titles, rows[0], strict=False):
            draw.text((x + 4, 3), title, fill="black", font=_font())
            x += im.width + 4
    y = header
    for i, im in enumerate(lines):
        canvas.paste(im, (0, y))
        if captions:
            draw.text((4, y + im.height + 2), captions[i], fill="black", font=_font())
        y += im.height + below + 4
    return canvas


def comparison_grid(
    rows: Sequence[tuple[np.ndarray, ...]],
    label_names: Sequence[str],
    titles: Sequence[str] = ("image", "ground truth", "prediction"),
    ignore_index: int = 255,
    captions: Sequence[str] | None = None,
    min_side: int = MIN_DISPLAY_SIDE,
) -> Image.Image:
    """One picture for an evaluation report: a row per image of (photo, ground truth, prediction, ...).

    rows: (RGB uint8 [H, W, 3], then label maps [H, W]: the ground truth and one prediction per compared model)
    with integer labels in the dataset's label space (label i is `label_names[i]`; with a background class,
    `label_names[0]` is 'background'), and `ignore_index` for unlabelled pixels. Label maps are drawn in the VOC
    palette (ignored pixels in VOC's cream boundary colour) with each region outlined in a lighter shade (so dark
    colours show on the black background), rows may differ in size, small ones are enlarged to a long side of at
    least `min_side`, a caption may go under each row, and a legend of every label seen in the grid is added on the
    right. Returns an RGB PIL image.
    """
    if not rows:
        raise ValueError("comparison_grid needs at least one (image, ground truth, prediction) row")
    palette, seen = voc_palette(), set()
    pictures = []
    for image, *maps in rows:
        if not maps or any(m.shape != image.shape[:2] for m in maps):
            sizes = ", ".join(str(m.shape) for m in maps)
            raise ValueError(f"image {image.shape[:2]} and its label maps ({sizes or 'none'}) differ in size")
        for labels in maps:
            seen.update(int(i) for i in np.unique(labels))
            if (labels != ignore_index).any() and labels[labels != ignore_index].max() >= len(label_names):
                raise ValueError(f"label {int(labels[labels != ignore_index].max())} has no name in label_names")
        factor = display_scale(image.shape, min_side)
        maps = [enlarge(m, factor) for m in maps]
        pictures.append([Image.fromarray(enlarge_photo(image, factor)),
                         *(Image.fromarray(outline(colorize(m, palette), m)) for m in maps)])  # fmt: skip
    entries = [(label_names[i], tuple(palette[i])) for i in sorted(seen - {ignore_index})]
    if ignore_index in seen:
        entries.append(("ignored", tuple(palette[ignore_index % len(palette)])))
    return add_legend(result_grid(pictures, titles, captions), entries)
