"""The one door to a model: released weights by name, a checkpoint file of any layout, or an ONNX export folder.

Above `checkpoint.py` (the layouts), `pretrained.py` (names, downloads, the cache) and `runtime.py` (ONNX), none of
which imports this module.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import read_checkpoint_and_settings
from .config import GroupViTConfig
from .model import GroupViT
from .pretrained import resolve
from .runtime import is_export, load_export


def load_model(
    name_or_path: str | Path,
    config: GroupViTConfig | None = None,
    device: str | torch.device = "cpu",
    source: str | None = None,
) -> GroupViT:
    """Load a GroupViT in eval mode from an NVlabs `.pth`, a transformers directory, our `.safetensors`, or released
    weights by name: `gcc_yfcc`, `gcc_redcaps` (`source` or `NAME@nvlabs` picks the source), `hf-hub:ORG/REPO[@REV]`.
    Released weights are downloaded, verified and cached on first use (`groupvit.pretrained`).

    `config` overrides the config read from (or inferred for) the file, e.g. for unusual head counts. A folder that
    `groupvit export --format onnx` wrote gives the same interface on onnxruntime (groupvit.runtime.OnnxGroupViT).
    """
    path = resolve(name_or_path, source)
    if is_export(path):  # a folder written by `groupvit export --format onnx`: a model on onnxruntime
        if config is not None:
            raise ValueError(f"{path} is an ONNX export, which carries its own config; config= does not apply")
        return load_export(path, device)
    state_dict, cfg, _, settings = read_checkpoint_and_settings(path, config)  # checked against the architecture
    with torch.device("meta"):
        model = GroupViT(cfg)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}  # fp16/bf16 files too
    model.load_state_dict(state_dict, assign=True)
    model.test_settings = settings or model.test_settings
    return model.to(device).eval()
