"""Zero-shot semantic segmentation with any vocabulary: the official protocol of spec section 5.

Per crop (spec 5.3): chain the soft assignment maps of the grouping stages, upsample them bilinearly to the
crop, give each pixel its most likely final group, score groups against the class text embeddings
(softmax over the image's top-5 classes times the full softmax), and mark background where a pixel's best
score is under min(threshold, best group-class score). Unlike the reference, crops run in batches and the
image encoder runs once per crop (the reference runs it twice).

How a group becomes a class or background lives in `groupvit.naming` (the official rule and its variants). An
image is encoded once (`ZeroShotSegmenter.encode`) and can then be named under any options (`name`), which is
how calibration and the benchmarks try many options on one encoder pass.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .checks import check_memory
from .image import ImageInput, load_image, rescale_size, to_tensor
from .model import GroupViT, ImageGroups
from .naming import Naming, area_filter, name_pixels, threshold_vector
from .naming import background_channel as background_channel  # re-exported: the protocol's steps
from .naming import group_class_affinity as group_class_affinity
from .settings import BACKGROUND_THRESHOLDS as BACKGROUND_THRESHOLDS  # re-exported: its old home
from .settings import FROM_MODEL, Requested, resolve_settings
from .templates import get_templates
from .tokenizer import CONTEXT_LENGTH, tokenize
from .tokenizer import encode as token_ids

MAX_CLASSES = 1000  # zero-shot classification (ImageNet has 1000)
MAX_SEGMENT_CLASSES = 255  # a label PNG's palette holds 0 (background) to 255
# Per-pixel results at the image's own size (scores [C + 1, H, W], labels, group maps) may take at most this much
# memory; a larger image is refused before any encoder pass (downscale it, or name fewer classes).
MAX_RESULT_BYTES = 4 << 30


def check_class_names(class_names: Sequence[str], unique: bool = True, limit: int = MAX_SEGMENT_CLASSES) -> list[str]:
    """Strip names and reject empty lists, blank names, over `limit` names and (with `unique`) duplicates.

    Classification allows duplicates (CLIP's ImageNet names repeat 'missile' and 'sunglasses') and MAX_CLASSES."""
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    given = [str(n).strip() for n in class_names]
    if not given:
        raise ValueError("no class names given; pass e.g. 'dog,grass,sky'")
    if len(given) > limit:
        raise ValueError(f"{len(given)} class names given; at most {limit} are supported")
    if any(not n for n in given):
        raise ValueError(f"empty class name in {list(class_names)!r}; remove stray commas")
    broken = next((n for n in given if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in n)), None)
    if broken is not None:
        raise ValueError(f"class name {broken[:60]!r} holds a line break or control character; give the names on one "
                         "line, separated by commas")  # fmt: skip
    # Zero-width and other format characters (U+200B, U+2060, U+FEFF, ...) are invisible: a name made of them names
    # nothing a reader can see, and inside a name they only change its tokens.
    names = ["".join(c for c in n if unicodedata.category(c) != "Cf").strip() for n in given]
    invisible = next((g for g, n in zip(given, names, strict=True) if not n), None)
    if invisible is not None:
        raise ValueError(f"class name {invisible!r} is invisible (only zero-width, format or space characters); "
                         "remove it")  # fmt: skip
    cleaned = [g for g, n in zip(given, names, strict=True) if g != n]
    if cleaned:
        warnings.warn(f"removed zero-width or format characters from {len(cleaned)} class name(s): "
                      f"{', '.join(repr(g[:40]) for g in cleaned[:3])}", stacklevel=2)  # fmt: skip
    seen: dict[str, str] = {}
    for n in names if unique else ():
        if n.lower() in seen:
            raise ValueError(f"duplicate class name {n!r} (also given as {seen[n.lower()]!r}); each class once")
        seen[n.lower()] = n
    return names


@torch.no_grad()
def class_text_embeddings(
    model: GroupViT, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",), batch_size: int = 256
) -> torch.Tensor:
    """[C, D] L2-normalised class embeddings: per class, the mean of its prompts' projected (unnormalised)
    embeddings, then normalised, as the reference does (spec 5.1; CLIP normalises before averaging)."""
    device = next(model.parameters()).device
    prompts = [t.format(name) for name in class_names for t in templates]
    warn_if_cut(class_names, templates)
    ids = tokenize(prompts).to(device)
    embeds = torch.cat([model.encode_text(chunk).float() for chunk in ids.split(batch_size)])
    return F.normalize(embeds.view(len(class_names), len(templates), -1).mean(dim=1), dim=-1)


def warn_if_cut(class_names: Sequence[str], templates: Sequence[str]) -> None:
    """Warn, naming them, about class names whose longest prompt passes the text encoder's 77 tokens: the prompt
    is cut there (as the reference does), so the end of the name is not read."""
    cut = [n for n in class_names if any(len(token_ids(t.format(n))) + 2 > CONTEXT_LENGTH for t in templates)]
    if cut:
        shown = ", ".join(repr(n if len(n) <= 40 else n[:40] + "...") for n in cut[:3])
        more = f" and {len(cut) - 3} more" if len(cut) > 3 else ""
        warnings.warn(f"{len(cut)} class name(s) pass the text encoder's {CONTEXT_LENGTH} tokens with their prompt "
                      f"and are cut: {shown}{more}; shorten them", stacklevel=3)  # fmt: skip


def check_result_size(height: int, width: int, classes: int) -> None:
    """Refuse an image whose per-pixel results at its own size would pass MAX_RESULT_BYTES: float scores and
    upsampled logits per class (with background), labels and group maps (int64)."""
    need = height * width * (8 * (classes + 1) + 32)
    if need > MAX_RESULT_BYTES:
        raise ValueError(f"a {width}x{height} image with {classes} classes needs about {need / 2**30:.1f} GiB for its "
                         f"per-pixel results (limit {MAX_RESULT_BYTES / 2**30:g} GiB); downscale it or name fewer "
                         "classes")  # fmt: skip
    check_memory(need, f"a {width}x{height} image with {classes} classes", "downscale it or name fewer classes")


def token_grid(num_tokens: int, height: int, width: int) -> tuple[int, int]:
    """Recover the (h, w) token grid of a crop from its token count and aspect ratio (spec 5.3 step 2)."""
    scale = math.sqrt(height * width // num_tokens)
    if height > width:
        w = width // round(scale)
        return num_tokens // w, w
    h = height // round(scale)
    return h, num_tokens // h


def chain_assignments(assignments: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Soft maps [B, S_out, N_in] per stage -> pixel-token-to-group maps [B, N_pixels, S] per stage."""
    chained, current = [], None
    for soft in assignments:
        step = soft.transpose(1, 2)  # [B, N_in, S_out]
        current = step if current is None else current @ step
        chained.append(current)
    return chained


def upsample_groups(token_to_group: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, N, S] token->group probabilities -> [B, S, H, W] bilinearly upsampled to the crop."""
    B, N, S = token_to_group.shape
    h, w = token_grid(N, *size)
    maps = token_to_group.transpose(1, 2).reshape(B, S, h, w)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class CropPass(NamedTuple):
    """One image-encoder pass over a batch of same-size crops: what naming needs, before any class is scored."""

    image_embeds: torch.Tensor  # [B, D] pooled, projected (not normalised)
    group_embeds: torch.Tensor  # [B, G, D] final groups, projected
    group_index: list[torch.Tensor]  # per grouping stage [B, H, W] pixel -> group (the final stage only without maps)
    members: tuple[torch.Tensor, torch.Tensor] | None = None  # final groups' members: [B, M, D], pixel -> member


def encode_with_members(model: GroupViT, pixels: torch.Tensor) -> tuple[ImageGroups, torch.Tensor]:
    """One encoder pass that also returns the members of the final groups, projected [B, M, D]: the tokens entering
    the last grouping block (the previous stage's groups; patches with one stage), after the final LayerNorm as
    the final groups are. Hierarchical naming names them; the model never projects them in training."""
    if not isinstance(model, GroupViT):
        raise ValueError(f"hierarchical naming needs the PyTorch model: the {model.runtime} export does not output the "
                         "final groups' members")  # fmt: skip
    blocks = [stage.grouping for stage in model.visual.stages if stage.grouping is not None]
    if not blocks:
        raise ValueError("hierarchical naming needs a model with a grouping stage (a plain ViT has no groups to split)")
    captured = []
    hook = blocks[-1].register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        out = model.encode_image_groups(pixels)
    finally:
        hook.remove()
    if not captured:  # a compiled encoder may skip module hooks
        raise ValueError("hierarchical naming could not read the last grouping block's input; run without --compile")
    return out, model.visual_projection(model.visual.norm(captured[0]))


@torch.no_grad()
def encode_crops(model: GroupViT, pixels: torch.Tensor, group_maps: bool = True, members: bool = False) -> CropPass:
    """A batch of same-size crops [B, 3, H, W] -> their encoder pass with every pixel's group per stage (only the
    final stage with `group_maps=False`: upsampling the 64 first-stage maps costs more than the rest together) and,
    with `members`, the final groups' members and every pixel's member (hierarchical naming).

    Pixels past the last whole patch are ignored by the encoder (as the reference's strided conv ignores
    them) but still receive a group from the upsampled maps.
    """
    H, W = pixels.shape[2:]
    p = model.config.vision.patch_size
    if H < p or W < p:
        raise ValueError(f"crop {H}x{W} is smaller than one {p}x{p} patch")
    crops = pixels[:, :, : H // p * p, : W // p * p]
    out, member_embeds = encode_with_members(model, crops) if members else (model.encode_image_groups(crops), None)
    chained = chain_assignments(out.assignments)
    if not chained:  # a plain ViT (no grouping stage, e.g. the SynthVOC baseline): each patch is its own group
        B, N = out.group_embeds.shape[:2]
        chained = [torch.eye(N, device=pixels.device).expand(B, N, N)]
    stages = chained if group_maps else chained[-1:]
    group_index = [upsample_groups(m.float(), (H, W)).argmax(dim=1) for m in stages]  # [B, H, W] per stage
    if member_embeds is None:
        return CropPass(out.image_embeds, out.group_embeds, group_index)
    B, M = member_embeds.shape[:2]
    # Pixel -> member: the chained maps up to the previous stage, or the patch itself with one stage.
    to_member = chained[-2] if len(chained) > 1 else torch.eye(M, device=pixels.device).expand(B, M, M)
    member_index = upsample_groups(to_member.float(), (H, W)).argmax(dim=1)  # [B, H, W]
    return CropPass(out.image_embeds, out.group_embeds, group_index, (member_embeds, member_index))


def name_crop(
    model: GroupViT,
    crop: CropPass,
    text_embeds: torch.Tensor,
    num_classes: int,
    threshold: float | torch.Tensor | None,
    naming: Naming,
) -> torch.Tensor:
    """A crop pass named under `naming` (see groupvit.naming.name_pixels) -> logits [B, 1 + C, H, W], or
    [B, C, H, W] when nothing makes background. text_embeds [K, D]: C classes, then background words."""
    members = None if crop.members is None else (crop.members[0].float(), crop.members[1])
    return name_pixels(crop.group_embeds.float(), crop.image_embeds.float(), crop.group_index[-1], text_embeds.float(),
                       model.logit_scale_value().float(), num_classes, threshold, naming, members)  # fmt: skip


def image_scores(crop: CropPass, text_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-level class scores of a pass, for recognition (naming apart from grouping): the cosine of the pooled
    embedding with each class [B, C] and of each class's best final group [B, C]."""
    pooled = F.normalize(crop.image_embeds.float(), dim=-1) @ text_embeds.T  # [B, C]
    groups = (F.normalize(crop.group_embeds.float(), dim=-1) @ text_embeds.T).amax(dim=1)  # [B, C]
    return pooled, groups


@torch.no_grad()
def segment_crops(
    model: GroupViT,
    pixels: torch.Tensor,
    text_embeds: torch.Tensor,
    background_threshold: float | None,
    group_maps: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The official protocol on a batch of same-size crops [B, 3, H, W] -> (logits [B, 1 + C, H, W] or
    [B, C, H, W] without background, per-stage pixel->group index maps [B, H, W]; empty with
    `group_maps=False`). `ZeroShotSegmenter` runs the same two steps with any naming options."""
    crop = encode_crops(model, pixels, group_maps)
    logits = name_crop(model, crop, text_embeds, text_embeds.shape[0], background_threshold, Naming())
    return logits, crop.group_index if group_maps else []


def slide_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's sliding windows (y1, y2, x1, x2): ceil((size - crop) / stride) + 1 per axis, the last windows
    shifted back to end at the border; a side shorter than the crop gives one smaller window."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


@dataclass
class SegmentationResult:
    """One image segmented at its original size, as `ZeroShotSegmenter(...)(image)` returns it."""

    labels: np.ndarray  # [H, W] int: 0 = background, i = class_names[i - 1]
    scores: np.ndarray  # [C + 1, H, W] float; channel 0 is the background indicator (zeros without background)
    group_maps: list[np.ndarray]  # per grouping stage, [H, W] pixel -> group index
    class_names: list[str]
    # Image-level class scores from the whole-image pass (None in slide mode without group maps): the cosine of the
    # pooled embedding with each class [C], and of each class's best final group [C].
    pooled_scores: np.ndarray | None = None
    group_scores: np.ndarray | None = None

    def fractions(self) -> dict[str, float]:
        """Pixel fraction of every class present (and 'background')."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names) + 1) / self.labels.size
        names = ["background", *self.class_names]
        return {names[i]: float(f) for i, f in enumerate(counts) if f > 0}


@dataclass
class EncodedImage:
    """An image after its encoder passes, before naming (`ZeroShotSegmenter.encode`; `name` finishes it)."""

    size: tuple[int, int]  # original (height, width)
    canvas: tuple[int, int]  # (height, width) of the resized image the crops tile
    crops: list[tuple[list[tuple[int, int, int, int]], CropPass]]  # batches of windows (y1, y2, x1, x2), their pass
    whole: CropPass | None  # the whole resized image with every stage's maps (pictures, recognition), if made
    pixels: torch.Tensor | None = None  # [1, 3, h, w] the resized image, kept for PAMR only


class ZeroShotSegmenter:
    """Segment images into the given class names with a GroupViT (spec section 5).

    The resize, test mode and background threshold default to the model's `test_settings` (groupvit.settings):
    the official protocol's for the released models (448 short side, 448 crops at stride 224, threshold 0.95),
    the settings a model recorded otherwise (the shipped `synthvoc`: its 64-pixel training size, calibrated
    threshold). Any argument given overrides them.

    background_threshold: None for vocabularies that cover everything (labels are then 1..C only).
    mode: 'slide' (crops at a stride: the official protocol) or 'whole'.
    templates: a set name ('simple' = "a photo of a {}.", 'subset', 'full') or a list of templates.
    autocast_dtype: None (fp32), torch.bfloat16 (GPU, or CPUs with AVX512-BF16/AMX) or torch.float16 (GPU).
    group_maps: also return per-stage group maps; in slide mode they cost one extra whole-image pass.
    naming: protocol variants of how groups become classes or background (groupvit.naming.Naming; the default
        is the official protocol).
    """

    def __init__(
        self,
        model: GroupViT,
        class_names: Sequence[str],
        background_threshold: float | object | None = FROM_MODEL,
        mode: str | None = None,
        templates: str | Sequence[str] = "simple",
        short_side: int | None = None,
        long_side: int = 2048,
        crop_size: int | None = None,
        stride: int | None = None,
        batch_size: int = 8,
        autocast_dtype: torch.dtype | None = None,
        group_maps: bool = True,
        naming: Naming | None = None,
    ) -> None:
        if mode not in (None, "", "slide", "whole"):
            raise ValueError(f"mode must be 'slide' or 'whole', got {mode!r}")
        given = None if background_threshold is FROM_MODEL else background_threshold
        if given is not None and not 0.0 <= given <= 1.0:
            raise ValueError(f"background_threshold must be in [0, 1] or None, got {background_threshold}")
        # What is not given is the model's (a threshold: the model's, else VOC's; None: no background).
        requested = Requested(short_side=short_side or None, mode=mode or None, background_threshold=given,
                              background=background_threshold is not None)  # fmt: skip
        run = resolve_settings(model.test_settings, model.config, requested)
        settings, background_threshold = run.settings, run.background_threshold
        mode, short_side = settings.mode, settings.short_side
        crop_size, stride = crop_size or settings.crop_size, stride or settings.stride
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.background_threshold = background_threshold
        self.mode = mode
        self.short_side, self.long_side, self.crop_size, self.stride = short_side, long_side, crop_size, stride
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.return_group_maps = group_maps
        self.naming = settings.naming if naming is None else naming
        self._refined = None  # PAMR of the image named last: (encoded, weights, {naming: (text, classes)})
        self.templates = get_templates(templates)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self.set_classes(class_names)
        self.query()  # background words are checked against the classes now, not at the first image

    def _embeddings(self, names: tuple[str, ...]) -> torch.Tensor:
        if names not in self._text_cache:
            self._text_cache[names] = class_text_embeddings(self.model, names, self.templates)
        return self._text_cache[names]

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Switch vocabulary; text embeddings are computed once per vocabulary and cached."""
        names = tuple(check_class_names(class_names))
        self.class_names = list(names)
        self.text_embeds = self._embeddings(names)

    @property
    def has_background(self) -> bool:
        return self.background_threshold is not None or self.naming.makes_background()

    def query(self) -> tuple[torch.Tensor, float | torch.Tensor | None]:
        """What groups are scored against, [K, D] (the classes, then any background words), and the background
        threshold: one number, one per class [C] (`naming.class_thresholds`), or None."""
        words = tuple(check_class_names(self.naming.background_words)) if self.naming.background_words else ()
        clash = sorted({w.lower() for w in words} & {n.lower() for n in self.class_names})
        if clash:
            raise ValueError(f"{', '.join(clash)}: both a class and a background word; drop it from one list")
        text = torch.cat([self.text_embeds, self._embeddings(words)]) if words else self.text_embeds
        thresholds = self.naming.class_thresholds
        return text, threshold_vector(thresholds, self.class_names) if thresholds else self.background_threshold

    def _autocast(self):
        # bf16 on CPU is only fast with AVX512-BF16 or AMX (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`).
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled)

    def encode(self, image: ImageInput, members: bool | None = None, keep_pixels: bool | None = None) -> EncodedImage:
        """Resize and run the encoder passes (no class is scored yet). members: also encode the final groups'
        members, which hierarchical naming needs (default: whether `naming.hierarchical` is set); keep_pixels: keep the
        resized image, which PAMR needs (default: whether `naming.refine` is set)."""
        rgb = load_image(image)
        check_result_size(*rgb.shape[:2], len(self.class_names))
        pixels = to_tensor(rgb, rescale_size(*rgb.shape[:2], self.short_side, self.long_side))
        return self.encode_pixels(pixels, rgb.shape[:2], members, keep_pixels)

    @torch.no_grad()
    def encode_pixels(
        self,
        pixels: torch.Tensor,
        size: tuple[int, int] | None = None,
        members: bool | None = None,
        keep_pixels: bool | None = None,
    ) -> EncodedImage:
        """Normalised, already-resized pixels [1, 3, H, W] of an image of `size` (default: H, W) -> its passes."""
        members = self.naming.hierarchical is not None if members is None else members
        keep_pixels = self.naming.refine is not None if keep_pixels is None else keep_pixels
        pixels = pixels.to(self.device)
        H, W = pixels.shape[2:]
        with self._autocast():
            if self.mode == "whole":
                crop = encode_crops(self.model, pixels, self.return_group_maps, members)
                crops, whole = [([(0, H, 0, W)], crop)], crop if self.return_group_maps else None
            else:
                # One whole-image pass, only for the pictures and recognition.
                whole = encode_crops(self.model, pixels) if self.return_group_maps else None
                windows = slide_windows(H, W, self.crop_size, self.stride)
                crops = []
                for start in range(0, len(windows), self.batch_size):
                    batch = windows[start : start + self.batch_size]
                    stacked = torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in batch])
                    crops.append((batch, encode_crops(self.model, stacked, group_maps=False, members=members)))
        return EncodedImage(tuple(size or (H, W)), (H, W), crops, whole, pixels if keep_pixels else None)

    @torch.no_grad()
    def crop_logits(self, encoded: EncodedImage) -> torch.Tensor:
        """The crops named under the current options, summed on the resized image's canvas and divided by the
        per-pixel window count -> logits [K, H, W] (K = 1 + C with background, else C)."""
        text, threshold = self.query()
        total = count = None
        with self._autocast():
            for batch, crop in encoded.crops:
                logits = name_crop(self.model, crop, text, len(self.class_names), threshold, self.naming)
                if total is None:
                    total = logits.new_zeros(logits.shape[1], *encoded.canvas)  # [K, H, W]
                    count = logits.new_zeros(1, *encoded.canvas)
                for (y1, y2, x1, x2), logit in zip(batch, logits, strict=True):
                    total[:, y1:y2, x1:x2] += logit
                    count[:, y1:y2, x1:x2] += 1
        return total / count

    def logits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised, already-resized pixels [1, 3, H, W] -> (logits [K, H, W], group maps [H, W] per stage)."""
        encoded = self.encode_pixels(pixels)
        return self.crop_logits(encoded), [] if encoded.whole is None else [g[0] for g in encoded.whole.group_index]

    def _pamr(self, encoded: EncodedImage, logits: torch.Tensor) -> torch.Tensor:
        """PAMR of logits [K, H, W]. The class channels do not depend on the background threshold, so for the
        image named last they are refined once per naming and reused (a threshold sweep names each image under
        every threshold in turn: `evaluate_namings`, `CalibrationImages.curve`); only the background channel is
        refined per call."""
        from .pamr import pamr_weights, refine

        if encoded.pixels is None:
            raise ValueError("PAMR needs the image: encode it with keep_pixels=True (naming.refine was not set)")
        C = len(self.class_names)
        naming = repr(dataclasses.replace(self.naming, class_thresholds=None))  # what the class channels depend on
        last = self._refined
        if last is None or last[0] is not encoded:
            last = self._refined = (encoded, pamr_weights(encoded.pixels.to(logits.device)), {})
        _, weights, classes = last  # classes: {naming: (the text embeddings they were named with, refined)}
        if naming not in classes or classes[naming][0] is not self.text_embeds:  # another vocabulary or templates
            classes[naming] = (self.text_embeds, refine(weights, logits[None, -C:])[0])
        background = refine(weights, logits[None, :-C])[0] if logits.shape[0] > C else logits[:0]
        return torch.cat([background, classes[naming][1]])

    def name(self, encoded: EncodedImage) -> SegmentationResult:
        """Name an encoded image under the current class names and options -> the result at its original size."""
        height, width = encoded.size
        logits = self.crop_logits(encoded)
        if self.naming.refine == "pamr":
            logits = self._pamr(encoded, logits)
        logits = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        if logits.shape[0] == len(self.class_names):  # no background channel
            labels = logits.argmax(dim=0) + 1
            scores = torch.cat([logits.new_zeros(1, height, width), logits])
        else:
            labels, scores = logits.argmax(dim=0), logits
        if self.naming.min_area:
            labels = area_filter(labels, len(self.class_names), self.naming.min_area)
        whole = encoded.whole
        group_maps = [] if whole is None else [
            F.interpolate(g[:1, None].float(), size=(height, width), mode="nearest")[0, 0].long()
            for g in whole.group_index
        ]  # fmt: skip
        pooled, groups = (None, None) if whole is None else image_scores(whole, self.text_embeds)
        return SegmentationResult(
            labels=labels.cpu().numpy().astype(np.int64),
            scores=scores.cpu().numpy(),
            group_maps=[g.cpu().numpy() for g in group_maps],
            class_names=self.class_names,
            pooled_scores=None if pooled is None else pooled[0].cpu().numpy(),
            group_scores=None if groups is None else groups[0].cpu().numpy(),
        )

    def __call__(self, image: ImageInput) -> SegmentationResult:
        return self.name(self.encode(image))
