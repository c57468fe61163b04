"""Zero-shot semantic segmentation with any vocabulary: the official protocol of spec section 5.

Per crop (spec 5.3): chain the soft assignment maps of the grouping stages, upsample them bilinearly to the
crop, give each pixel its most likely final group, score groups against the class text embeddings
(softmax over the image's top-5 classes times the full softmax), and mark background where a pixel's best
score is under min(threshold, best group-class score). Unlike the reference, crops run in batches and the
image encoder runs once per crop (the reference runs it twice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .image import ImageInput, load_image, rescale_size, to_tensor
from .model import GroupViT
from .templates import get_templates
from .tokenizer import tokenize

MAX_CLASSES = 1000
# Background thresholds of the released evaluation configs (spec 5.3).
BACKGROUND_THRESHOLDS = {"voc": 0.95, "context": 0.35, "coco_object": 0.95}


def check_class_names(class_names: Sequence[str], unique: bool = True) -> list[str]:
    """Strip names and reject empty lists, blank names, over MAX_CLASSES names and (with `unique`) duplicates.

    Classification allows duplicates: CLIP's ImageNet names repeat 'missile' and 'sunglasses'."""
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    names = [str(n).strip() for n in class_names]
    if not names:
        raise ValueError("no class names given; pass e.g. 'dog,grass,sky'")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{len(names)} class names given; at most {MAX_CLASSES} are supported")
    if any(not n for n in names):
        raise ValueError(f"empty class name in {list(class_names)!r}; remove stray commas")
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
    ids = tokenize(prompts).to(device)
    embeds = torch.cat([model.encode_text(chunk).float() for chunk in ids.split(batch_size)])
    return F.normalize(embeds.view(len(class_names), len(templates), -1).mean(dim=1), dim=-1)


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


def group_class_affinity(
    group_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor,
    top_k: int = 5,
) -> torch.Tensor:
    """Spec 5.3 steps 5-6. group_embeds [B, G, D], image_embeds [B, D] (projected), text_embeds [C, D]
    (normalised) -> [B, G, C] = softmax over the image's top-k classes * softmax over all classes."""
    groups = F.normalize(group_embeds, dim=-1)
    image = F.normalize(image_embeds, dim=-1)
    logits = scale * groups @ text_embeds.t()  # [B, G, C]
    full = logits.softmax(dim=-1)
    image_logits = scale * image @ text_embeds.t()  # [B, C]
    keep = image_logits.topk(min(top_k, text_embeds.shape[0]), dim=-1).indices  # [B, k]
    mask = torch.full_like(image_logits, float("-inf")).scatter_(1, keep, 0.0)  # [B, C]
    return (logits + mask[:, None, :]).softmax(dim=-1) * full


def background_channel(foreground: torch.Tensor, affinity: torch.Tensor, threshold: float) -> torch.Tensor:
    """Spec 5.3 step 8: 1 where a pixel's best class score is under min(threshold, max affinity), else 0.

    foreground [B, C, H, W], affinity [B, G, C] -> [B, 1, H, W]. The min() keeps the best group foreground.
    """
    t = affinity.flatten(1).amax(dim=1).clamp(max=threshold).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    return (foreground.amax(dim=1, keepdim=True) < t).to(foreground.dtype)


@torch.no_grad()
def segment_crops(
    model: GroupViT,
    pixels: torch.Tensor,
    text_embeds: torch.Tensor,
    background_threshold: float | None,
    group_maps: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A batch of same-size crops [B, 3, H, W] -> (logits [B, 1 + C, H, W] or [B, C, H, W] without background,
    per-stage pixel->group index maps [B, H, W]; empty with `group_maps=False`, which only upsamples the final
    stage: the labels need no other, and upsampling the 64 first-stage maps costs more than the rest together).

    Pixels past the last whole patch are ignored by the encoder (as the reference's strided conv ignores
    them) but still receive logits from the upsampled maps.
    """
    H, W = pixels.shape[2:]
    p = model.config.vision.patch_size
    if H < p or W < p:
        raise ValueError(f"crop {H}x{W} is smaller than one {p}x{p} patch")
    out = model.encode_image_groups(pixels[:, :, : H // p * p, : W // p * p])
    chained = chain_assignments(out.assignments)
    if not chained:  # a plain ViT (no grouping stage, e.g. the SynthVOC baseline): each patch is its own group
        B, N = out.group_embeds.shape[:2]
        chained = [torch.eye(N, device=pixels.device).expand(B, N, N)]
    stages = chained if group_maps else chained[-1:]
    group_index = [upsample_groups(m.float(), (H, W)).argmax(dim=1) for m in stages]  # [B, H, W] per stage
    affinity = group_class_affinity(
        out.group_embeds.float(), out.image_embeds.float(), text_embeds.float(), model.logit_scale_value().float()
    )  # [B, G, C]
    final = group_index[-1]  # [B, H, W]
    # Each pixel copies the affinity row of its group: O . A with O one-hot, done as a gather.
    foreground = torch.gather(
        affinity.transpose(1, 2), 2, final.flatten(1)[:, None, :].expand(-1, affinity.shape[2], -1)
    ).view(final.shape[0], -1, H, W)  # [B, C, H, W]
    group_index = group_index if group_maps else []
    if background_threshold is None:
        return foreground, group_index
    return torch.cat([background_channel(foreground, affinity, background_threshold), foreground], 1), group_index


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

    def fractions(self) -> dict[str, float]:
        """Pixel fraction of every class present (and 'background')."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.class_names) + 1) / self.labels.size
        names = ["background", *self.class_names]
        return {names[i]: float(f) for i, f in enumerate(counts) if f > 0}


class ZeroShotSegmenter:
    """Segment images into the given class names with a GroupViT (spec section 5).

    background_threshold: None for vocabularies that cover everything (labels are then 1..C only).
    mode: 'slide' (448 crops, stride 224: the official protocol) or 'whole'.
    templates: a set name ('simple' = "a photo of a {}.", 'subset', 'full') or a list of templates.
    refine: None (official) or 'pamr' (pixel-adaptive mask refinement, a protocol variant).
    autocast_dtype: None (fp32), torch.bfloat16 (GPU, or CPUs with AVX512-BF16/AMX) or torch.float16 (GPU).
    group_maps: also return per-stage group maps; in slide mode they cost one extra whole-image pass.
    """

    def __init__(
        self,
        model: GroupViT,
        class_names: Sequence[str],
        background_threshold: float | None = 0.95,
        mode: str = "slide",
        templates: str | Sequence[str] = "simple",
        short_side: int = 448,
        long_side: int = 2048,
        crop_size: int = 448,
        stride: int = 224,
        batch_size: int = 8,
        refine: str | None = None,
        autocast_dtype: torch.dtype | None = None,
        group_maps: bool = True,
    ) -> None:
        if mode not in ("slide", "whole"):
            raise ValueError(f"mode must be 'slide' or 'whole', got {mode!r}")
        if refine not in (None, "pamr"):
            raise ValueError(f"refine must be None or 'pamr', got {refine!r}")
        if background_threshold is not None and not 0.0 <= background_threshold <= 1.0:
            raise ValueError(f"background_threshold must be in [0, 1] or None, got {background_threshold}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.background_threshold = background_threshold
        self.mode, self.refine = mode, refine
        self.short_side, self.long_side, self.crop_size, self.stride = short_side, long_side, crop_size, stride
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.return_group_maps = group_maps
        self.templates = get_templates(templates)
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self.set_classes(class_names)

    def set_classes(self, class_names: Sequence[str]) -> None:
        """Switch vocabulary; text embeddings are computed once per vocabulary and cached."""
        names = tuple(check_class_names(class_names))
        if names not in self._text_cache:
            self._text_cache[names] = class_text_embeddings(self.model, names, self.templates)
        self.class_names = list(names)
        self.text_embeds = self._text_cache[names]

    def _autocast(self):
        # bf16 on CPU is only fast with AVX512-BF16 or AMX (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`).
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Normalised, already-resized pixels [1, 3, H, W] -> (logits [K, H, W], group maps [H, W] per stage)."""
        pixels = pixels.to(self.device)
        H, W = pixels.shape[2:]
        with self._autocast():
            if self.mode == "whole":
                logits, group_maps = segment_crops(self.model, pixels, self.text_embeds, self.background_threshold)
                return logits[0], [g[0] for g in group_maps]
            group_maps = []
            if self.return_group_maps:  # one whole-image pass, only for the pictures
                group_maps = [g[0] for g in segment_crops(self.model, pixels, self.text_embeds, None)[1]]
            windows = slide_windows(H, W, self.crop_size, self.stride)
            total = count = None
            for start in range(0, len(windows), self.batch_size):
                batch = windows[start : start + self.batch_size]
                crops = torch.cat([pixels[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in batch])
                crop_logits, _ = segment_crops(
                    self.model, crops, self.text_embeds, self.background_threshold, group_maps=False
                )
                if total is None:
                    total = crop_logits.new_zeros(crop_logits.shape[1], H, W)  # [K, H, W]
                    count = crop_logits.new_zeros(1, H, W)
                for (y1, y2, x1, x2), logit in zip(batch, crop_logits, strict=True):
                    total[:, y1:y2, x1:x2] += logit
                    count[:, y1:y2, x1:x2] += 1
        return total / count, group_maps

    def __call__(self, image: ImageInput) -> SegmentationResult:
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        pixels = to_tensor(rgb, rescale_size(height, width, self.short_side, self.long_side))
        logits, group_maps = self.logits(pixels)
        if self.refine == "pamr":
            from .pamr import pamr

            logits = pamr(pixels.to(logits.device), logits[None])[0]
        logits = F.interpolate(logits[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]
        if self.background_threshold is None:
            labels = logits.argmax(dim=0) + 1
            scores = torch.cat([logits.new_zeros(1, height, width), logits])
        else:
            labels, scores = logits.argmax(dim=0), logits
        group_maps = [
            F.interpolate(g[None, None].float(), size=(height, width), mode="nearest")[0, 0].long() for g in group_maps
        ]
        return SegmentationResult(
            labels=labels.cpu().numpy().astype(np.int64),
            scores=scores.cpu().numpy(),
            group_maps=[g.cpu().numpy() for g in group_maps],
            class_names=self.class_names,
        )
