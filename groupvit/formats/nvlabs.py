"""The NVlabs layout (the reference release's `.pth`): its state-dict names for ours."""

from __future__ import annotations

import re

from .common import split_block


def nvlabs_names(key: str) -> list[str]:
    """The NVlabs state-dict key for one of our keys."""
    head, tail = split_block(key)
    if key.startswith("text.blocks."):
        tail = {"attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias"}.get(tail, tail)
        for ours, theirs in (("norm1.", "ln_1."), ("norm2.", "ln_2."), ("attn.proj.", "attn.out_proj."),
                             ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")):  # fmt: skip
            if tail.startswith(ours):
                tail = theirs + tail[len(ours) :]
        return [head.replace("text.blocks.", "text_encoder.transformer.resblocks.") + tail]
    key = head + tail
    for pattern, repl in (
        (r"^visual\.stages\.", "img_encoder.layers."),
        (r"^visual\.", "img_encoder."),
        (r"\.grouping\.", ".downsample."),
        (r"\.token_mlp\.", ".mlp_inter."),
        (r"^text\.", "text_encoder."),
        (r"^(visual|text)_projection\.fc1\.", lambda m: f"{_nv_head(m)}.linear_hidden.0."),
        (r"^(visual|text)_projection\.norm\.", lambda m: f"{_nv_head(m)}.linear_hidden.1."),
        (r"^(visual|text)_projection\.fc2\.", lambda m: f"{_nv_head(m)}.linear_out."),
    ):
        key = re.sub(pattern, repl, key)
    return [key]


def _nv_head(m: re.Match) -> str:
    return "img_projector" if m.group(1) == "visual" else "text_projector"


def is_conv_kernel(key: str) -> bool:
    """NVlabs projection heads are 1x1 Conv1d: their Linear weights carry a trailing kernel dim."""
    return bool(re.match(r"^(visual|text)_projection\.fc[12]\.weight$", key))
