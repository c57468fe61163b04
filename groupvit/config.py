"""Typed model configuration: dataclasses that load from and save to YAML/JSON.

The field names follow the specification (`docs` and `../shared/docs/groupvit-spec.md` section 1-2).
A preset is a YAML file in `groupvit/configs/`; `model_config("gcc_yfcc")` loads one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

GROUPING_INITS = ("reference", "fan_in")  # VisionConfig.grouping_init


@dataclass
class VisionConfig:
    """The image encoder: ViT patch embedding, then stages of transformer blocks; stage i appends
    `num_group_tokens[i]` learnable group tokens and ends with a grouping block that merges the image tokens
    into `num_output_groups[i]` segments (spec 1). Defaults are the released GCC+YFCC model (64 then 8)."""

    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 384
    depths: list[int] = field(default_factory=lambda: [6, 3, 3])
    num_heads: int = 6
    num_group_tokens: list[int] = field(default_factory=lambda: [64, 8, 0])
    num_output_groups: list[int] = field(default_factory=lambda: [64, 8])
    mlp_ratio: float = 4.0
    # (token-mixing, channel) MLP ratios of the grouping block: hidden sizes width*0.5 and width*4.
    assign_mlp_ratio: tuple[float, float] = (0.5, 4.0)
    assign_eps: float = 1.0
    hard_assignment: bool = True
    gumbel: bool = True
    gumbel_tau: float = 1.0
    drop_path_rate: float = 0.1
    layer_norm_eps: float = 1e-5
    # "reference": every Linear trunc-normal(0.02), as the paper. "fan_in": the grouping blocks' and group
    # projectors' Linear weights normal(0, 1/fan_in) instead, a variant for narrow models, where 0.02 leaves the
    # image a few percent of each segment token at the start (docs/synthvoc.md).
    grouping_init: str = "reference"

    def __post_init__(self) -> None:
        if self.grouping_init not in GROUPING_INITS:
            raise ValueError(f"vision.grouping_init must be one of {GROUPING_INITS}, got {self.grouping_init!r}")
        self.depths = list(self.depths)
        self.num_group_tokens = list(self.num_group_tokens)
        self.num_output_groups = list(self.num_output_groups)
        self.assign_mlp_ratio = tuple(self.assign_mlp_ratio)
        if len(self.num_group_tokens) != len(self.depths):
            raise ValueError(
                f"vision.num_group_tokens {self.num_group_tokens} needs one entry per stage "
                f"(depths {self.depths}); use 0 for the last stage"
            )
        grouping_stages = [n for n in self.num_group_tokens if n > 0]
        if len(self.num_output_groups) != len(grouping_stages):
            raise ValueError(
                f"vision.num_output_groups {self.num_output_groups} needs one entry per stage with "
                f"group tokens ({len(grouping_stages)})"
            )
        if self.width % self.num_heads:
            raise ValueError(f"vision.width {self.width} is not divisible by num_heads {self.num_heads}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    """The CLIP-style causal text transformer (spec 2); the embedding is taken at the end-of-text token."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 256
    layers: int = 12
    heads: int = 4
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text.width {self.width} is not divisible by heads {self.heads}")


@dataclass
class GroupViTConfig:
    """A whole GroupViT: both encoders plus the projection heads into the shared embedding space.
    `model_config(name)` loads a preset; `from_dict`/`from_yaml`/`to_dict`/`to_json` convert."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    projection_dim: int = 256
    projection_hidden_dim: int = 4096
    logit_scale_init: float = 2.659260036932778  # ln(1 / 0.07)
    # The multi-label loss has its own temperature (GCC+YFCC release); absent in GCC+RedCaps.
    multi_label_logit_scale: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupViTConfig:
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        vision = _build(VisionConfig, data.pop("vision", {}), "vision")
        text = _build(TextConfig, data.pop("text", {}), "text")
        return cls(vision=vision, text=text, **data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready values (lists, not tuples); `from_dict` reads them back."""
        out = dataclasses.asdict(self)
        out["vision"]["assign_mlp_ratio"] = list(self.vision.assign_mlp_ratio)
        return out

    @classmethod
    def from_yaml(cls, path: str | Path) -> GroupViTConfig:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        return cls.from_dict(data.get("model", data))

    def to_json(self) -> str:
        """`to_dict` as indented JSON (stored in our .safetensors metadata)."""
        return json.dumps(self.to_dict(), indent=2)


def dataclass_from_dict(kind: type, values: dict[str, Any], overrides: Sequence[str] = (), what: str = "config") -> Any:
    """`kind(**values)` after applying `key=value` overrides (values read as YAML: 0.5, [1, 2], true); unknown keys
    are an error that lists the known ones."""
    values = dict(values)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what} override {item!r} is not key=value")
        values[key.strip()] = yaml.safe_load(value)
    fields = sorted(f.name for f in dataclasses.fields(kind))
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown keys in {what}: {unknown}; known: {fields}")
    return kind(**values)


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    if isinstance(values, kind):
        return values
    return dataclass_from_dict(kind, values, what=f"model config section '{section}'")


def list_presets() -> list[str]:
    """Names of the model presets shipped in `groupvit/configs/`."""
    root = resources.files("groupvit") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in root.iterdir() if p.name.endswith(".yaml"))


def model_config(name_or_path: str | Path) -> GroupViTConfig:
    """A preset by name (`gcc_yfcc`, `gcc_redcaps`, `small`) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return GroupViTConfig.from_yaml(path)
    preset = resources.files("groupvit") / "configs" / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ValueError(f"unknown model preset '{name_or_path}'; choose one of {list_presets()} or give a YAML file")
    with preset.open() as f:
        data = yaml.safe_load(f)
    return GroupViTConfig.from_dict(data.get("model", data))
