"""How a model is meant to be run at test time, stored with its weights.

The official protocol (spec 5.1) resizes to a 448 short side, slides 448 crops with stride 224 and calls a pixel
background under 0.95: right for the released 224-pixel models. A model trained at another size is run at the size
it was trained for (a SynthVOC model at 64 pixels would otherwise see a token grid 7 times wider than in training),
and a model calibrated on its own data (the shipped `synthvoc`) carries its calibrated threshold and naming.

`TestSettings.for_config` gives the protocol's settings scaled to the model's training size (448 = 2 x 224 for the
released models); `save_model` writes a model's `test_settings` into the file and `load_model` reads them back.
`groupvit segment`, `eval`, `classify` and the app use them unless told otherwise (`--short-side`, `--mode`,
`--background-threshold`, the naming options).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .config import GroupViTConfig
from .naming import Naming

MODES = ("slide", "whole")
# The settings a command reports, as it names them.
LABELS = {"short_side": "short side", "mode": "mode", "background_threshold": "background threshold",
          "naming": "naming", "classes": "classes"}  # fmt: skip
# What a model trained on a kind of images knows, and a test of whether an image [H, W, ...] can be one of them:
# SynthVOC scenes are square (96 px by default).
KINDS = {"synthvoc": ("SynthVOC's emoji-like scenes of the 20 VOC classes, not photographs",
                      lambda shape: shape[0] == shape[1])}  # fmt: skip
FROM_MODEL = object()  # an argument default: "what the model's test settings say"
# Background thresholds of the released evaluation configs (spec 5.3); VOC's is the one for a model recording none.
BACKGROUND_THRESHOLDS = {"voc": 0.95, "context": 0.35, "coco_object": 0.95}


@dataclass(frozen=True)
class TestSettings:
    """A model's test-time settings.

    short_side: images are resized so that their short side is this (the protocol: 448 for 224-pixel models).
    mode, crop_size, stride: 'slide' windows of crop_size at stride, or 'whole' (one pass).
    background_threshold: None for the dataset's (VOC 0.95); a number where the model was calibrated.
    naming: how groups become classes or background (groupvit.naming; the default is the official protocol).
    classes: the vocabulary the model was trained to know (a suggestion for the app and `segment`; may be empty).
    about: one line on what the model is, for the app's page.
    trained_on: the kind of images it knows ("synthvoc" for SynthVOC's scenes; empty for photographs).
    init: the weights it was fine-tuned from (`groupvit train --init`; empty for a model trained from scratch).
    """

    __test__ = False  # not a pytest class

    short_side: int = 448
    mode: str = "slide"
    crop_size: int = 448
    stride: int = 224
    background_threshold: float | None = None
    naming: Naming = dataclasses.field(default_factory=Naming)
    classes: tuple[str, ...] = ()
    about: str = ""
    trained_on: str = ""  # "synthvoc" for SynthVOC scenes: the app then shows SynthVOC scenes as examples
    init: str = ""  # what `groupvit train --init` started from (provenance, not a setting)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"test mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in ("short_side", "crop_size", "stride"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"test setting {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.background_threshold is not None and not 0.0 <= self.background_threshold <= 1.0:
            raise ValueError(f"test setting background_threshold must be in [0, 1], got {self.background_threshold}")
        object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def for_config(cls, config: GroupViTConfig) -> TestSettings:
        """The protocol's settings scaled to the model's training size: short side and crop twice the training
        image size, stride the training size (448, 448, 224 for the released 224-pixel models)."""
        size = config.vision.image_size
        return cls(short_side=2 * size, crop_size=2 * size, stride=size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"naming": self.naming.to_dict(), "classes": list(self.classes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestSettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown test settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        naming = data.get("naming") or {}
        if not isinstance(naming, dict):
            raise ValueError(f"test setting naming must be a mapping, got {naming!r}")
        return cls(**(data | {"naming": Naming(**naming)}))

    def merged(self, **changes: Any) -> TestSettings:
        """These settings with the given ones that are not None (command-line options over a model's)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def recorded(self, config: GroupViTConfig) -> bool:
        """Whether these differ from the protocol's for the model's size (so were recorded with the model)."""
        return self != TestSettings.for_config(config)

    def origins(self, config: GroupViTConfig, given: dict[str, str]) -> str:
        """Where each setting of a run comes from, these being the model's: `given` maps a setting to the option
        that gave it ({"background_threshold": "--dataset context"}); the others were recorded with the model where
        they differ from the protocol's for its size, else they are the protocol's."""
        protocol = TestSettings.for_config(config)
        groups: dict[str, list[str]] = {}
        for name, label in LABELS.items():
            if name in given:
                where = f"from {given[name]}"
            else:
                where = (
                    "recorded with the model" if getattr(self, name) != getattr(protocol, name) else "the protocol's"
                )
            groups.setdefault(where, []).append(label)
        return "; ".join(f"{', '.join(labels)}: {where}" for where, labels in groups.items())

    def unlike(self, shape: tuple[int, ...]) -> str | None:
        """What the model knows, when an image of this shape [H, W, ...] cannot be of the kind it was trained on
        (a photograph given to a SynthVOC model); else None."""
        kind = KINDS.get(self.trained_on)
        if kind is None or kind[1](shape):
            return None
        return f"this model knows {kind[0]}; an image of {shape[1]}x{shape[0]} pixels is not one of them"

    def describe(self, background: str | None = None) -> str:
        """One line for users: what these settings do (`background`: the threshold as a caller resolved it)."""
        recorded = "the dataset's" if self.background_threshold is None else f"{self.background_threshold:g}"
        threshold = background or recorded
        window = f"{self.crop_size}-pixel crops at stride {self.stride}" if self.mode == "slide" else "one pass"
        naming = "" if self.naming.official else ", a naming variant"
        return f"short side {self.short_side}, {self.mode} mode ({window}), background threshold {threshold}{naming}"


@dataclass(frozen=True)
class Requested:
    """The test settings a caller asks for; None (and background=True) leaves each to the model.

    dataset: use its background threshold (BACKGROUND_THRESHOLDS, or `dataset_threshold`) unless
        background_threshold is given.
    dataset_threshold: the threshold of a `dataset` that BACKGROUND_THRESHOLDS does not hold (a benchmark of
        groupvit.evaluation.datasets passes its own).
    background: False for no background class at all.
    """

    short_side: int | None = None
    mode: str | None = None
    background_threshold: float | None = None
    dataset: str | None = None
    dataset_threshold: float | None = None
    background: bool = True
    naming: Naming | None = None


@dataclass(frozen=True)
class Resolved:
    """A run's test settings: the model's under the caller's, the background threshold the run uses (None: no
    background), where each value came from (one line, as `TestSettings.origins` words it), and the class names:
    the caller's, else the vocabulary the model records (empty if it records none)."""

    settings: TestSettings
    background_threshold: float | None
    origins: str
    classes: tuple[str, ...] = ()


def resolve_settings(
    recorded: TestSettings,
    config: GroupViTConfig,
    requested: Requested | None = None,
    classes: Any = None,
    sources: dict[str, str] | None = None,
) -> Resolved:
    """The one place a model's recorded test settings meet what a caller asks for (`requested`; `classes`, the
    caller's class names or None for the model's vocabulary, gives `Resolved.classes` and its origin). The background
    threshold is the caller's, else the dataset's (BACKGROUND_THRESHOLDS or `dataset_threshold`), else the model's,
    else VOC's; with `background=False` there is none. `sources` names where each given value came from for the
    origins line (a setting's name, or "dataset" / "no_background", to an option: {"short_side": "--short-side"});
    unnamed ones come "from the caller"."""
    sources, requested = sources or {}, requested or Requested()
    short_side, mode, background_threshold = requested.short_side, requested.mode, requested.background_threshold
    dataset, background, naming = requested.dataset, requested.background, requested.naming
    threshold = background_threshold
    if threshold is None and dataset:
        threshold = (
            BACKGROUND_THRESHOLDS[dataset] if requested.dataset_threshold is None else requested.dataset_threshold
        )
    official = naming is None or naming.official
    settings = recorded.merged(short_side=short_side, mode=mode, background_threshold=threshold,
                               naming=None if official else naming)  # fmt: skip
    threshold = settings.background_threshold
    threshold = None if not background else BACKGROUND_THRESHOLDS["voc"] if threshold is None else threshold
    values = {"short_side": short_side, "mode": mode, "classes": classes}
    given = {name: sources.get(name, "the caller") for name, value in values.items() if value is not None}
    if background_threshold is not None:
        given["background_threshold"] = sources.get("background_threshold", "the caller")
    elif not background or dataset:
        given["background_threshold"] = sources.get("no_background", "the caller") if not background else (
            sources.get("dataset", f"dataset {dataset}"))  # fmt: skip
    if not official:
        given["naming"] = sources.get("naming", "the caller")
    names = tuple(classes) if classes is not None else recorded.classes
    return Resolved(settings, threshold, recorded.origins(config, given), names)
