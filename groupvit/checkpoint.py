"""Reading and writing GroupViT checkpoints in three layouts (spec section 7).

* ours: one `.safetensors` file; the model config is JSON in the file's metadata.
* NVlabs: a `.pth` pickle holding `{'model': state_dict, ...}` (1x1-conv projection heads, fused qkv).
* transformers: a directory with `config.json` and `model.safetensors` or `pytorch_model.bin`.

Our parameter names are canonical; `nvlabs_names` (groupvit.formats.nvlabs) and `hf_names` (groupvit.formats.hf)
give, for each of our keys, the key(s) the other layout stores it under. Import and export both walk our model's
keys, so one function per layout covers both directions. Pickles are never unpickled with code execution
(groupvit.formats.safe_load). This module is the dispatcher: `read_checkpoint` and `save_model` over the layouts.
Loading a model by name or path is `groupvit.factory.load_model`, one floor up (`groupvit/__init__.py` also sets it
here as `groupvit.checkpoint.load_model`, its old home, without this module importing upward).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .checks import input_file
from .config import GroupViTConfig, TextConfig, VisionConfig, list_presets, model_config
from .errors import CheckpointError as CheckpointError
from .formats.common import CONFIG_KEY, TRAINING_ONLY, exported_config
from .formats.hf import config_from_hf as config_from_hf
from .formats.hf import config_to_hf, hf_names
from .formats.nvlabs import is_conv_kernel, nvlabs_names
from .formats.safe_load import (
    json_metadata,
    read_json_config,
    read_safetensors,
    safe_torch_load,
    state_dict_from_pickle,
)
from .io import atomic_write as atomic_write
from .model import GroupViT
from .settings import TestSettings

FORMAT_TAG = "groupvit"
# Where the test settings (groupvit.settings: test size, threshold, naming, vocabulary) travel in the other layouts,
# as CONFIG_KEY does the config (groupvit.formats.common); ours keeps them in the .safetensors metadata.
SETTINGS_KEY = "groupvit_test_settings"


# --------------------------------------------------------------------------- key layouts


def layout_names(layout: str):
    """For a layout ('groupvit', 'nvlabs' or 'hf'): our key -> that layout's key(s)."""
    if layout not in ("groupvit", "nvlabs", "hf"):
        raise ValueError(f"unknown checkpoint layout {layout!r}; choose 'groupvit', 'hf' or 'nvlabs'")
    return {"nvlabs": nvlabs_names, "hf": hf_names}.get(layout, lambda key: [key])


def import_state_dict(source: dict[str, torch.Tensor], model: GroupViT, layout: str) -> dict[str, torch.Tensor]:
    """A state dict in `layout` -> our key layout, checked against `model`'s names and shapes."""
    names = layout_names(layout)
    expected = model.state_dict()
    out, missing, mismatched, used = {}, [], [], set()
    for key, want in expected.items():
        theirs = names(key)
        if not all(n in source for n in theirs):
            missing.append(theirs[0])
            continue
        used.update(theirs)
        value = torch.cat([source[n] for n in theirs]) if len(theirs) > 1 else source[theirs[0]]
        if layout == "nvlabs" and is_conv_kernel(key) and value.ndim == 3:
            value = value.squeeze(-1)
        if tuple(value.shape) != tuple(want.shape):
            mismatched.append(f"{theirs[0]}: file {list(value.shape)}, GroupViT expects {list(want.shape)}")
        out[key] = value
    ignorable = {"text_model.embeddings.position_ids"}
    unexpected = sorted(k for k in source if k not in used and k not in ignorable)
    _raise_if_incompatible(missing, mismatched, unexpected)
    kinds = [f"{k} is {v.dtype}" for k, v in out.items() if v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:
        raise CheckpointError(f"{len(kinds)} tensors have the right shapes but another kind of number, e.g. "
                              f"{', '.join(kinds[:3])}; GroupViT's weights are floating point (float32, float16 or "
                              "bfloat16): dequantise quantised weights first")  # fmt: skip
    return out


def export_state_dict(model: GroupViT, layout: str) -> dict[str, torch.Tensor]:
    """Our model's weights in `layout` ('nvlabs' or 'hf')."""
    names = layout_names(layout)
    if model.config.text.pool != "eot":
        raise ValueError(f"the {layout} layout has no text.pool={model.config.text.pool!r} encoder (it pools at the "
                         "end-of-text token); keep this model in our .safetensors layout")  # fmt: skip
    out = {}
    for key, value in model.state_dict().items():
        if layout == "hf" and key == "multi_label_logit_scale":
            continue  # transformers has no multi-label temperature
        if key.startswith(TRAINING_ONLY):
            continue  # training-only variants' extras, unused at test time
        theirs = names(key)
        if layout == "nvlabs" and is_conv_kernel(key):
            value = value.unsqueeze(-1)
        parts = value.chunk(len(theirs)) if len(theirs) > 1 else [value]
        for name, part in zip(theirs, parts, strict=True):
            out[name] = part.clone()
    return out


def _raise_if_incompatible(missing: list[str], mismatched: list[str], unexpected: list[str]) -> None:
    if not (missing or mismatched or unexpected):
        return
    lines = []
    if mismatched:
        lines.append(f"{len(mismatched)} tensors have other shapes, e.g. " + "; ".join(mismatched[:3]))
    if missing:
        lines.append(f"{len(missing)} tensors are missing, e.g. " + ", ".join(missing[:5]))
    if unexpected:
        lines.append(f"{len(unexpected)} tensors are not part of GroupViT, e.g. " + ", ".join(unexpected[:5]))
    raise CheckpointError(
        "the checkpoint does not match the GroupViT architecture: "
        + " | ".join(lines)
        + ". Is it a GroupViT checkpoint (not a plain ViT or CLIP)? For non-standard sizes pass config=."
    )


# --------------------------------------------------------------------------- configs


def infer_config(source: dict[str, torch.Tensor], layout: str) -> GroupViTConfig:
    """Model config from tensor shapes (NVlabs files carry no usable config). Heads assume 64-wide heads."""
    names = layout_names(layout)

    def k(key: str) -> str:
        return names(key)[0]

    def shape(key: str) -> tuple[int, ...]:
        name = k(key)
        if name not in source:
            raise CheckpointError(f"not a GroupViT checkpoint: tensor '{name}' is missing")
        return tuple(source[name].shape)

    pos, patch = shape("visual.pos_embed"), shape("visual.patch_embed.proj.weight")
    width = pos[-1]
    stage_prefix = k("visual.stages.0.x").removesuffix("0.x")
    num_stages = 1 + max(int(m.group(1)) for n in source if (m := re.match(re.escape(stage_prefix) + r"(\d+)\.", n)))
    depths, group_tokens, output_groups = [], [], []
    for i in range(num_stages):
        block0 = k(f"visual.stages.{i}.blocks.0.x").removesuffix("0.x")
        depths.append(1 + max(int(m.group(1)) for n in source if (m := re.match(re.escape(block0) + r"(\d+)\.", n))))
        token_key = k(f"visual.stages.{i}.group_token")
        group_tokens.append(source[token_key].shape[1] if token_key in source else 0)
        if group_tokens[-1]:
            output_groups.append(shape(f"visual.stages.{i}.grouping.token_mlp.fc2.weight")[0])
    g0 = "visual.stages.0.grouping."
    vision = VisionConfig(
        image_size=round(pos[1] ** 0.5) * patch[-1],
        patch_size=patch[-1],
        in_chans=patch[1],
        width=width,
        depths=depths,
        num_heads=max(1, width // 64),
        num_group_tokens=group_tokens,
        num_output_groups=output_groups,
        mlp_ratio=shape("visual.stages.0.blocks.0.mlp.fc1.weight")[0] / width,
        assign_mlp_ratio=(
            shape(g0 + "token_mlp.fc1.weight")[0] / width,
            shape(g0 + "mlp_channels.fc1.weight")[0] / width,
        ),
    )
    vocab, text_width = shape("text.token_embedding.weight")
    text_block0 = k("text.blocks.0.x").removesuffix("0.x")
    text = TextConfig(
        vocab_size=vocab,
        context_length=shape("text.positional_embedding")[0],
        width=text_width,
        layers=1 + max(int(m.group(1)) for n in source if (m := re.match(re.escape(text_block0) + r"(\d+)\.", n))),
        heads=max(1, text_width // 64),
        mlp_ratio=shape("text.blocks.0.mlp.fc1.weight")[0] / text_width,
    )
    return GroupViTConfig(
        vision=vision,
        text=text,
        projection_dim=shape("visual_projection.fc2.weight")[0],
        projection_hidden_dim=shape("visual_projection.fc1.weight")[0],
        multi_label_logit_scale="multi_label_logit_scale" in source,
    )


# What transformers' config cannot hold; config.json's `CONFIG_KEY` entry gives it back.
HF_MISSING = ("hard_assignment", "gumbel", "gumbel_tau", "drop_path_rate", "grouping_init")


def _stored_config(stored: Any, path: Path) -> GroupViTConfig:
    """The config a file carries (NVlabs .pth written by us, our training checkpoint, our .safetensors)."""
    try:
        return GroupViTConfig.from_dict(stored)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its stored model config is not usable ({e})") from None


def _hf_config(hf_config: dict[str, Any], path: Path) -> GroupViTConfig:
    """transformers' settings, which decide the architecture, with what they cannot hold from our entry if any."""
    ours = hf_config.get(CONFIG_KEY, {})
    extra = {k: ours["vision"][k] for k in HF_MISSING if isinstance(ours.get("vision"), dict) and k in ours["vision"]}
    try:
        cfg = config_from_hf(hf_config)
        return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **extra))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a usable GroupViT config: {e}") from None


def _inferred_config(source: dict[str, torch.Tensor], layout: str, path: Path) -> GroupViTConfig:
    """`infer_config`, with a warning unless the result is a released architecture (a preset): shapes do not show
    head counts, drop path, the kind of assignment or the initialisation."""
    cfg = infer_config(source, layout)
    known = [cfg.to_dict() == model_config(name).to_dict() for name in list_presets()]
    if not any(known):
        warnings.warn(
            f"{path} carries no model config: it was read off tensor shapes, assuming 64-wide attention heads "
            f"({cfg.vision.num_heads} image, {cfg.text.heads} text) and defaults for what shapes do not show "
            "(drop_path_rate, hard assignment); pass config= to load_model if the model differs",
            stacklevel=3,
        )
    return cfg


def read_checkpoint(
    path: str | Path, config: GroupViTConfig | None = None
) -> tuple[dict[str, torch.Tensor], GroupViTConfig, str]:
    """Any supported checkpoint -> (state dict in our layout, checked against the config's model; config; layout)."""
    return read_checkpoint_and_settings(path, config)[:3]


def read_checkpoint_and_settings(
    path: str | Path, config: GroupViTConfig | None = None
) -> tuple[dict[str, torch.Tensor], GroupViTConfig, str, TestSettings | None]:
    """`read_checkpoint`, and the test settings the file records (in any of the three layouts), or None."""
    path = Path(path)
    settings_at, settings = path, None  # where the settings were read, for messages; the JSON text or dict
    if not os.path.lexists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        config_file = path / "config.json"
        if not os.path.lexists(config_file):
            raise CheckpointError(f"{path} is a directory without config.json; expected a transformers GroupViT folder")
        hf_config = read_json_config(config_file)
        if hf_config.get("model_type") != "groupvit":
            raise CheckpointError(f"{config_file} has model_type {hf_config.get('model_type')!r}, not 'groupvit'")
        weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if os.path.lexists(path / n)]
        if not weights:
            raise CheckpointError(f"{path} has config.json but neither model.safetensors nor pytorch_model.bin")
        config = config or _hf_config(hf_config, config_file)  # checked before the weights are read
        settings_at, settings = config_file, hf_config.get(SETTINGS_KEY)
        path = weights[0]
    try:
        input_file(path, "checkpoint")  # a FIFO would block the reader, a device never end
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    stored = None  # our config, when the file carries it
    if path.suffix == ".safetensors":
        source, metadata = read_safetensors(path)
        if metadata.get("format") == FORMAT_TAG:
            stored = json_metadata(metadata.get("config"), path)
            settings = metadata.get("test_settings")
    else:
        obj = safe_torch_load(path)
        source = state_dict_from_pickle(obj, path)
        # NVlabs files written by us, and our training checkpoints, carry it
        stored = next((obj[k] for k in (CONFIG_KEY, "model_config") if isinstance(obj, dict) and k in obj), None)
        settings = obj.get(SETTINGS_KEY) if isinstance(obj, dict) else None
    if any(k.startswith("img_encoder.") for k in source):
        layout = "nvlabs"
    elif any(k.startswith("vision_model.") for k in source):
        layout = "hf"
    elif any(k.startswith("visual.") for k in source):
        layout = FORMAT_TAG
    else:
        raise CheckpointError(
            f"{path} is not a GroupViT checkpoint: no 'img_encoder.' (NVlabs) or 'vision_model.' "
            f"(transformers) tensors; first keys: {list(source)[:3]}"
        )
    if config is not None:
        cfg = config
    elif stored is not None:
        cfg = _stored_config(stored, path)
    else:
        cfg = _inferred_config(source, layout, path)
    with torch.device("meta"):
        skeleton = GroupViT(cfg)
    state = import_state_dict(source, skeleton, layout)
    damaged = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if damaged:
        raise CheckpointError(f"{path}: {len(damaged)} tensors hold NaN or infinite values, e.g. "
                              f"{', '.join(damaged[:3])}; the weights are damaged (from a run that diverged?) and "
                              "would answer nonsense")  # fmt: skip
    return state, cfg, layout, _test_settings(settings, settings_at)


def _test_settings(recorded: str | dict | None, path: Path) -> TestSettings | None:
    """Test settings as a file records them (JSON text in our metadata, a dict in the other layouts), or None."""
    if recorded is None:
        return None
    stored = json_metadata(recorded, path, "the test settings") if isinstance(recorded, str) else recorded
    try:  # json_metadata's own error names the file already
        return TestSettings.from_dict(stored)
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: the test settings in its metadata are not valid ({e})") from None


def save_model(model: GroupViT, path: str | Path, layout: str = FORMAT_TAG, dtype: torch.dtype | None = None) -> Path:
    """Write `model` as ours (`.safetensors` + config and test-settings metadata), 'hf' (a directory) or 'nvlabs'
    (`.pth`). dtype: store floating-point tensors in it (torch.float16 halves the file; `load_model` reads them
    back as float32); ours only."""
    path = Path(path)
    if dtype is not None and layout != FORMAT_TAG:
        raise ValueError(f"a storage dtype applies to our .safetensors layout only, not {layout!r}")
    if layout == FORMAT_TAG:
        tensors = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in model.state_dict().items()
        }
        metadata = {"format": FORMAT_TAG, "config": model.config.to_json(),
                    "test_settings": model.test_settings.to_json()}  # fmt: skip
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    elif layout == "hf":
        if not model.config.vision.hard_assignment:
            warnings.warn("transformers' GroupViTModel always assigns tokens to groups hard; this model assigns "
                          "soft, so it predicts differently there (groupvit reads the folder back as it is)",
                          stacklevel=2)  # fmt: skip
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in export_state_dict(model, "hf").items()}
        atomic_write(path / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
        if model.config.multi_label_logit_scale:
            warnings.warn("the transformers layout has no multi-label temperature: it is left out (keep it with "
                          "our .safetensors or --to nvlabs)", stacklevel=2)  # fmt: skip
        config_json = json.dumps(config_to_hf(model.config) | {SETTINGS_KEY: model.test_settings.to_dict()}, indent=2)
        atomic_write(path / "config.json", lambda tmp: Path(tmp).write_text(config_json))
    elif layout == "nvlabs":
        state = {
            "model": {k: v.detach().cpu() for k, v in export_state_dict(model, "nvlabs").items()},
            CONFIG_KEY: exported_config(model.config),
            SETTINGS_KEY: model.test_settings.to_dict(),
        }
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    else:
        raise ValueError(f"unknown checkpoint layout {layout!r}; choose 'groupvit', 'hf' or 'nvlabs'")
    return path
