"""The one door to a model: released weights by name, a checkpoint file of any layout, or an ONNX export folder.

Above `checkpoint.py` (the layouts), `pretrained.py` (names, downloads, the cache) and `runtime.py` (ONNX), none of
which imports this module.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import read_checkpoint_and_settings, save_model
from .config import GroupViTConfig, model_config
from .model import GroupViT
from .pretrained import random_init, resolve
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


def describe_model(weights: str, preset: str | None = None, source: str | None = None) -> str:
    """What `groupvit info` prints: the config, parameter count and runtime, the grouping at the training size,
    the test settings and where they come from, and what the model is. `weights` is anything `load_model` reads, or
    a config YAML; `preset` describes that architecture with random weights instead."""
    # One name, one meaning: a name is weights (synthvoc is the shipped model); architectures come by preset.
    if preset or weights.endswith((".yaml", ".yml")):
        model = GroupViT(model_config(preset or weights)).eval()
    else:
        model = load_model(weights, source=source)
    cfg = model.config
    size = cfg.vision.image_size
    with torch.no_grad():
        groups = model.encode_image_groups(torch.zeros(1, 3, size, size))
    count = getattr(model, "parameter_count", None) or sum(p.numel() for p in model.parameters())
    stages = " -> ".join(f"{m.shape[-1]} tokens into {m.shape[1]} groups" for m in groups.assignments)
    settings = model.test_settings
    origin = "recorded with the model" if settings.recorded(cfg) else "the protocol's for its size"
    classes = f"; classes: {', '.join(settings.classes)}" if settings.classes else ""
    lines = [
        cfg.to_json(),
        f"parameters: {count:,}; runtime: {model.runtime}",
        f"grouping at {size}x{size}: {stages}; embedding dim {groups.image_embeds.shape[-1]}",
        f"test settings ({origin}): {settings.describe()}{classes}",
        *([f"about: {settings.about}"] if settings.about else []),
        *([f"fine-tuned from: {settings.init}"] if settings.init else []),
    ]
    return "\n".join(lines)


def model_for_run(
    checkpoint: str | None,
    random_init_preset: str | None = None,
    device: str = "cpu",
    source: str | None = None,
    compile: bool = False,
    command: str = "",
) -> GroupViT:
    """The model a command runs (`segment`, `classify`, `eval`): `checkpoint` as `load_model` reads it, or untrained
    random weights of a preset (with a warning on stderr), on `device`; with `compile`, its encoders compiled."""
    if not checkpoint and not random_init_preset:
        raise ValueError(
            "no --checkpoint given: pass weights by name (gcc_yfcc, gcc_redcaps for photographs; synthvoc, shipped, "
            "for SynthVOC scenes; see `groupvit list`), an NVlabs .pth, a transformers folder or a .safetensors file; "
            "--random-init PRESET for untrained weights"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if random_init_preset:
        print(f"groupvit {command}: warning: untrained random weights ({random_init_preset} architecture)",
              file=sys.stderr)  # fmt: skip
        model = random_init(random_init_preset, device=device)
    else:
        model = load_model(checkpoint, device=device, source=source)
    return model.compile_encoders() if compile else model


@dataclass(frozen=True)
class ModelChoice:
    """The model a command runs, as its options name it (`segment`, `classify`, `eval`): `checkpoint` as
    `load_model` reads it, or untrained weights of the `random_init` preset; on `device`, compiled or not, and the
    autocast precision (`fp16` on GPU, `bf16`)."""

    checkpoint: str | None = None
    random_init: str | None = None
    device: str = "cpu"
    source: str | None = None
    compile: bool = False
    fp16: bool = False
    bf16: bool = False
    command: str = ""

    def load(self) -> GroupViT:
        return model_for_run(self.checkpoint, self.random_init, device=self.device, source=self.source,
                             compile=self.compile, command=self.command)  # fmt: skip

    def autocast_dtype(self) -> torch.dtype | None:
        if self.fp16 and self.device != "cuda":
            raise ValueError(
                "--fp16 applies on GPU only (--device cuda); on CPU use --bf16 (fast with AVX512-BF16/AMX)"
            )
        return torch.float16 if self.fp16 else torch.bfloat16 if self.bf16 else None

    def name(self) -> str:
        """What the outputs record as the weights."""
        return self.checkpoint or f"random-init {self.random_init}"


def convert_model(src: str, dst: str | Path, layout: str = "groupvit", dtype: str = "float32",
                  source: str | None = None) -> Path:  # fmt: skip
    """`groupvit convert`: the weights `src` names (anything `load_model` reads) written to `dst` in `layout`
    (groupvit, hf or nvlabs); ours may store float16 or bfloat16 (`dtype`), read back as float32."""
    if dtype != "float32" and layout != "groupvit":  # refused before the weights are read
        raise ValueError(f"--dtype {dtype} applies to our .safetensors layout (--to groupvit) only")
    stored = None if dtype == "float32" else getattr(torch, dtype)
    return save_model(load_model(src, source=source), dst, layout=layout, dtype=stored)
