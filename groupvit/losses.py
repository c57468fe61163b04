"""GroupViT's training losses (spec 3.1, 3.2), gathered across ranks with a differentiable all-gather."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] per rank -> [W * B, ...] in rank order; gradients flow back to every rank's slice."""
    _, world = _world()
    if world == 1:
        return x
    return torch.cat(all_gather(x), dim=0)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of sum(-target * log_softmax(logits)) (timm's SoftTargetCrossEntropy)."""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def image_text_contrastive_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE. image, text: L2-normalised [B, D] of this rank; scale: exp(logit_scale) clamped.

    Each rank scores its own B images against all W*B texts (and vice versa); positives sit at B*rank + i.
    """
    rank, _ = _world()
    labels = torch.arange(image.shape[0], device=image.device) + image.shape[0] * rank
    logits_image = scale * image @ gather(text).t()  # [B, W*B]
    logits_text = scale * text @ gather(image).t()  # [B, W*B]
    return 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))


def similarity(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """images [N, D], or per-token [N, G, D] scored by each text's best-matching token; texts [M, D] -> [N, M]."""
    if images.ndim == 2:
        return images @ texts.t()
    return torch.einsum("ngd,md->nmg", images, texts).amax(dim=-1)


def multi_label_contrastive_loss(image: torch.Tensor, prompts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Image vs. its K noun prompts. image: normalised [B, D] (the paper), or [B, G, D] segment/patch tokens
    where an image's score for a prompt is its best token's (`noun_loss: max_token`, not in the paper);
    prompts: normalised [B, K, D].

    Image -> all W*B*K prompts with target 1/K on its own K; prompt -> all W*B images, one-hot at its owner.
    """
    rank, _ = _world()
    B, K, D = prompts.shape
    owner = torch.arange(B, device=image.device) + B * rank  # global index of each local image
    flat = prompts.reshape(B * K, D)
    all_prompts, all_images = gather(flat), gather(image)  # [W*B*K, D], [W*B, D]
    logits_image = scale * similarity(image, all_prompts)  # [B, W*B*K]
    target_image = torch.zeros_like(logits_image)
    columns = owner[:, None] * K + torch.arange(K, device=image.device)  # [B, K]
    target_image.scatter_(1, columns, 1.0 / K)
    logits_prompt = scale * similarity(all_images, flat).t()  # [B*K, W*B]
    target_prompt = F.one_hot(owner.repeat_interleave(K), all_images.shape[0]).to(logits_prompt.dtype)
    return 0.5 * (soft_cross_entropy(logits_image, target_image) + soft_cross_entropy(logits_prompt, target_prompt))


NOUN_LOSSES = ("pooled", "max_token")


def groupvit_losses(
    model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, noun_loss: str = "pooled"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images [B, 3, H, W]; texts [B, 1 + K, L] token ids: caption first, then K noun prompts.

    All 1 + K texts of a batch go through the text encoder and its BatchNorm head together, as in the
    reference. noun_loss: 'pooled' scores noun prompts against the pooled image embedding (the paper);
    'max_token' against each image's best final token (segment, or patch for a plain ViT), a variant.
    Returns (image-text loss, multi-label loss or None when K = 0).
    """
    if noun_loss not in NOUN_LOSSES:
        raise ValueError(f"noun_loss must be one of {NOUN_LOSSES}, got {noun_loss!r}")
    B, T, L = texts.shape
    tokens, _ = model.visual(images)  # [B, G, C]
    image = F.normalize(model.visual_projection(tokens.mean(dim=1)), dim=-1)  # [B, D]
    text = F.normalize(model.encode_text(texts.reshape(B * T, L)), dim=-1).view(B, T, -1)  # [B, 1+K, D]
    itc = image_text_contrastive_loss(image, text[:, 0], model.logit_scale_value())
    if T == 1:
        return itc, None
    if model.multi_label_logit_scale is None:
        raise ValueError("texts carry noun prompts but the model has no multi-label temperature; set "
                         "multi_label_logit_scale: true in the model config")  # fmt: skip
    ml_scale = model.multi_label_logit_scale.exp().clamp(max=100.0)
    if noun_loss == "max_token":
        image = F.normalize(model.visual_projection(tokens), dim=-1)  # [B, G, D]
    return itc, multi_label_contrastive_loss(image, text[:, 1:], ml_scale)
