"""Reading and writing GroupViT checkpoints in three layouts (spec section 7).

* ours: one `.safetensors` file; the model config is JSON in the file's metadata.
* NVlabs: a `.pth` pickle holding `{'model': state_dict, ...}` (1x1-conv projection heads, fused qkv).
* transformers: a directory with `config.json` and `model.safetensors` or `pytorch_model.bin`.

Our parameter names are canonical; `nvlabs_names` and `hf_names` give, for each of our keys, the
key(s) the other layout stores it under. Import and export both walk our model's keys, so one
function per layout covers both directions. Pickles are never unpickled with code execution.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .checks import check_memory, file_size, input_file
from .config import GroupViTConfig, TextConfig, VisionConfig, list_presets, model_config, parse_json, read_json
from .errors import CheckpointError as CheckpointError
from .io import atomic_write as atomic_write
from .model import GroupViT
from .settings import TestSettings

FORMAT_TAG = "groupvit"
# Where our config travels in the other layouts: an extra entry of the NVlabs .pth (the reference reads only
# 'model') and an extra key of transformers' config.json (kept as an attribute there), so a round trip through
# either layout gives back the same model instead of one inferred from shapes.
CONFIG_KEY = "groupvit_config"
# The same for the test settings (groupvit.settings: test size, threshold, naming, vocabulary); ours keeps them in
# the .safetensors metadata under "test_settings".
SETTINGS_KEY = "groupvit_test_settings"
# Globals a pickle could use to run code. Anything else unknown becomes an inert placeholder.
_CODE_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "socket", "pty", "code"}
_CODE_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "breakpoint"}


# --------------------------------------------------------------------------- key layouts


def _split(key: str) -> tuple[str, str]:
    """'text.blocks.3.attn.qkv.weight' -> ('text.blocks.3.', 'attn.qkv.weight'); else ('', key)."""
    m = re.match(r"^(.*\.blocks\.\d+\.)(.*)$", key)
    return (m.group(1), m.group(2)) if m else ("", key)


def nvlabs_names(key: str) -> list[str]:
    """The NVlabs state-dict key for one of our keys."""
    head, tail = _split(key)
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


def hf_names(key: str) -> list[str]:
    """The transformers `GroupViTModel` key(s) for one of our keys (fused qkv -> three keys)."""
    head, tail = _split(key)
    if head:
        for ours, theirs in (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."),
                             ("attn.proj.", "self_attn.out_proj.")):  # fmt: skip
            if tail.startswith(ours):
                tail = theirs + tail[len(ours) :]
        head = re.sub(r"\.blocks\.", ".layers.", head)
        head = head.replace("visual.stages.", "vision_model.encoder.stages.")
        head = head.replace("text.layers.", "text_model.encoder.layers.")
        if tail.startswith("attn.qkv."):
            param = tail.removeprefix("attn.qkv.")
            return [f"{head}self_attn.{p}_proj.{param}" for p in "qkv"]
        return [head + tail]
    fixed = {
        "visual.pos_embed": "vision_model.embeddings.position_embeddings",
        "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
        "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    }
    if key in fixed:
        return [fixed[key]]
    for pattern, repl in (
        (r"^visual\.patch_embed\.proj\.", "vision_model.embeddings.patch_embeddings.projection."),
        (r"^visual\.patch_embed\.norm\.", "vision_model.embeddings.layernorm."),
        (r"^visual\.norm\.", "vision_model.layernorm."),
        (r"^visual\.stages\.", "vision_model.encoder.stages."),
        (r"\.grouping\.", ".downsample."),
        (r"\.token_mlp\.", ".mlp_inter."),
        (r"pre_assign_attn\.attn\.proj\.", "pre_assign_attn.attn.out_proj."),
        (r"^text\.ln_final\.", "text_model.final_layer_norm."),
        (r"_projection\.fc1\.", "_projection.0."),
        (r"_projection\.norm\.", "_projection.1."),
        (r"_projection\.fc2\.", "_projection.3."),
    ):
        key = re.sub(pattern, repl, key)
    return [key]


def _is_conv_kernel(key: str) -> bool:
    """NVlabs projection heads are 1x1 Conv1d: their Linear weights carry a trailing kernel dim."""
    return bool(re.match(r"^(visual|text)_projection\.fc[12]\.weight$", key))


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
        if layout == "nvlabs" and _is_conv_kernel(key) and value.ndim == 3:
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


# Parameters that only variants' training losses use (GroupViTConfig.logit_bias, patch_head): not exported.
TRAINING_ONLY = ("logit_bias", "multi_label_logit_bias", "patch_projection.")


def exported_config(cfg: GroupViTConfig) -> dict[str, Any]:
    """Our config as the other layouts store it: without the training-only parts their weights leave out."""
    return {**cfg.to_dict(), "logit_bias": False, "patch_head": False}


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
        if layout == "nvlabs" and _is_conv_kernel(key):
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


def config_from_hf(hf: dict[str, Any]) -> GroupViTConfig:
    """A transformers `GroupViTConfig` dict (config.json) -> our config."""
    v, t = hf.get("vision_config", {}), hf.get("text_config", {})
    group_tokens = list(v.get("num_group_tokens", [64, 8, 0]))
    n_grouping = sum(1 for n in group_tokens if n > 0)
    width = v.get("hidden_size", 384)
    text_width = t.get("hidden_size", 256)
    for name, value in (("vision_config.hidden_size", width), ("text_config.hidden_size", text_width)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} is {value!r}, not a positive integer")
    if v.get("hidden_act", "gelu") != "gelu" or t.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise CheckpointError("only GroupViT's activations (gelu image side, quick_gelu text side) are supported")
    return GroupViTConfig(
        vision=VisionConfig(
            image_size=v.get("image_size", 224),
            patch_size=v.get("patch_size", 16),
            in_chans=v.get("num_channels", 3),
            width=width,
            depths=list(v.get("depths", [6, 3, 3])),
            num_heads=v.get("num_attention_heads", 6),
            num_group_tokens=group_tokens,
            num_output_groups=list(v.get("num_output_groups", [64, 8, 8]))[:n_grouping],
            mlp_ratio=v.get("intermediate_size", 4 * width) / width,
            assign_mlp_ratio=tuple(v.get("assign_mlp_ratio", [0.5, 4.0])),
            assign_eps=v.get("assign_eps", 1.0),
            layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        ),
        text=TextConfig(
            vocab_size=t.get("vocab_size", 49408),
            context_length=t.get("max_position_embeddings", 77),
            width=text_width,
            layers=t.get("num_hidden_layers", 12),
            heads=t.get("num_attention_heads", 4),
            mlp_ratio=t.get("intermediate_size", 4 * text_width) / text_width,
            layer_norm_eps=t.get("layer_norm_eps", 1e-5),
        ),
        projection_dim=hf.get("projection_dim", 256),
        projection_hidden_dim=hf.get("projection_intermediate_dim", 4096),
        logit_scale_init=hf.get("logit_scale_init_value", 2.6592),
        multi_label_logit_scale=False,
    )


def config_to_hf(cfg: GroupViTConfig) -> dict[str, Any]:
    """Our config -> a transformers `config.json` dict for `GroupViTModel.from_pretrained`."""
    v, t = cfg.vision, cfg.text
    return {
        "architectures": ["GroupViTModel"],
        "model_type": "groupvit",
        CONFIG_KEY: exported_config(cfg),
        "projection_dim": cfg.projection_dim,
        "projection_intermediate_dim": cfg.projection_hidden_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
        "vision_config": {
            "model_type": "groupvit_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "depths": v.depths,
            "num_hidden_layers": sum(v.depths),
            "num_group_tokens": v.num_group_tokens,
            "num_output_groups": [*v.num_output_groups, v.num_output_groups[-1]],
            "num_attention_heads": v.num_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": v.in_chans,
            "hidden_act": "gelu",
            "layer_norm_eps": v.layer_norm_eps,
            "assign_eps": v.assign_eps,
            "assign_mlp_ratio": list(v.assign_mlp_ratio),
        },
        "text_config": {
            "model_type": "groupvit_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": t.layer_norm_eps,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        },
    }


# --------------------------------------------------------------------------- files


def _inert_class(qualified_name: str) -> type:
    """A stand-in for a pickled class we will not import: it records its arguments and does nothing."""
    module, _, name = qualified_name.rpartition(".")

    def init(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def setstate(self, state: Any) -> None:
        self.state = state

    return type(name, (), {"__module__": module, "__init__": init, "__setstate__": setstate})


def _pickle_globals(path: Path) -> list[str]:
    """Names a plain (non-zip) pickle imports, read from its opcodes without running it."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle, or a damaged one: torch.load reports it below
        pass
    return names


def _check_declared_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose records declare far more bytes than the file holds (a zip bomb: torch.save
    stores records uncompressed) or than memory can take, from its directory, before any record is inflated."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({e})") from None
    on_disk = path.stat().st_size
    if declared > 4 * on_disk + (64 << 20):
        raise CheckpointError(f"{path} declares {file_size(declared)} of records in a {file_size(on_disk)} file (a "
                              "zip bomb?); refusing to inflate it")  # fmt: skip
    try:
        check_memory(declared, f"reading {path}", "use a machine with more memory")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with `weights_only=True`; objects of unknown classes (e.g. an OmegaConf config in a
    training checkpoint) load as inert placeholders instead of running their code."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        _check_declared_sizes(path)
        try:
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as e:  # a damaged zip directory
            raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({e})") from None
    else:
        unknown = _pickle_globals(path)
    code = [g for g in unknown if g.split(".")[0] in _CODE_MODULES or g in {f"builtins.{b}" for b in _CODE_BUILTINS}]
    if code:
        raise CheckpointError(
            f"{path} would call {', '.join(code)} when unpickled; refusing to load it. "
            "Only load checkpoints from sources you trust, and prefer .safetensors files."
        )
    try:
        with torch.serialization.safe_globals([(_inert_class(g), g) for g in unknown]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = re.search(r"WeightsUnpickler error: (.*?)(?:\n\n|$)", str(e), re.S)
        reason = detail.group(1).strip() if detail else (str(e).strip().splitlines() or [""])[0]
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({reason})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors; it may be truncated ({e})") from None


def _state_dict_from_pickle(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected {{'model': state_dict}} as NVlabs writes)")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, "config")
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a transformers config")
    return data


def _json_metadata(text: str | None, path: Path, what: str = "the config") -> Any:
    try:
        return parse_json(text or "", f"{path}: {what} in its metadata")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


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
        hf_config = _read_json(config_file)
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
        source, metadata = _read_safetensors(path)
        if metadata.get("format") == FORMAT_TAG:
            stored = _json_metadata(metadata.get("config"), path)
            settings = metadata.get("test_settings")
    else:
        obj = safe_torch_load(path)
        source = _state_dict_from_pickle(obj, path)
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
    try:
        stored = _json_metadata(recorded, path, "the test settings") if isinstance(recorded, str) else recorded
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


def __getattr__(name: str) -> Any:
    """`groupvit.checkpoint.load_model`, as before: it moved up to `groupvit.factory`, which imports this module, so
    it is looked up when asked for rather than imported here (an import would run upward)."""
    if name == "load_model":
        return importlib.import_module("groupvit.factory").load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
