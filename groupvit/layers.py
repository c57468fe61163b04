"""Transformer building blocks shared by the image and text encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import sample_noise


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU, used by the text encoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability `p` in training (each sample's draw
    from its seed inside `sample_noise.sample_seeds`, from torch's generator outside)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p
        self.noise_key: int | None = None  # set by sample_noise.assign_noise_keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        u = sample_noise.uniform(self.noise_key, x.shape[0], (), x.device)  # [B] or None
        mask = x.new_empty(shape).bernoulli_(keep) if u is None else (u < keep).to(x.dtype).view(shape)
        return x * mask.div_(keep)  # scale the [B, 1, ...] mask, not the activations: one full-size op, not two

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state-dict keys) that the ONNX exporter writes as one Gemm.

    Traced, a linear layer on [B, N, C] becomes MatMul + Add, on [B*N, C] one Gemm with the bias inside:
    onnxruntime ran the exported image tower 2-6 % faster with Gemms (docs/performance.md). Elsewhere plain
    `F.linear`; outputs are bit-identical either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> x W^T + b [..., out]."""
        if x.ndim == 3 and torch.jit.is_tracing():
            return F.linear(x.flatten(0, 1), self.weight, self.bias).view(x.shape[0], -1, self.out_features)
        return F.linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, act_layer: type = nn.GELU) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        if type(self.act) is nn.GELU and not torch.is_grad_enabled():
            # No autograd to feed: GELU in fc1's output buffer, one [tokens, hidden] buffer fewer at the peak.
            return self.fc2(torch.ops.aten.gelu_(x, approximate=self.act.approximate))
        return self.fc2(self.act(x))


class TokenMixerMlp(Mlp):
    """An MLP over the token axis: maps [B, S_in, C] to [B, S_out, C]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (rows: q, k, v; heads contiguous)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, Dh]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, N, Dh]
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Multi-head attention of queries [B, S, C] over a separate key/value set [B, N, C]."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = Linear(dim, dim, bias=qkv_bias)
        self.k_proj = Linear(dim, dim, bias=qkv_bias)
        self.v_proj = Linear(dim, dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return x.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, Dh]

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, S, C = query.shape
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(context)), self._heads(self.v_proj(context))
        x = F.scaled_dot_product_attention(q, k, v)  # [B, H, S, Dh]
        return self.proj(x.transpose(1, 2).reshape(B, S, C))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        act_layer: type = nn.GELU,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        # One module per branch: each has its own noise key, so a sample's two masks are drawn independently.
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), causal=causal))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
