"""Fine-tuning set-up: a model started from trained weights (`init`), its frozen parts and its learning-rate groups.

The architecture comes from the weights; the parts the training losses need and the weights lack (the sigmoid
losses' logit biases, the deep noun loss's patch head, the multi-label temperature) are created fresh. Not in the
paper or the NVlabs code, which train from random weights only (docs/training.md, fine-tuning).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from ..config import GroupViTConfig, model_config
from ..model import GroupViT
from ..settings import TestSettings
from .config import TrainConfig

# The start of the sigmoid losses' biases when a trained model gets them fresh: -8 minimised the image-text sigmoid
# loss on one SynthVOC batch of the shipped model (docs/research/finetune.md); open_clip's -10 is for a random start.
FRESH_LOGIT_BIAS = -8.0
# Model config keys that only training uses: a `model:` that differs from the weights in these is not refused.
TRAINING_ONLY_KEYS = ("logit_bias", "logit_bias_init", "patch_head", "multi_label_logit_scale")


def differences(first: dict, second: dict, first_label: str, second_label: str, prefix: str = "") -> list[str]:
    """'key: A <first_label>, B <second_label>' for every key of `first` (nested dicts flattened) that `second`
    changes."""
    out = []
    for key, value in first.items():
        if isinstance(value, dict) and isinstance(second.get(key), dict):
            out += differences(value, second[key], first_label, second_label, f"{prefix}{key}.")
        elif key in second and second[key] != value:
            out.append(f"{prefix}{key}: {value} {first_label}, {second[key]} {second_label}")
    return out


def check_architecture(cfg: TrainConfig, weights: GroupViTConfig) -> None:
    """Refuse, in one line naming both, a `model:` that is set and describes another architecture than `init`'s
    weights (the keys only training uses aside)."""
    if not cfg.model:
        return
    mine, theirs = model_config(cfg.model).to_dict(), weights.to_dict()
    for key in TRAINING_ONLY_KEYS:
        mine.pop(key), theirs.pop(key)
    changed = differences(mine, theirs, f"in model {cfg.model}", f"in init {cfg.init}")
    if changed:
        raise ValueError(f"model: {cfg.model} disagrees with the weights of init {cfg.init} ({'; '.join(changed[:3])}"
                         f"); leave model unset to take the architecture from the weights")  # fmt: skip


def model_from_init(cfg: TrainConfig, verbose: bool = True) -> tuple[GroupViT, set[str]]:
    """The model to fine-tune: `cfg.init`'s weights in the architecture they record, plus fresh training-only parts;
    and the names of the parameters that came from the weights. Its test settings are the weights' own, with `init`
    recorded and `cfg.classes` as the vocabulary where given."""
    from ..factory import load_model

    loaded = load_model(cfg.init)
    check_architecture(cfg, loaded.config)
    training = cfg.model_config(loaded.config)
    new_bias = training.logit_bias and not loaded.config.logit_bias
    if new_bias:
        training.logit_bias_init = FRESH_LOGIT_BIAS
    model = GroupViT(training)  # every part drawn fresh, then the loaded ones replaced
    weights = loaded.state_dict()
    model.load_state_dict(weights, strict=False)  # the loaded model's keys are a subset: nothing is unexpected
    fresh = sorted(name for name, _ in model.named_parameters() if name not in weights)
    if fresh and verbose:
        bias = f"; logit biases start at {FRESH_LOGIT_BIAS:g}" if new_bias else ""
        print(f"groupvit train: {cfg.init} has no {', '.join(_short(fresh))} (training-only): started fresh{bias}",
              flush=True)  # fmt: skip
    model.test_settings = finetuned_settings(loaded.test_settings, cfg)
    return model, {name for name, _ in model.named_parameters() if name in weights}


def _short(names: list[str]) -> list[str]:
    """Parameter names with a module's own parameters shown once ('patch_projection.*')."""
    out: list[str] = []
    for name in names:
        head = name.split(".")[0]
        short = f"{head}.*" if "." in name else name
        if short not in out:
            out.append(short)
    return out


def finetuned_settings(settings: TestSettings, cfg: TrainConfig) -> TestSettings:
    """The weights' test settings for the fine-tuned model: sizes, mode and threshold kept (re-calibrate the
    threshold with `groupvit eval --calibrate-background` on your own labelled images), `init` recorded, and a new
    vocabulary (`classes`) in place of the old one."""
    classes = tuple(cfg.classes) if cfg.classes else settings.classes
    about = f"fine-tuned by `groupvit train` from {cfg.init}" + (f" ({settings.about})" if settings.about else "")
    return dataclasses.replace(settings, classes=classes, init=cfg.init, about=about)


def model_from_checkpoint(state: dict) -> GroupViT:
    """The architecture and test settings a fine-tuning run's checkpoint records (its weights are loaded later)."""
    model = GroupViT(GroupViTConfig.from_dict(state["model_config"]))
    if state.get("test_settings"):
        model.test_settings = TestSettings.from_dict(state["test_settings"])
    return model


def part_selectors(model: GroupViT) -> dict[str, Callable[[str], bool]]:
    """Named parts of a model that `freeze` can hold still: name -> test on a parameter (or buffer) name."""
    heads = ("visual_projection.", "text_projection.")
    parts: dict[str, Callable[[str], bool]] = {
        "text": lambda n: n.startswith("text."),
        "text_head": lambda n: n.startswith("text_projection."),
        "image": lambda n: n.startswith("visual."),
        "image_stem": lambda n: n.startswith(("visual.patch_embed.", "visual.pos_embed")),
        "position_embeddings": lambda n: n in ("visual.pos_embed", "text.positional_embedding"),
        "group_tokens": lambda n: n.endswith(".group_token"),
        "image_head": lambda n: n.startswith("visual_projection."),
        "heads": lambda n: n.startswith(heads),
        "temperatures": lambda n: n in ("logit_scale", "multi_label_logit_scale"),
    }
    block = 0
    for i, stage in enumerate(model.visual.stages):
        parts[f"image_stage{i}"] = lambda n, p=f"visual.stages.{i}.": n.startswith(p)
        for j in range(len(stage.blocks)):  # transformer blocks counted through the stages: image_block0, ...
            parts[f"image_block{block}"] = lambda n, p=f"visual.stages.{i}.blocks.{j}.": n.startswith(p)
            block += 1
    return parts


def freeze(model: GroupViT, names: list[str]) -> None:
    """Hold the named parts still: no gradients, and their BatchNorm statistics (the projection heads') kept as
    loaded (momentum 0). Unknown part names are refused, listing the valid."""
    parts = part_selectors(model)
    unknown = [n for n in names if n not in parts]
    if unknown:
        raise ValueError(f"freeze: unknown part {', '.join(map(repr, unknown))}; valid for this model: "
                         f"{', '.join(parts)}")  # fmt: skip
    chosen = [parts[n] for n in names]
    for name, p in model.named_parameters():
        if any(select(name) for select in chosen):
            p.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(select(f"{name}.") for select in chosen):
            module.momentum = 0.0  # running = running * (1 - 0) + 0 * batch: unchanged


def parameter_groups(model: nn.Module, weight_decay: float, pretrained: set[str] | None = None,
                     pretrained_lr_scale: float = 1.0) -> list[dict]:  # fmt: skip
    """No weight decay for 1-D parameters and biases; everything else, logit scales, position embeddings and
    group tokens included, is decayed as in the reference (spec 4 and checklist item 11). Frozen parameters are
    left out. With `pretrained` (names loaded from `init`), those get their own groups whose learning rate is
    `pretrained_lr_scale` times the schedule's (`lr_scale`; `set_learning_rate`)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = not (p.ndim == 1 or name.endswith(".bias"))
        groups.setdefault((pretrained is not None and name in pretrained, decayed), []).append(p)
    out = []
    for loaded in (False, True) if pretrained is not None else (False,):
        for decayed in (True, False):
            out.append({"params": groups.get((loaded, decayed), []), "weight_decay": weight_decay if decayed else 0.0,
                        "lr_scale": pretrained_lr_scale if loaded else 1.0, "pretrained": loaded})  # fmt: skip
    return [g for g in out if g["params"]] if pretrained is not None else out


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate for this step, times each group's `lr_scale` (pretrained_lr_scale for loaded weights)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def pretrained_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the parameters in the optimiser's groups of loaded weights, for the checkpoint (a resumed run
    rebuilds the same groups from them)."""
    ids = {id(p) for g in optimizer.param_groups if g.get("pretrained") for p in g["params"]}
    return [name for name, p in model.named_parameters() if id(p) in ids]
