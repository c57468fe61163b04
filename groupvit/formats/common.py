"""What the layouts share: where our config travels in the others, what they leave out, and where a transformer
block's key splits into the block and the parameter."""

from __future__ import annotations

import re
from typing import Any

from ..config import GroupViTConfig

# Where our config travels in the other layouts: an extra entry of the NVlabs .pth (the reference reads only
# 'model') and an extra key of transformers' config.json (kept as an attribute there), so a round trip through
# either layout gives back the same model instead of one inferred from shapes.
CONFIG_KEY = "groupvit_config"
# Parameters that only variants' training losses use (GroupViTConfig.logit_bias, patch_head): not exported.
TRAINING_ONLY = ("logit_bias", "multi_label_logit_bias", "patch_projection.")


def split_block(key: str) -> tuple[str, str]:
    """'text.blocks.3.attn.qkv.weight' -> ('text.blocks.3.', 'attn.qkv.weight'); else ('', key)."""
    m = re.match(r"^(.*\.blocks\.\d+\.)(.*)$", key)
    return (m.group(1), m.group(2)) if m else ("", key)


def exported_config(cfg: GroupViTConfig) -> dict[str, Any]:
    """Our config as the other layouts store it: without the training-only parts their weights leave out."""
    return {**cfg.to_dict(), "logit_bias": False, "patch_head": False}
