"""The joint GroupViT model: image and text encoders with BatchNorm projection heads (spec 1.9)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import GroupViTConfig
from .layers import Linear
from .sample_noise import assign_noise_keys
from .settings import TestSettings
from .text import TextEncoder
from .vision import VisionEncoder

MAX_LOGIT_SCALE = 100.0


class ProjectionHead(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear. Accepts [B, C] or per-token [B, L, C] features.

    The reference writes this with 1x1 Conv1d; BatchNorm statistics are over batch x tokens either way.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, hidden_dim)
        self.norm = nn.BatchNorm1d(hidden_dim)
        self.act = nn.ReLU()
        self.fc2 = Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self.act(self.norm(self.fc1(x.reshape(-1, shape[-1]))))
        return self.fc2(x).reshape(*shape[:-1], -1)


class ImageGroups(NamedTuple):
    """What segmentation needs from one image-encoder pass (projected, not yet L2-normalised)."""

    image_embeds: torch.Tensor  # [B, D] pooled and projected
    group_embeds: torch.Tensor  # [B, G, D] each final segment token projected
    assignments: list[torch.Tensor]  # per grouping stage, soft map [B, S_out, N_in]


class GroupViT(nn.Module):
    """Image encoder with grouping stages, text encoder and projection heads (spec 1-2).

    `encode_image`/`encode_text` give projected embeddings before L2 normalisation; `encode_image_groups` also
    returns every final group's embedding and the soft assignment maps that segmentation chains; `forward`
    returns normalised embeddings and the clamped logit scale for the contrastive losses. Build one from a
    config (`GroupViT(model_config("gcc_yfcc"))`, random weights) or load weights with `groupvit.load_model`.
    """

    runtime = "pytorch"  # what runs it (an ONNX export loads as groupvit.runtime.OnnxGroupViT: "onnxruntime")

    def __init__(self, config: GroupViTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GroupViTConfig()
        # How to run it at test time (short side, mode, threshold): the protocol's for its training size, or what
        # its file recorded (load_model); save_model writes it back.
        self.test_settings = TestSettings.for_config(config)
        self.visual = VisionEncoder(config.vision)
        self.text = TextEncoder(config.text)
        self.visual_projection = ProjectionHead(
            config.vision.width, config.projection_hidden_dim, config.projection_dim
        )
        self.text_projection = ProjectionHead(config.text.width, config.projection_hidden_dim, config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init))
        self.multi_label_logit_scale = (
            nn.Parameter(torch.tensor(config.logit_scale_init)) if config.multi_label_logit_scale else None
        )
        # SigLIP's bias, by default -10 as open_clip, so that the many negatives start near zero loss.
        bias = config.logit_bias_init
        self.logit_bias = nn.Parameter(torch.tensor(bias)) if config.logit_bias else None
        self.multi_label_logit_bias = (
            nn.Parameter(torch.tensor(bias)) if config.logit_bias and config.multi_label_logit_scale else None
        )
        self.patch_projection = (
            ProjectionHead(config.vision.width, config.projection_hidden_dim, config.projection_dim)
            if config.patch_head
            else None
        )
        assign_noise_keys(self)  # per-sample training noise (groupvit.sample_noise) needs a key per module

    @property
    def embed_dim(self) -> int:
        return self.config.projection_dim

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, H, W] (ImageNet-normalised) -> projected image embeddings [B, D]."""
        tokens, _ = self.visual(pixels)  # [B, G, C]
        return self.visual_projection(tokens.mean(dim=1))

    def encode_image_groups(self, pixels: torch.Tensor) -> ImageGroups:
        """One encoder pass giving the pooled embedding, every group's embedding and the soft maps."""
        tokens, assignments = self.visual(pixels)  # [B, G, C]
        pooled = tokens.mean(dim=1, keepdim=True)  # [B, 1, C]
        # One head call for both: in eval mode BatchNorm acts per row, so this equals two calls.
        embeds = self.visual_projection(torch.cat([pooled, tokens], dim=1))  # [B, 1 + G, D]
        return ImageGroups(embeds[:, 0], embeds[:, 1:], assignments)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, 77] from `groupvit.tokenize` -> projected text embeddings [N, D]."""
        return self.text_projection(self.text(ids))

    def compile_encoders(self, **options) -> GroupViT:
        """Opt-in `torch.compile` of the image and text encoders, in place: parameter names and state-dict keys
        stay as they are, so checkpoints load and save unchanged. `options` go to `torch.compile`."""
        self.visual.compile(**options)
        self.text.compile(**options)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in the backward pass instead of storing their activations."""
        self.text.grad_checkpointing = enable
        for stage in self.visual.stages:
            stage.grad_checkpointing = enable

    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) clamped at 100, the image-text contrastive scale."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (normalised image embeddings [B, D], normalised text embeddings [N, D], logit scale [])."""
        image = nn.functional.normalize(self.encode_image(pixels), dim=-1)
        text = nn.functional.normalize(self.encode_text(ids), dim=-1)
        return image, text, self.logit_scale_value()
