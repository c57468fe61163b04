"""Typed model configuration: dataclasses that load from and save to YAML/JSON.

The field names follow the specification (`docs` and `../shared/docs/groupvit-spec.md` section 1-2).
A preset is a YAML file in `groupvit/configs/`; `model_config("gcc_yfcc")` loads one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .checks import input_file

GROUPING_INITS = ("reference", "fan_in")  # VisionConfig.grouping_init
MAX_CONFIG_BYTES = 1 << 20  # a YAML or JSON settings file (configs, thresholds, word lists)
MAX_DEPTH = 32  # nesting of a settings file; ours need 3 (a deeper one would end in a RecursionError)
# Top-level sections of a settings file: a model (`info`, `train`), training (`train`), scenes (`demo`).
SECTIONS = ("model", "train", "scene")


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
        check_fields(self, "model config vision.", positive=("image_size", "patch_size", "in_chans", "width", "depths",
                     "num_heads", "num_output_groups", "mlp_ratio", "assign_mlp_ratio"))  # fmt: skip
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


TEXT_POOLS = ("eot", "max")


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
    # "eot": the feature at the end-of-text token (the paper, CLIP). "max": the largest value of each channel over
    # the tokens after start of text up to end of text, a variant for small text towers, where the EOT feature is at
    # first an average dominated by a prompt's template words, so "a photo of a chair." and "... person." start alike.
    pool: str = "eot"

    def __post_init__(self) -> None:
        if self.pool not in TEXT_POOLS:
            raise ValueError(f"text.pool must be one of {TEXT_POOLS}, got {self.pool!r}")
        check_fields(self, "model config text.", positive=("vocab_size", "context_length", "width", "layers", "heads",
                                                           "mlp_ratio"))  # fmt: skip
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
    # Training-only extras (variants, not in the paper; docs/synthvoc.md): learnable biases for SigLIP's sigmoid
    # loss (`loss: sigmoid`), and a projection head for the patch tokens entering the first grouping block (the
    # deep noun loss). Neither is used at test time.
    logit_bias: bool = False
    logit_bias_init: float = -10.0  # open_clip's SigLIP start; -5 did worse on SynthVOC (docs/synthvoc.md, 11th round)
    patch_head: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "model config ", positive=("projection_dim", "projection_hidden_dim"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupViTConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a model config holds key: value settings, got {data!r}")
        where, data = data, dict(data)
        unknown = sorted((k for k in data if k not in {f.name for f in dataclasses.fields(cls)}), key=str)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}{located(where, unknown[0])}")
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
        return cls.from_dict(section(read_yaml(path), "model", path))

    def to_json(self) -> str:
        """`to_dict` as indented JSON (stored in our .safetensors metadata)."""
        return json.dumps(self.to_dict(), indent=2)


def dataclass_from_dict(kind: type, values: dict[str, Any], overrides: Sequence[str] = (), what: str = "config") -> Any:
    """`kind(**values)` after applying `key=value` overrides (values read as YAML: 0.5, [1, 2], true); unknown keys
    are an error that lists the known ones (and, for values read from a file, names its file and line)."""
    if not isinstance(values, dict):
        raise ValueError(f"{what}: expected key: value settings, got {values!r}")
    where = {k: located(values, k) for k in values}
    values = dict(values)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{what} override {item!r} is not key=value")
        values[key.strip()] = parse_yaml(value, f"{what} override {item!r}")
        where[key.strip()] = f" (override {item!r})"
    fields = sorted(f.name for f in dataclasses.fields(kind))
    unknown = sorted((k for k in values if k not in fields), key=str)
    if unknown:
        raise ValueError(f"unknown keys in {what}: {unknown}{where.get(unknown[0], '')}; known: {fields}")
    return kind(**{k: plain(v) for k, v in values.items()})


def plain(value: Any) -> Any:
    """`value` with every `Settings` mapping in it made a plain dict (a config pickled into a checkpoint must load
    with torch.load(weights_only=True), which knows dicts, not our class)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


class Settings(dict):
    """A mapping read by `parse_yaml`, which remembers its file and the line of each key, for messages."""

    source: str = ""
    lines: dict[Any, int]


def located(data: Any, key: Any) -> str:
    """' (FILE, line N)' for a key of a mapping read from a file, else ''."""
    line = getattr(data, "lines", {}).get(key)
    return f" ({data.source}, line {line})" if line else ""


class Refused(yaml.MarkedYAMLError):
    """Valid YAML that `StrictLoader` refuses to read as settings."""


class StrictLoader(yaml.SafeLoader):
    """YAML that can only mean one thing: a duplicate key, a non-finite number (.inf, .nan) or nesting deeper than
    MAX_DEPTH is an error with its line, where PyYAML keeps the last value, reads inf, or recurses until Python
    stops it."""

    source = "YAML"

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth = getattr(self, "depth", 0) + 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
        data = Settings()
        data.source, data.lines = self.source, {}
        yield data
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                continue  # not hashable: PyYAML says so below
            if key in data.lines:
                problem = f"duplicate key {key!r} (also on line {data.lines[key]})"
                raise Refused(None, None, problem, key_node.start_mark)
            data.lines[key] = key_node.start_mark.line + 1
        data.update(self.construct_mapping(node))

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise Refused(None, None, f"{node.value} is not a finite number", node.start_mark)
        return value


StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_yaml_map)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data, read strictly (`StrictLoader`); an error names `source` (a file, an override) and the
    line."""
    loader = StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark is not None and "\n" in text.strip() else source
        problem = getattr(e, "problem", None) or (str(e).splitlines() or ["unreadable"])[0]
        message = f"{where}: {problem}" if isinstance(e, Refused) else f"{where}: not valid YAML ({problem})"
        raise ValueError(message) from None
    except RecursionError:
        raise ValueError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file of key: value settings (empty: {}); every problem names the file."""
    path = Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(f"config file {path} not found")
    input_file(path, "config file", MAX_CONFIG_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read config file {path} ({getattr(e, 'strerror', None) or e})") from None
    data = parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected key: value settings, found a {type(data).__name__}")
    return data


def check_sections(data: dict[str, Any], source: str | Path) -> None:
    """Every top-level key of a settings file with sections is one of SECTIONS: a misspelt section would otherwise be
    ignored, and the defaults run instead of what it says."""
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ValueError(f"{source}: unknown section {unknown[0]!r}{located(data, unknown[0])}; a settings file has "
                         f"the sections {', '.join(SECTIONS)}")  # fmt: skip


def section(data: dict[str, Any], name: str, source: str | Path) -> dict[str, Any]:
    """The `name` section of a settings file with sections (SECTIONS, checked), or the whole file when it has
    none."""
    sections = [k for k in data if k in SECTIONS and isinstance(data[k], dict)]
    if not sections:
        return data
    check_sections(data, source)
    if name not in data:
        raise ValueError(f"{source} has no {name} section (it has {', '.join(sections)})")
    return data[name]


def parse_json(text: str, source: str) -> Any:
    """JSON text -> data, as strictly as `parse_yaml`: duplicate keys, NaN, Infinity, numbers that overflow to
    infinity and nesting deeper than MAX_DEPTH are errors naming `source`."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in items:
            if key in data:
                raise ValueError(f"{source}: duplicate key {key!r}")
            data[key] = value
        return data

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{source}: {text} is not a finite number")
        return value

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_float=number, parse_constant=number)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}, line {e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise ValueError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack += [(child, depth + 1) for child in children]
    return data


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON settings file, checked with stat first and read with `parse_json`."""
    path = input_file(path, what, MAX_CONFIG_BYTES)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} {path} ({getattr(e, 'strerror', None) or e})") from None
    return parse_json(text, str(path))


def check_fields(obj: Any, prefix: str, positive: Sequence[str] = ()) -> None:
    """Every field of the dataclass `obj` (named `prefix` + field in errors) of its default's kind, and those in
    `positive` above 0 (each item of a list): YAML and JSON hold whatever was written, and a wrong value should name
    its key, not fail in the model. YAML reads 1e-5 as a string: such a string is taken as the number it spells."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if type(default) is float and isinstance(value, str):
            try:
                value = float(value)
                setattr(obj, f.name, value)
            except ValueError:
                pass
        if not _fits(value, default):
            raise ValueError(f"{prefix}{f.name}: {value!r} is not {_kind(default)}")
        if not all(math.isfinite(v) for v in (value if isinstance(value, list | tuple) else [value])
                   if isinstance(v, float)):  # fmt: skip
            raise ValueError(f"{prefix}{f.name}: {value!r} is not a finite number")
        if f.name in positive and any(v <= 0 for v in (value if isinstance(value, list | tuple) else [value])):
            raise ValueError(f"{prefix}{f.name} must be positive, got {value!r}")


def _fits(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int | float) and isinstance(value, bool):
        return False
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple) and (not default or all(_fits(v, default[0]) for v in value))
    return True  # nested configs check themselves


def _kind(default: Any) -> str:
    if isinstance(default, list | tuple):
        return f"a list of {'integers' if default and type(default[0]) is int else 'numbers'}"
    kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return kinds.get(type(default), type(default).__name__)


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
    return GroupViTConfig.from_dict(section(parse_yaml(preset.read_text(), f"preset {name_or_path}"), "model", preset))
