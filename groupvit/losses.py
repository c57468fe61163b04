"""GroupViT's training losses (spec 3.1, 3.2), gathered across ranks with a differentiable all-gather."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather

from .sample_noise import derive, sample_seeds
from .segmentation import chain_assignments


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] per rank -> [W * B, ...] in rank order; gradients flow back to every rank's slice."""
    _, world = _world()
    if world == 1:
        return x
    if not x.is_floating_point():  # integer labels such as noun keys: no gradient to carry
        out = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(out, x)
        return torch.cat(out, dim=0)
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


def shared_noun_mask(prompt_keys: torch.Tensor, owners: torch.Tensor, caption_keys: torch.Tensor) -> torch.Tensor:
    """[N, P] bool: image n is a positive for prompt p when p is its own or names a noun of n's caption.

    prompt_keys [P] (`training.data.noun_key`, < 0 for a caption used as padding), owners [P] (the row of each
    prompt's image in caption_keys; a row outside [0, N), another rank's image, owns none of these),
    caption_keys [N, M] (each image's caption nouns, padded with negative keys).
    """
    mask = (caption_keys[:, :, None] == prompt_keys[None, None, :]).any(dim=1) & (prompt_keys >= 0)
    here = (owners >= 0) & (owners < mask.shape[0])
    mask[owners[here], torch.arange(prompt_keys.shape[0], device=mask.device)[here]] = True
    return mask


def sigmoid_loss(logits: torch.Tensor, positive: torch.Tensor, norm: float) -> torch.Tensor:
    """SigLIP: every (row, column) pair is a binary problem, +1 where `positive`; summed, divided by `norm`."""
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / norm


def sigmoid_image_text_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP's loss (Zhai et al., 2023): this rank's B images against all W*B captions, positives on the diagonal,
    summed over pairs and divided by B. Not in the paper: a variant for small batches (see docs/synthvoc.md)."""
    rank, _ = _world()
    logits = scale * image @ gather(text).t() + bias  # [B, W*B]
    positive = torch.zeros_like(logits, dtype=torch.bool)
    positive[torch.arange(image.shape[0]), torch.arange(image.shape[0]) + image.shape[0] * rank] = True
    return sigmoid_loss(logits, positive, image.shape[0])


def caption_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The image-text loss of `groupvit_losses`: symmetric InfoNCE, or SigLIP's sigmoid when given a `bias`."""
    if bias is None:
        return image_text_contrastive_loss(image, text, scale)
    return sigmoid_image_text_loss(image, text, scale, bias)


def multi_label_contrastive_loss(
    image: torch.Tensor,
    prompts: torch.Tensor,
    scale: torch.Tensor,
    keys: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image vs. its K noun prompts. image: normalised [B, D] (the paper), or [B, G, D] segment/patch tokens
    where an image's score for a prompt is its best token's (`noun_loss: max_token`, not in the paper);
    prompts: normalised [B, K, D].

    Without `keys` (the paper): image -> all W*B*K prompts with target 1/K on its own K; prompt -> all W*B images,
    one-hot at its owner. With noun `keys` [B, K + M] (`training.data.CaptionTexts`): every image whose caption has
    a prompt's noun is a positive for it too, targets spread evenly over the positives (UniCL-style; a variant).
    With `bias` the loss is SigLIP's sigmoid over every (image, prompt) pair instead, summed and divided by B*K.
    """
    rank, _ = _world()
    B, K, D = prompts.shape
    owner = torch.arange(B, device=image.device) + B * rank  # global index of each local image
    flat = prompts.reshape(B * K, D)
    all_prompts, all_images = gather(flat), gather(image)  # [W*B*K, D], [W*B, D]
    logits_image = scale * similarity(image, all_prompts)  # [B, W*B*K]
    if keys is None:
        positive = torch.zeros_like(logits_image, dtype=torch.bool)  # [B, W*B*K]
        rows, own = torch.arange(B, device=image.device), torch.arange(K, device=image.device)
        positive[rows[:, None], owner[:, None] * K + own] = True
    else:
        all_keys = gather(keys)  # [W*B, K + M]
        prompt_keys = all_keys[:, :K].reshape(-1)  # [W*B*K]
        owners = torch.arange(all_keys.shape[0], device=keys.device).repeat_interleave(K) - B * rank  # local rows
        positive = shared_noun_mask(prompt_keys, owners, keys[:, K:])  # [B, W*B*K]
    if bias is not None:
        return sigmoid_loss(logits_image + bias, positive, B * K)
    target_image = positive.to(logits_image.dtype)
    target_image = target_image / target_image.sum(dim=1, keepdim=True)
    logits_prompt = scale * similarity(all_images, flat).t()  # [B*K, W*B]
    if keys is None:
        positive_prompt = F.one_hot(owner.repeat_interleave(K), all_images.shape[0]).bool()
    else:
        mine = keys[:, :K].reshape(-1)  # [B*K]
        positive_prompt = shared_noun_mask(mine, owner.repeat_interleave(K), all_keys[:, K:]).t()  # [B*K, W*B]
    target_prompt = positive_prompt.to(logits_prompt.dtype)
    target_prompt = target_prompt / target_prompt.sum(dim=1, keepdim=True)
    return 0.5 * (soft_cross_entropy(logits_image, target_image) + soft_cross_entropy(logits_prompt, target_prompt))


def mosaic(images: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """[B, 3, H, W] -> [B // grid**2, 3, H, W]: each run of grid**2 consecutive images shrunk by `grid` and tiled
    row-major (for grid 2: image 4m top-left, 4m + 1 top-right, 4m + 2 bottom-left, 4m + 3 bottom-right).
    Images past the last whole run are left out."""
    B, C, H, W = images.shape
    n = grid * grid
    if B < n or H % grid or W % grid:
        raise ValueError(f"a {grid}x{grid} mosaic needs at least {n} images with sides divisible by {grid}, "
                         f"got {B} of {H}x{W}")  # fmt: skip
    M, h, w = B // n, H // grid, W // grid
    small = F.interpolate(images[: M * n], size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    # [M, row, col, C, h, w] -> [M, C, row, h, col, w]: each tile's pixel rows follow its row of tiles
    return small.view(M, grid, grid, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(M, C, H, W)


def mosaic_features(model: torch.nn.Module, mosaics: torch.Tensor, grid: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The image encoder's part of `mosaic_region_embeddings`: the final tokens [M, G, C] of `mosaics` [M, 3, H, W]
    and each token's weight in each tile [M, G, T] (a tile's mean over its patches of each patch's distribution over
    the final groups; a plain ViT: its tokens are the patches, each weighing 1 / patches in its own tile)."""
    M, _, H, W = mosaics.shape
    p = model.config.vision.patch_size
    h, w = H // p, W // p
    if h % grid or w % grid:
        raise ValueError(f"a {grid}x{grid} mosaic needs a patch grid divisible by {grid}; {H}x{W} images with "
                         f"{p}-pixel patches make {h}x{w}")  # fmt: skip
    tokens, assignments = model.visual(mosaics)  # [M, G, C], per stage [M, S_out, N_in]
    rows = torch.arange(h, device=mosaics.device) // (h // grid)
    cols = torch.arange(w, device=mosaics.device) // (w // grid)
    tile = (rows[:, None] * grid + cols[None, :]).reshape(-1)  # [N] each patch's tile, row-major like the patches
    share = F.one_hot(tile, grid * grid).to(tokens.dtype) / (h * w // grid**2)  # [N, T], a tile's mean
    if assignments:  # patch -> final group distributions, averaged per tile
        return tokens, chain_assignments(assignments)[-1].to(tokens.dtype).transpose(1, 2) @ share  # [M, G, T]
    return tokens, share.expand(M, -1, -1)  # [M, N, T]


def region_embeddings(model: torch.nn.Module, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The head's part of `mosaic_region_embeddings`: tokens [M, G, C] and weights [M, G, T] -> normalised
    embeddings [M * T, D] of the tiles: the tile's weights over the normalised group embeddings."""
    groups = F.normalize(model.visual_projection(tokens), dim=-1)  # [M, G, D]
    regions = torch.einsum("mgt,mgd->mtd", weights.to(groups.dtype), groups)  # [M, T, D]
    return F.normalize(regions.reshape(-1, regions.shape[-1]), dim=-1)


def mosaic_region_embeddings(model: torch.nn.Module, mosaics: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Normalised embeddings [M * grid**2, D] of the tiles of `mosaics` [M, 3, H, W] (from `mosaic`), row i
    belonging to the mosaic's i-th source image: the mean over a tile's patches of each patch's distribution over
    the final groups weighs the normalised group embeddings (a plain ViT: the tile's normalised patch embeddings,
    equally)."""
    return region_embeddings(model, *mosaic_features(model, mosaics, grid))


MOSAIC_GRID = 2  # the mosaic loss's tiles per side
NOUN_LOSSES = ("pooled", "max_token")
LOSSES = ("softmax", "sigmoid")
NOUN_POSITIVES = ("own", "shared")


class EncoderFeatures(NamedTuple):
    """What the heads and losses need from the encoders for a batch (`encode_features`), before any head."""

    tokens: torch.Tensor  # [B, G, C] the image encoder's final tokens
    text: torch.Tensor  # [B * (1 + K), C_text] the text encoder's pooled features, image-major
    patches: torch.Tensor | None  # [B, N, C] patch tokens entering the first grouping block (deep noun loss)
    mosaic_tokens: torch.Tensor | None  # [M, G, C] final tokens of the batch's 2x2 mosaics (mosaic loss)
    mosaic_weights: torch.Tensor | None  # [M, G, T] each token's weight in each tile
    mosaic_rows: torch.Tensor | None  # [M * T] the batch row of each tile's source image


def encode_features(
    model: torch.nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    patches: bool = False,
    mosaics: bool = False,
    seeds: torch.Tensor | None = None,
) -> EncoderFeatures:
    """The encoder half of `groupvit_losses`: images [B, 3, H, W], texts [B, 1 + K, L] -> `EncoderFeatures`, with the
    patch tokens when `patches` and the mosaics' tokens when `mosaics` (and B >= 4). `seeds` [B]: draw each image's
    noise from its seed (its texts' and its mosaic's from seeds derived from it; `groupvit.sample_noise`)."""
    B, T, L = texts.shape
    with sample_seeds(seeds):
        tokens, _, *patch_tokens = model.visual(images, return_patch_tokens=patches)  # [B, G, C], _, [B, N, C]
    text_seeds = None if seeds is None else torch.stack([derive(seeds, 1 + t) for t in range(T)], dim=1).view(-1)
    with sample_seeds(text_seeds):
        text = model.text(texts.reshape(B * T, L))  # [B * T, C_text]
    m_tokens = m_weights = m_rows = None
    if mosaics and B >= MOSAIC_GRID**2:
        tiles = MOSAIC_GRID**2
        tiled = mosaic(images, MOSAIC_GRID)  # [M, 3, H, W] from images 0 .. M * tiles - 1
        with sample_seeds(None if seeds is None else derive(seeds[: tiled.shape[0] * tiles : tiles], -1)):
            m_tokens, m_weights = mosaic_features(model, tiled, MOSAIC_GRID)
        m_rows = torch.arange(tiled.shape[0] * tiles, device=images.device)
    return EncoderFeatures(tokens, text, patch_tokens[0] if patches else None, m_tokens, m_weights, m_rows)


def concat_features(parts: list[EncoderFeatures]) -> EncoderFeatures:
    """The features of several batches as those of one batch, the batches' rows in order."""
    starts = [0]
    for part in parts[:-1]:
        starts.append(starts[-1] + part.tokens.shape[0])
    joined = [None if ts[0] is None else torch.cat(ts) for ts in zip(*parts, strict=True)]
    if parts[0].mosaic_rows is not None:  # row numbers move with their batch
        joined[-1] = torch.cat([part.mosaic_rows + start for part, start in zip(parts, starts, strict=True)])
    return EncoderFeatures(*joined)


def losses_from_features(
    model: torch.nn.Module,
    features: EncoderFeatures,
    noun_loss: str = "pooled",
    keys: torch.Tensor | None = None,
    loss: str = "softmax",
    deep_noun_weight: float = 0.0,
    mosaic_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head half of `groupvit_losses`: projection heads and losses on a batch's `EncoderFeatures`."""
    if noun_loss not in NOUN_LOSSES:
        raise ValueError(f"noun_loss must be one of {NOUN_LOSSES}, got {noun_loss!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if loss == "sigmoid" and model.logit_bias is None:
        raise ValueError("loss: sigmoid needs learnable biases; set logit_bias: true in the model config")
    if deep_noun_weight and model.patch_projection is None:
        raise ValueError("a deep noun loss needs the patch head; set patch_head: true in the model config")
    if deep_noun_weight and features.patches is None:
        raise ValueError("a deep noun loss needs the patch tokens; encode the batch with patches=True")
    tokens = features.tokens
    B = tokens.shape[0]
    T = features.text.shape[0] // B
    image = F.normalize(model.visual_projection(tokens.mean(dim=1)), dim=-1)  # [B, D]
    text = F.normalize(model.text_projection(features.text), dim=-1).view(B, T, -1)  # [B, 1+K, D]
    scale, bias = model.logit_scale_value(), model.logit_bias if loss == "sigmoid" else None
    itc = caption_loss(image, text[:, 0], scale, bias)
    use_mosaic = mosaic_weight > 0 and features.mosaic_tokens is not None
    if use_mosaic:
        regions = region_embeddings(model, features.mosaic_tokens, features.mosaic_weights)  # [R, D]
        rows = features.mosaic_rows  # [R] each tile's source image
        itc = itc + mosaic_weight * caption_loss(regions, text[rows, 0], scale, bias)
    if T == 1:
        return itc, None
    if model.multi_label_logit_scale is None:
        raise ValueError("texts carry noun prompts but the model has no multi-label temperature; set "
                         "multi_label_logit_scale: true in the model config")  # fmt: skip
    ml_scale = model.multi_label_logit_scale.exp().clamp(max=100.0)
    ml_bias = model.multi_label_logit_bias if loss == "sigmoid" else None
    if noun_loss == "max_token":
        image = F.normalize(model.visual_projection(tokens), dim=-1)  # [B, G, D]
    ml = multi_label_contrastive_loss(image, text[:, 1:], ml_scale, keys, ml_bias)
    if deep_noun_weight:
        patch_embeds = F.normalize(model.patch_projection(features.patches), dim=-1)  # [B, N, D]
        ml = ml + deep_noun_weight * multi_label_contrastive_loss(patch_embeds, text[:, 1:], ml_scale, keys, ml_bias)
    if use_mosaic:
        tile_keys = keys[rows] if keys is not None else None
        ml = ml + mosaic_weight * multi_label_contrastive_loss(regions, text[rows, 1:], ml_scale, tile_keys, ml_bias)
    return itc, ml


def groupvit_losses(
    model: torch.nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    noun_loss: str = "pooled",
    keys: torch.Tensor | None = None,
    loss: str = "softmax",
    deep_noun_weight: float = 0.0,
    mosaic_weight: float = 0.0,
    seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images [B, 3, H, W]; texts [B, 1 + K, L] token ids: caption first, then K noun prompts.

    All 1 + K texts of a batch go through the text encoder and its BatchNorm head together, as in the
    reference. noun_loss: 'pooled' scores noun prompts against the pooled image embedding (the paper);
    'max_token' against each image's best final token (segment, or patch for a plain ViT), a variant.
    Variants, not in the paper: `keys` [B, K + M] noun keys make images that share a prompt's noun positives for
    it; loss='sigmoid' uses SigLIP's pairwise sigmoid for both terms (the model needs `logit_bias`);
    `deep_noun_weight` > 0 adds that much of a token-level noun loss on the patch tokens entering the first
    grouping block, through the model's `patch_projection` head, to train the backbone's recognition directly;
    `mosaic_weight` > 0 adds that much of both losses on the tiles of 2x2 mosaics of the batch, each tile's
    assignment-weighted group embeddings against its source image's caption and noun prompts (MixReorg-style,
    simplified: quadrant mosaics, not MixReorg's patch mixing; needs B >= 4, the last B % 4 images sit it out).
    `seeds` [B]: each sample's noise from its seed (`encode_features`). The loss is `losses_from_features` of
    `encode_features`, the two halves that gradient-cached accumulation (`training.loop.train_step`) runs apart.
    Returns (image-text loss, multi-label loss or None when K = 0).
    """
    features = encode_features(model, images, texts, bool(deep_noun_weight), mosaic_weight > 0, seeds)
    return losses_from_features(model, features, noun_loss, keys, loss, deep_noun_weight, mosaic_weight)
