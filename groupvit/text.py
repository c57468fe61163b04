"""CLIP-style causal text transformer (spec section 2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import TextConfig
from .layers import Block, QuickGELU
from .sample_noise import checkpoint_contexts


class TextEncoder(nn.Module):
    """Token + position embeddings, causal pre-norm blocks, final LayerNorm, pooled at the EOT token."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, act_layer=QuickGELU, eps=cfg.layer_norm_eps)
            for _ in range(cfg.layers)
        )
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """CLIP's initialisation."""
        width, layers = self.cfg.width, self.cfg.layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=width**-0.5)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.normal_(block.attn.proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.proj.bias)
            nn.init.normal_(block.mlp.fc1.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.fc2.weight, std=proj_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [N, L] (L <= context_length, EOT = highest id in each row) -> pooled features [N, width]."""
        if ids.ndim != 2:
            raise ValueError(f"expected token ids [N, L], got shape {tuple(ids.shape)}; use groupvit.tokenize")
        if ids.shape[1] > self.cfg.context_length:
            raise ValueError(f"token ids have length {ids.shape[1]} > context length {self.cfg.context_length}")
        # Attention is causal, so padding after the last EOT cannot change any pooled feature: drop it.
        return self.pooled(ids[:, : int(ids.argmax(dim=-1).max()) + 1])

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        """`forward` without dropping the padding: its length is not a function of the data, so the ONNX export
        traces this one (groupvit.export)."""
        eot = ids.argmax(dim=-1)  # [N]
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]  # [N, L, C]
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, True, use_reentrant=False, context_fn=checkpoint_contexts)
            else:
                x = block(x, causal=True)
        x = self.ln_final(x)
        if self.cfg.pool == "max":  # over the tokens after start of text, up to and including end of text
            position = torch.arange(x.shape[1], device=x.device)
            content = (position[None, :] > 0) & (position[None, :] <= eot[:, None])  # [N, L]
            return x.masked_fill(~content[:, :, None], float("-inf")).amax(dim=1)  # [N, C]
        return x[torch.arange(x.shape[0], device=x.device), eot]  # [N, C]
