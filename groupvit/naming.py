"""How a group becomes a class or background: the official rule (spec 5.3) and the protocol variants.

The official protocol scores each final group against the image's top-5 classes and calls a pixel background
when its best score is under min(threshold, the crop's best group score). The variants answer the weaknesses the
paper admits, each an option of `Naming` (the default `Naming()` is the official protocol):

- background words (`background_words`): stuff words scored together with the classes; a pixel whose group is won
  by one of them is background (SCLIP, NACLIP, CaR). Combinable with the threshold.
- an area filter (`min_area`): a class covering at most this share of the predicted foreground becomes
  background (SCLIP's `area_thd`).
- per-class thresholds (`class_thresholds`): one threshold per class instead of one for all, chosen on a
  calibration split by coordinate ascent (`coordinate_ascent`).
- hierarchical naming (`hierarchical`): a final group whose members (the previous stage's groups) confidently
  name different classes is split into its members, so an image can hold more classes than final groups.
- image-level gating (`top_k`, `gate`): how many of the image's classes, ranked by the pooled embedding, groups
  may take (the reference keeps 5), and a minimum pooled probability for a class to be kept.
- refinement (`refine`): 'pamr' smooths the per-pixel class scores along the image's colours before the argmax
  (groupvit.pamr, TCL's variant), so masks follow object edges instead of the patch grid.

Every caller (ZeroShotSegmenter, so `groupvit segment`, `groupvit eval`, the app and the demo) goes through these
functions; results of any non-default option are labelled `"protocol": "variant"`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checks import input_file
from .config import MAX_CONFIG_BYTES, read_json

# Stuff words scored as background, as the methods publish them.
# SCLIP (wangf3014/SCLIP, configs/cls_voc21.txt and cls_coco_object.txt: the first line, the background class)
# and NACLIP (sinahmr/NACLIP, the same files) use these 26 for VOC and COCO-Object alike.
SCLIP_WORDS: tuple[str, ...] = (
    "sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed", "building",
    "cloud", "lamp", "door", "window", "wardrobe", "ceiling", "shelf", "curtain", "stair", "floor", "hill", "rail",
    "fence",
)  # fmt: skip
# CaR (google-research/google-research, clip_as_rnn/configs/voc.yaml and coco.yaml: `bg_cls`), 23 words.
CAR_WORDS: tuple[str, ...] = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley", "bridge",
)  # fmt: skip
WORD_LISTS: dict[str, tuple[str, ...]] = {"voc": SCLIP_WORDS, "car": CAR_WORDS, "none": ()}
REFINEMENTS = (None, "pamr")  # Naming.refine: none (the protocol) or PAMR


@dataclass
class Naming:
    """Protocol options for naming groups; the defaults are the official protocol (spec 5.3).

    background_words: stuff words scored with the classes; a pixel won by one is background.
    class_thresholds: {class name: threshold}, used instead of the single background threshold.
    min_area: a class covering at most this share of an image's predicted foreground becomes background (0: off).
    top_k: groups may only take the image's k best classes by pooled score (None: every class).
    gate: ... and only classes whose pooled probability (softmax over the classes) is at least this; the image's
        best class is always kept (None: off).
    hierarchical: split a final group whose members name different classes, each with a score of at least this
        (None: off).
    refine: 'pamr' to refine the pixels' class scores along the image's colours (groupvit.pamr; None: off).
    """

    background_words: tuple[str, ...] = ()
    class_thresholds: dict[str, float] | None = None
    min_area: float = 0.0
    top_k: int | None = 5
    gate: float | None = None
    hierarchical: float | None = None
    refine: str | None = None

    def __post_init__(self) -> None:
        self.background_words = tuple(self.background_words)
        if self.refine not in REFINEMENTS:
            raise ValueError(f"refine must be one of {', '.join(map(str, REFINEMENTS))}, got {self.refine!r}")
        if not 0.0 <= self.min_area < 1.0:
            raise ValueError(f"min_area must be in [0, 1), got {self.min_area}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1 (or None for every class), got {self.top_k}")
        for name, value in (("gate", self.gate), ("hierarchical", self.hierarchical)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] or None, got {value}")
        for name, value in (self.class_thresholds or {}).items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"the threshold of {name!r} must be in [0, 1], got {value}")

    @property
    def official(self) -> bool:
        return self == Naming()

    def makes_background(self) -> bool:
        """Whether these options give a background class even without a background threshold."""
        return bool(self.background_words or self.class_thresholds or self.min_area)

    def to_dict(self) -> dict:
        return {"background_words": list(self.background_words), "class_thresholds": self.class_thresholds,
                "min_area": self.min_area, "top_k": self.top_k, "gate": self.gate,
                "hierarchical": self.hierarchical, "refine": self.refine}  # fmt: skip


# ------------------------------------------------------------------------------------------------ option parsing


def background_words(spec: str | Sequence[str] | None, files: bool = True) -> tuple[str, ...]:
    """'voc' (SCLIP/NACLIP's 26 words), 'car' (CaR's 23), 'none' or None, a file of words (with `files`; one a
    line or comma-separated), or comma-separated words."""
    if spec is None:
        return ()
    if not isinstance(spec, str):
        return tuple(w.strip() for w in spec if w.strip())
    key = spec.strip()
    if key.lower() in WORD_LISTS:
        return WORD_LISTS[key.lower()]
    if files and os.path.lexists(key):  # blank lines and entries are skipped
        text = input_file(key, "background words file", MAX_CONFIG_BYTES).read_text()
        return tuple(w.strip() for line in text.splitlines() for w in line.split(",") if w.strip())
    words = tuple(w.strip() for w in key.split(","))
    if any(not w for w in words):
        raise ValueError(f"empty background word in {spec!r}; remove stray commas")
    return words


def load_class_thresholds(path: str | Path) -> dict[str, float]:
    """Per-class thresholds from a JSON file: a {class: threshold} mapping, or the results of `groupvit eval`
    (their `naming.class_thresholds`)."""
    data = read_json(path, "thresholds file")
    if isinstance(data, dict) and isinstance(data.get("naming"), dict):
        data = data["naming"].get("class_thresholds")
    if not isinstance(data, dict) or not data or not all(isinstance(v, int | float) for v in data.values()):
        raise ValueError(f"{path}: expected {{class: threshold}} or the JSON of `groupvit eval --calibrate-background "
                         "N --per-class-thresholds`")  # fmt: skip
    return {str(k): float(v) for k, v in data.items()}


def naming_from_options(
    background_words_spec: str | None = None,
    thresholds_file: str | Path | None = None,
    min_area: float = 0.0,
    top_k: int | None = 5,
    gate: float | None = None,
    hierarchical: float | None = None,
    refine: str | None = None,
) -> Naming:
    """A `Naming` from the naming options of `groupvit segment` and `eval` (--background-words, read as
    `background_words` reads them; --background-thresholds, a file `load_class_thresholds` reads; ...)."""
    thresholds = load_class_thresholds(thresholds_file) if thresholds_file else None
    return Naming(background_words=background_words(background_words_spec), class_thresholds=thresholds,
                  min_area=min_area, top_k=top_k, gate=gate, hierarchical=hierarchical, refine=refine)  # fmt: skip


def threshold_vector(class_thresholds: Mapping[str, float], class_names: Sequence[str]) -> torch.Tensor:
    """[C] thresholds in class order; every class needs one."""
    missing = [n for n in class_names if n not in class_thresholds]
    if missing:
        raise ValueError(f"no background threshold for {', '.join(missing)}; the thresholds cover "
                         f"{', '.join(class_thresholds)}")  # fmt: skip
    return torch.tensor([class_thresholds[n] for n in class_names])


# ------------------------------------------------------------------------------------------------ scoring groups


def class_mask(image_logits: torch.Tensor, num_classes: int, top_k: int | None = 5, gate: float | None = None):
    """[B, K] image logits over K = C classes then K - C background words -> additive mask [B, K]: 0 for the
    image's top-k classes (pooled probability at least `gate`, the best class always), -inf for the rest; words
    are always kept."""
    classes = image_logits[:, :num_classes]  # [B, C]
    keep = classes.topk(num_classes if top_k is None else min(top_k, num_classes), dim=-1).indices  # [B, k]
    mask = torch.full_like(image_logits, float("-inf")).scatter_(1, keep, 0.0)  # [B, K]
    if gate is not None:
        prob = classes.softmax(dim=-1)  # [B, C]
        weak = (prob < gate) & (prob < prob.amax(dim=-1, keepdim=True))
        mask[:, :num_classes] = mask[:, :num_classes].masked_fill(weak, float("-inf"))
    mask[:, num_classes:] = 0.0
    return mask


def group_class_affinity(
    group_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor,
    top_k: int | None = 5,
    num_classes: int | None = None,
    gate: float | None = None,
) -> torch.Tensor:
    """Spec 5.3 steps 5-6. group_embeds [B, G, D], image_embeds [B, D] (projected), text_embeds [K, D]
    (normalised; the first `num_classes` are classes, the rest background words) -> [B, G, K] = softmax over the
    image's kept classes (see `class_mask`) and the words * softmax over all."""
    groups = F.normalize(group_embeds, dim=-1)
    image = F.normalize(image_embeds, dim=-1)
    logits = scale * groups @ text_embeds.t()  # [B, G, K]
    full = logits.softmax(dim=-1)
    image_logits = scale * image @ text_embeds.t()  # [B, K]
    mask = class_mask(image_logits, text_embeds.shape[0] if num_classes is None else num_classes, top_k, gate)
    return (logits + mask[:, None, :]).softmax(dim=-1) * full


def split_groups(
    group_rows: torch.Tensor,
    member_rows: torch.Tensor,
    final_index: torch.Tensor,
    member_index: torch.Tensor,
    confidence: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hierarchical naming. group_rows [B, G, K] and member_rows [B, M, K] class scores, pixel -> final group and
    pixel -> member maps [B, H, W] -> (rows [B, G + M, K], pixel -> row [B, H, W]).

    A final group is split when the members among its pixels that are confident (best score >= `confidence`)
    name at least two different classes: its pixels then take their member's row (G + member) instead of the
    group's."""
    G, M = group_rows.shape[1], member_rows.shape[1]
    best_score, best_class = member_rows.max(dim=-1)  # [B, M]
    index = final_index.clone()
    for b in range(final_index.shape[0]):
        pairs = torch.unique(final_index[b].flatten() * M + member_index[b].flatten())  # (group, member) present
        group, member = pairs // M, pairs % M
        sure = best_score[b, member] >= confidence
        named = torch.unique(group[sure] * member_rows.shape[2] + best_class[b, member[sure]])  # (group, class)
        split = torch.bincount(named // member_rows.shape[2], minlength=G) >= 2  # [G]
        inside = split[final_index[b]]  # [H, W]
        index[b][inside] = G + member_index[b][inside]
    return torch.cat([group_rows, member_rows], dim=1), index


def pixel_rows(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """rows [B, R, K], pixel -> row [B, H, W] -> [B, K, H, W]: each pixel copies its row (O . A with O one-hot,
    done as a gather)."""
    B, (H, W) = index.shape[0], index.shape[1:]
    return torch.gather(rows.transpose(1, 2), 2, index.flatten(1)[:, None, :].expand(-1, rows.shape[2], -1)).view(
        B, -1, H, W
    )


def background_channel(
    foreground: torch.Tensor, affinity: torch.Tensor, threshold: float | torch.Tensor
) -> torch.Tensor:
    """Spec 5.3 step 8: 1 where a pixel's best class score is under min(threshold, max affinity), else 0.

    foreground [B, C, H, W], affinity [B, G, C] -> [B, 1, H, W]. The min() keeps the best group foreground.
    `threshold` is one number (the protocol) or one per class [C] (a variant: the threshold of the pixel's best
    class).
    """
    guard = affinity.flatten(1).amax(dim=1).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    if isinstance(threshold, torch.Tensor):
        best, best_class = foreground.max(dim=1, keepdim=True)  # [B, 1, H, W]
        t = torch.minimum(threshold.to(foreground)[best_class], guard)  # [B, 1, H, W]
    else:
        best, t = foreground.amax(dim=1, keepdim=True), guard.clamp(max=threshold)
    return (best < t).to(foreground.dtype)


def name_pixels(
    group_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    final_index: torch.Tensor,
    text_embeds: torch.Tensor,
    scale: torch.Tensor,
    num_classes: int,
    threshold: float | torch.Tensor | None,
    naming: Naming,
    members: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One batch of crops: group_embeds [B, G, D], image_embeds [B, D], final_index [B, H, W] pixel -> final
    group, text_embeds [K, D] (C classes, then background words) -> logits [B, 1 + C, H, W] (channel 0: the
    background indicator), or [B, C, H, W] when nothing makes background. `threshold`: one number, one per class
    [C], or None; `members`: (member embeds [B, M, D], pixel -> member [B, H, W]) for hierarchical naming."""
    C = num_classes
    affinity = group_class_affinity(group_embeds, image_embeds, text_embeds, scale, naming.top_k, C, naming.gate)
    rows, index = affinity, final_index  # [B, G, K], [B, H, W]
    if naming.hierarchical is not None:
        if members is None:
            raise ValueError("hierarchical naming needs the members of the final groups (encode with members=True)")
        member_rows = group_class_affinity(members[0], image_embeds, text_embeds, scale, naming.top_k, C, naming.gate)
        rows, index = split_groups(affinity, member_rows, final_index, members[1], naming.hierarchical)
    foreground = pixel_rows(rows[..., :C], index)  # [B, C, H, W]
    if threshold is None and not naming.background_words:
        return foreground
    background = (
        torch.zeros_like(foreground[:, :1])
        if threshold is None
        else background_channel(foreground, affinity[..., :C], threshold)
    )  # [B, 1, H, W]
    if naming.background_words:  # a pixel whose row a background word wins
        word_wins = (rows[..., C:].amax(dim=-1) > rows[..., :C].amax(dim=-1)).to(foreground.dtype)  # [B, R]
        background = background.maximum(pixel_rows(word_wins[..., None], index))
    return torch.cat([background, foreground], dim=1)


def area_filter(labels: torch.Tensor, num_classes: int, min_share: float) -> torch.Tensor:
    """labels [H, W] (0 background, 1..C classes) -> the same with every class covering at most `min_share` of the
    foreground pixels turned to background (SCLIP's `area_thd`, which zeroes the class's logits instead)."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes + 1)  # [1 + C]
    small = counts <= min_share * counts[1:].sum()
    small[0] = False
    return labels.masked_fill(small[labels], 0)


# ------------------------------------------------------------------------------------------------ calibration


def coordinate_ascent(
    score: Callable[[list[float]], float], start: Sequence[float], grid: Sequence[float], rounds: int = 2
) -> tuple[list[float], float]:
    """Per-class thresholds by coordinate ascent: from `start`, each class in turn takes the grid value that
    maximises `score(thresholds)` with the others fixed (a tie keeps the current value); at most `rounds`
    sweeps, fewer when one changes nothing. Returns (thresholds, their score).

    mIoU couples the classes through the background IoU, so there is no closed form per class; each step is
    exact on the calibration images."""
    current = list(start)
    best = score(current)
    for _ in range(rounds):
        changed = False
        for c in range(len(current)):
            for t in grid:
                trial = [*current[:c], t, *current[c + 1 :]]
                if t != current[c] and (value := score(trial)) > best:
                    current, best, changed = trial, value, True
        if not changed:
            break
    return current, best
