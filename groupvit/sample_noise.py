"""Per-sample random draws for training: a sample's Gumbel noise and drop-path masks depend on the sample, not on the
batch it sits in.

`groupvit train` runs each encoder call inside `sample_seeds(seeds)`, one seed per row (from the run's seed, the
step and the sample's position in the global batch, `row_seeds`). Inside it, every module that draws noise
(`DropPath`, the grouping's `AssignAttention`) takes row b's numbers from a hash of (seeds[b], the module's
`noise_key`, the element's index) instead of torch's generator, so a step draws the same noise however its batch is
split into micro-batches and processes, and the second pass of gradient-cached accumulation (and gradient
checkpointing's recomputation, `checkpoint_contexts`) draws exactly what the first did. Outside the context (test
time, other callers) the modules draw from torch's generator as before. The hash (three rounds of a 32-bit
multiply-xorshift) gives 23-bit uniforms strictly inside (0, 1); the reference draws its Gumbel noise with
torch.distributions.Gumbel.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

MASK32 = 0xFFFFFFFF
_seeds: torch.Tensor | None = None  # [B] int64 in [0, 2^32): the rows of the encoder call in progress


def hash32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A bijective 32-bit integer hash of int64 values, or of a Python int, in [0, 2^32) (products stay below 2^63:
    no overflow)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & MASK32
    return (x >> 16) ^ x


def derive(seeds: torch.Tensor, salt: int) -> torch.Tensor:
    """Seeds [...] -> other seeds of the same shape, one stream per salt (e.g. a row's text index)."""
    return hash32(seeds ^ hash32(salt & MASK32))


def row_seeds(seed: int, step: int, positions: torch.Tensor) -> torch.Tensor:
    """One seed per sample [B] from the run's seed, the step and the samples' global positions [B]."""
    return derive(derive(positions.long() & MASK32, step), seed)


@contextmanager
def sample_seeds(seeds: torch.Tensor | None) -> Iterator[None]:
    """Draw noise per row from `seeds` [B] (int64, on the batch's device) inside; None: torch's generator."""
    global _seeds
    previous, _seeds = _seeds, seeds
    try:
        yield
    finally:
        _seeds = previous


def checkpoint_contexts():
    """`context_fn` for torch.utils.checkpoint: the recomputation in the backward pass runs under the seeds the
    forward ran under, so it redraws the same noise."""
    return nullcontext(), sample_seeds(_seeds)


def assign_noise_keys(model: nn.Module) -> None:
    """Give every module that draws noise a stable key from its qualified name (the same on every rank and run)."""
    for name, module in model.named_modules():
        if hasattr(module, "noise_key"):
            module.noise_key = zlib.crc32(name.encode())


def uniform(key: int | None, rows: int, per_row: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    """Uniforms in (0, 1) [rows, *per_row] for a module with `key`, row b from seeds[b]; None outside
    `sample_seeds` (the caller then draws from torch's generator)."""
    if _seeds is None:
        return None
    if key is None:
        raise RuntimeError("a module drawing per-sample noise has no noise_key; call assign_noise_keys(model)")
    if _seeds.shape[0] != rows:
        raise ValueError(f"sample_seeds holds {_seeds.shape[0]} seeds for a batch of {rows} rows")
    count = 1
    for size in per_row:
        count *= size
    base = derive(_seeds.to(device), key)  # [B]
    index = hash32(torch.arange(count, device=device, dtype=torch.long))  # [E]
    bits = hash32(hash32(base[:, None] ^ index[None, :]))  # [B, E]
    return unit_interval(bits).view(rows, *per_row)


def unit_interval(bits: torch.Tensor) -> torch.Tensor:
    """32-bit hashes (int64 in [0, 2^32)) -> float32 uniforms strictly inside (0, 1), from their top 23 bits: k + 0.5
    and the largest value, 1 - 2^-24, are exact in float32 (from 24 bits the largest rounds to 1.0, a Gumbel draw of
    +inf and a NaN loss once in some ten million draws)."""
    return ((bits >> 9).float() + 0.5).mul_(2.0**-23)
