"""Transformer building blocks shared by the image and text encoders."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

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


# Linear's oneDNN weights, kept outside the modules so that deepcopy, pickling and state dicts never see them
# (oneDNN's packed tensors have no storage to copy): module -> (key of the weight it was packed from, packed).
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# In-place updates bump a tensor's version, but fused optimisers (AdamW(fused=True), which `groupvit train` uses)
# write the weights without bumping it: every optimiser step, counted here, also retires the packed copies.
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def _onednn_inference(layer: nn.Linear, x: torch.Tensor) -> bool:
    """Whether Linear may take its oneDNN path: in eval mode (so that a training pass without autograd, as gradient
    caching makes, computes exactly what the pass with autograd does), float32 on the CPU with autograd off, outside
    autocast, tracing (the ONNX export must see plain linear layers) and torch.compile (which does its own
    fusions)."""
    return (
        not layer.training
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == layer.weight.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
    )


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state-dict keys) that can end with an exact GELU or a residual add.

    For float32 inference on the CPU (eval mode, autograd off) it runs oneDNN's matmul on a copy of the weight
    packed once into oneDNN's blocked layout, with the bias and the GELU or the add fused into the product: plain
    `F.linear` copies the broadcast bias into its output before the product, and MKL packs the weight anew on every
    call, which over a few tokens (the later stages, the grouping blocks, batch 1) made the product up to 1.5x
    slower. Results equal `F.linear` to float32 rounding (the sums run in another order). The packed copies double
    the memory of the weights that run."""

    def forward(self, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] -> x W^T + b [..., out], then either GELU (exact, `gelu`) or plus `residual` [..., out]."""
        if gelu and residual is not None:
            raise ValueError("Linear ends with a GELU or a residual add, not both")
        if _onednn_inference(self, x):
            weight = self.packed_weight()
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, self.bias, "add")
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "gelu" if gelu else "none", [],
                                                      "none" if gelu else "")  # fmt: skip
        if x.ndim == 3 and torch.jit.is_tracing():
            # The ONNX exporter writes a 2-D linear as one Gemm, its bias inside, and a 3-D one as MatMul + Add:
            # onnxruntime ran the image tower 2-6% faster with Gemms (docs/performance.md).
            y = F.linear(x.flatten(0, 1), self.weight, self.bias).view(x.shape[0], -1, self.out_features)
        else:
            y = F.linear(x, self.weight, self.bias)
        if gelu:
            # Without autograd GELU runs in y's buffer: one [tokens, out] buffer fewer at the peak.
            return F.gelu(y) if torch.is_grad_enabled() else torch.ops.aten.gelu_(y)
        return y if residual is None else residual + y

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout, packed again whenever the weight may have changed: a new tensor or
        storage, an in-place update (a load), any optimiser step. Writes through `weight.data` are not seen."""
        w = self.weight
        key = (id(w), w.data_ptr(), w._version, _optimizer_steps)
        cached = _PACKED.get(self)
        if cached is None or cached[0] != key:
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach()))
            _PACKED[self] = cached
        return cached[1]


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None, act_layer: type = nn.GELU) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in] -> fc2(act(fc1(x))) [..., out], plus `residual` if given."""
        if type(self.act) is nn.GELU and self.act.approximate == "none":
            return self.fc2(self.fc1(x, gelu=True), residual=residual)
        return self.fc2(self.act(self.fc1(x)), residual=residual)


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

    def forward(self, x: torch.Tensor, causal: bool = False, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, C] -> attention output [B, N, C], plus `residual` if given."""
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, Dh]
        x = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # [B, H, N, Dh]
        return self.proj(x.transpose(1, 2).reshape(B, N, C), residual=residual)


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
        if self.training:  # DropPath may drop a branch per sample
            x = x + self.drop_path1(self.attn(self.norm1(x), causal=causal))
            return x + self.drop_path2(self.mlp(self.norm2(x)))
        # In eval DropPath is the identity: each residual add goes into its branch's last product (Linear).
        x = self.attn(self.norm1(x), causal=causal, residual=x)
        return self.mlp(self.norm2(x), residual=x)
