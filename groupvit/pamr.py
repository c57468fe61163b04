"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), the optional refinement TCL uses.

Each iteration replaces every pixel's class scores with an average of its neighbours' scores at several
dilations, weighted by how alike their colours are (a softmax over neighbours of -|colour difference|
divided by 0.1 x the local colour standard deviation). Not part of the GroupViT protocol.

The weights depend on the image only and the refinement is linear, channel by channel: `pamr_weights` once per
image, then `refine` on any channels (groupvit.segmentation refines the class channels once per image and only the
background channel per threshold).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DILATIONS = (1, 2, 4, 8, 12, 24)
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _shifts(x: torch.Tensor, dilations: tuple[int, ...]):
    """Yield x [B, C, H, W] shifted to each of the 8 neighbours at each dilation (borders replicated)."""
    H, W = x.shape[2:]
    for d in dilations:
        padded = F.pad(x, (d, d, d, d), mode="replicate")
        for dy, dx in OFFSETS:
            yield padded[:, :, d + dy * d : d + dy * d + H, d + dx * d : d + dx * d + W]


@torch.no_grad()
def pamr_weights(image: torch.Tensor, dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """image [B, 3, H, W] -> each pixel's weights over its P = 8 x len(dilations) neighbours [B, P, H, W]."""
    image = image.float()
    neighbours = list(_shifts(image, dilations))  # P x [B, 3, H, W]
    with_centre = torch.stack([image, *neighbours], dim=2)  # [B, 3, P + 1, H, W]
    std = with_centre.std(dim=2)  # [B, 3, H, W]
    del with_centre
    return torch.stack([(-(n - image).abs() / (1e-8 + 0.1 * std)).mean(dim=1) for n in neighbours], dim=1).softmax(
        dim=1
    )  # [B, P, H, W]


@torch.no_grad()
def refine(
    weights: torch.Tensor, masks: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = DILATIONS
) -> torch.Tensor:
    """weights [B, P, H, W] (`pamr_weights`), masks [B, K, H, W] -> refined masks [B, K, H, W]."""
    masks = masks.float()
    for _ in range(iterations):
        refined = torch.zeros_like(masks)
        for p, shifted in enumerate(_shifts(masks, dilations)):
            refined.addcmul_(shifted, weights[:, p : p + 1])
        masks = refined
    return masks


def pamr(
    image: torch.Tensor, masks: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = DILATIONS
) -> torch.Tensor:
    """image [B, 3, H, W], masks [B, K, H, W] (same size) -> refined masks [B, K, H, W]."""
    return refine(pamr_weights(image, dilations), masks, iterations, dilations)
