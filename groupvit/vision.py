"""The GroupViT image encoder (spec section 1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VisionConfig
from .grouping import GroupingBlock
from .layers import Block, TokenMixerMlp
from .sample_noise import checkpoint_contexts


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, then LayerNorm."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)  # [B, C, h, w]
        grid = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), grid  # [B, h*w, C]


CUBIC_A = -0.75  # the cubic convolution coefficient of PyTorch's (and OpenCV's) bicubic interpolation


def bicubic_matrix(out_size: torch.Tensor | int, in_size: int) -> torch.Tensor:
    """[out_size, in_size] weights W with W @ v = F.interpolate(v, out_size, mode="bicubic", align_corners=False)
    along one axis: source positions (o + 0.5) * in / out - 0.5, four taps clamped at the borders, A = -0.75.

    A matrix instead of F.interpolate because the ONNX export keeps the output size dynamic, and onnxruntime's
    Resize ran the 14x14 -> 28x28 position-embedding resize in 36 ms, a tenth of the whole encoder at 448."""
    out = torch.arange(out_size, dtype=torch.float32)
    src = (out + 0.5) * (in_size / out_size) - 0.5
    first = src.floor()
    t = (src - first)[:, None]  # [out, 1]
    a = CUBIC_A
    weights = torch.cat(
        [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        ],
        dim=1,
    )  # [out, 4]: the taps at first - 1 ... first + 2
    taps = (first[:, None] + torch.arange(-1, 3)).clamp(0, in_size - 1)  # [out, 4]
    columns = torch.arange(in_size, dtype=torch.float32)
    return ((taps[:, :, None] == columns) * weights[:, :, None]).sum(dim=1)  # [out, in]


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubically resize a square [1, g*g, C] position embedding to the token grid (h, w)."""
    n, dim = pos_embed.shape[1], pos_embed.shape[2]
    side = round(int(n) ** 0.5)  # int(): a traced shape is a tensor (groupvit.export)
    if (side, side) == tuple(grid):
        return pos_embed
    pos = pos_embed.reshape(side, side, dim)
    rows, cols = bicubic_matrix(grid[0], side).to(pos), bicubic_matrix(grid[1], side).to(pos)
    pos = torch.einsum("hi,ijc,wj->hwc", rows, pos, cols)  # [h, w, C]
    return pos.reshape(1, grid[0] * grid[1], dim)


class GroupingStage(nn.Module):
    """Transformer blocks over [image tokens, group tokens], then an optional grouping block.

    Group tokens are appended after the image tokens. A stage that follows another grouping stage
    derives its group tokens from the previous stage's (post-block) group tokens through
    `group_projector`; its own `group_token` parameter is then zero-initialised (spec 1.5).
    """

    def __init__(
        self,
        cfg: VisionConfig,
        depth: int,
        num_group_tokens: int,
        num_output_groups: int,
        num_prev_group_tokens: int,
        drop_path: list[float],
    ) -> None:
        super().__init__()
        dim, eps = cfg.width, cfg.layer_norm_eps
        self.num_group_tokens = num_group_tokens
        self.grad_checkpointing = False
        self.group_token = nn.Parameter(torch.zeros(1, num_group_tokens, dim)) if num_group_tokens else None
        self.group_projector = None
        if num_group_tokens and num_prev_group_tokens:
            self.group_projector = nn.Sequential(
                nn.LayerNorm(dim, eps=eps), TokenMixerMlp(num_prev_group_tokens, dim // 2, num_group_tokens)
            )
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio, drop_path=drop_path[j], eps=eps) for j in range(depth)
        )
        self.grouping = None
        if num_group_tokens:
            self.grouping = GroupingBlock(
                dim,
                cfg.num_heads,
                num_group_tokens,
                num_output_groups,
                mlp_ratio=cfg.assign_mlp_ratio,
                cross_attn_mlp_ratio=cfg.mlp_ratio,
                hard=cfg.hard_assignment,
                gumbel=cfg.gumbel,
                tau=cfg.gumbel_tau,
                assign_eps=cfg.assign_eps,
                eps=eps,
            )

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and self.training:  # the recomputation redraws the forward's noise
                x = checkpoint(block, x, use_reentrant=False, context_fn=checkpoint_contexts)
            else:
                x = block(x)
        return x

    def forward(
        self, x: torch.Tensor, prev_group_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """x [B, N, C] -> (x' [B, S_out or N, C], group tokens after the blocks [B, S, C], soft map [B, S_out, N],
        the image tokens after the blocks [B, N, C], before grouping)."""
        if self.group_token is None:
            x = self.run_blocks(x)
            return x, None, None, x
        group_tokens = self.group_token.expand(x.shape[0], -1, -1)
        if self.group_projector is not None:
            group_tokens = group_tokens + self.group_projector(prev_group_tokens)
        x = self.run_blocks(torch.cat([x, group_tokens], dim=1))  # [B, N + S, C]
        x, group_tokens = x[:, : -self.num_group_tokens], x[:, -self.num_group_tokens :]
        grouped, soft = self.grouping(x, group_tokens)
        return grouped, group_tokens, soft, x


class VisionEncoder(nn.Module):
    """Patch embedding, grouping stages and a final LayerNorm; returns the segment tokens."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.width, cfg.layer_norm_eps)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size**2, cfg.width))
        n_blocks = sum(cfg.depths)
        rates = [cfg.drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]  # linspace
        output_groups = iter(cfg.num_output_groups)
        self.stages = nn.ModuleList()
        prev_group_tokens, start = 0, 0
        for depth, num_group_tokens in zip(cfg.depths, cfg.num_group_tokens, strict=True):
            num_output_groups = next(output_groups) if num_group_tokens else 0
            self.stages.append(
                GroupingStage(
                    cfg, depth, num_group_tokens, num_output_groups, prev_group_tokens, rates[start : start + depth]
                )
            )
            start += depth
            prev_group_tokens = num_group_tokens
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for stage in self.stages:
            if stage.group_token is not None and stage.group_projector is None:
                nn.init.trunc_normal_(stage.group_token, std=0.02)
        # Linear weights trunc-normal 0.02, biases 0; the patch conv and projector LNs keep defaults.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.cfg.grouping_init == "fan_in":
            for name, m in self.stages.named_modules():  # names like "0.grouping.assign.proj"
                if isinstance(m, nn.Linear) and (".grouping." in name or ".group_projector." in name):
                    nn.init.normal_(m.weight, std=m.in_features**-0.5)

    def check_input(self, pixels: torch.Tensor) -> None:
        p = self.cfg.patch_size
        if pixels.ndim != 4 or pixels.shape[1] != self.cfg.in_chans:
            raise ValueError(
                f"expected images as a float tensor [B, {self.cfg.in_chans}, H, W], got shape {tuple(pixels.shape)}"
            )
        H, W = pixels.shape[2:]
        if H < p or W < p or H % p or W % p:
            raise ValueError(
                f"image size {H}x{W} is not a positive multiple of the patch size {p}; resize or crop it "
                f"(e.g. to {max(p, H // p * p)}x{max(p, W // p * p)})"
            )

    def forward(self, pixels: torch.Tensor, return_patch_tokens: bool = False) -> tuple:
        """pixels [B, 3, H, W] -> (segment tokens [B, G, C], soft assignment per grouping stage [B, S_out, N_in]),
        plus, with `return_patch_tokens`, the normalised patch tokens entering the first grouping block [B, N, C]
        (a plain ViT's output tokens), for the deep noun loss."""
        self.check_input(pixels)
        x, grid = self.patch_embed(pixels)  # [B, h*w, C]
        x = x + resize_pos_embed(self.pos_embed, grid)
        group_tokens, assignments, patches = None, [], None
        for stage in self.stages:
            x, group_tokens, soft, before = stage(x, group_tokens)
            patches = before if patches is None else patches
            if soft is not None:
                assignments.append(soft)
        if return_patch_tokens:
            return self.norm(x), assignments, self.norm(patches)
        return self.norm(x), assignments
