"""The grouping block: group tokens gather image tokens into segments (spec 1.6-1.8)."""

from __future__ import annotations

import torch
from torch import nn

from . import sample_noise
from .layers import CrossAttention, Linear, Mlp, TokenMixerMlp


def assign_tokens_to_groups(
    logits: torch.Tensor,
    hard: bool,
    gumbel: bool,
    tau: float = 1.0,
    dim: int = -2,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each token picks a group: softmax over the group axis `dim` of `logits` [B, S, N].

    `gumbel` adds Gumbel(0, 1) noise before the softmax (training only; the caller decides), made from `uniforms`
    (shaped like `logits`, in (0, 1)) when given, else drawn from torch's generator.
    `hard` returns the one-hot argmax with the softmax's gradient (straight-through estimator).
    """
    if gumbel:
        if uniforms is None:
            # torch.distributions.Gumbel is what the reference uses: stabler than -log(Exp) noise.
            noise = torch.distributions.Gumbel(
                torch.zeros((), device=logits.device, dtype=logits.dtype),
                torch.ones((), device=logits.device, dtype=logits.dtype),
            ).sample(logits.shape)
        else:  # the inverse CDF of Gumbel(0, 1); the uniforms stay inside (0, 1), so both logs are finite
            noise = -torch.log(-torch.log(uniforms)).to(logits.dtype)
        logits = (logits + noise) / tau
    soft = logits.softmax(dim)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft


class AssignAttention(nn.Module):
    """Single-head assignment of image tokens to groups, then per-group averaging of their values.

    The (count + 1) denominator of spec 1.8 (`assign_eps` = 1) shrinks each group's mean towards zero
    by one virtual token and keeps empty groups at zero.
    """

    def __init__(
        self, dim: int, hard: bool = True, gumbel: bool = True, tau: float = 1.0, assign_eps: float = 1.0
    ) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.hard, self.gumbel, self.tau, self.assign_eps = hard, gumbel, tau, assign_eps
        self.noise_key: int | None = None  # set by sample_noise.assign_noise_keys
        self.q_proj = Linear(dim, dim)
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.proj = Linear(dim, dim)

    def forward(self, groups: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """groups [B, S, C], tokens [B, N, C] -> (segments [B, S, C], soft assignment [B, S, N])."""
        logits = self.q_proj(groups) @ self.k_proj(tokens).transpose(1, 2) * self.scale  # [B, S, N]
        soft = logits.softmax(dim=-2)  # noise-free soft map, what segmentation uses
        if self.hard or (self.gumbel and self.training):
            gumbel = self.gumbel and self.training
            B, S, N = logits.shape
            # Each sample's noise from its own seed inside sample_noise.sample_seeds (training); None outside.
            u = sample_noise.uniform(self.noise_key, B, (S, N), logits.device) if gumbel else None
            assign = assign_tokens_to_groups(logits, self.hard, gumbel, self.tau, uniforms=u)
        else:
            assign = soft
        assign = assign / (assign.sum(dim=-1, keepdim=True) + self.assign_eps)
        return self.proj(assign @ self.v_proj(tokens)), soft


class CrossAttnBlock(nn.Module):
    """Post-norm cross-attention block: groups attend to image tokens before the assignment."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_post = nn.LayerNorm(dim, eps=eps)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, context)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


class GroupingBlock(nn.Module):
    """Merge N image tokens into `num_output_groups` segment tokens guided by S input group tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_group_tokens: int,
        num_output_groups: int,
        mlp_ratio: tuple[float, float] = (0.5, 4.0),
        cross_attn_mlp_ratio: float = 4.0,
        hard: bool = True,
        gumbel: bool = True,
        tau: float = 1.0,
        assign_eps: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        tokens_hidden, channels_hidden = int(dim * mlp_ratio[0]), int(dim * mlp_ratio[1])
        self.norm_tokens = nn.LayerNorm(dim, eps=eps)
        self.token_mlp = TokenMixerMlp(num_group_tokens, tokens_hidden, num_output_groups)
        self.norm_post_tokens = nn.LayerNorm(dim, eps=eps)
        self.norm_x = nn.LayerNorm(dim, eps=eps)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, cross_attn_mlp_ratio, eps=eps)
        self.assign = AssignAttention(dim, hard=hard, gumbel=gumbel, tau=tau, assign_eps=assign_eps)
        self.norm_new_x = nn.LayerNorm(dim, eps=eps)
        self.mlp_channels = Mlp(dim, channels_hidden)

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, C], group_tokens [B, S, C] -> (segments [B, S_out, C], soft assignment [B, S_out, N])."""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        queries = self.norm_post_tokens(self.token_mlp(group_tokens))  # [B, S_out, C]
        queries = self.pre_assign_attn(queries, x)
        segments, soft = self.assign(queries, x)
        segments = segments + queries
        # No separate residual: the block's output is a + MLP(LN(a)) (spec 1.6, step 6).
        return segments + self.mlp_channels(self.norm_new_x(segments)), soft
