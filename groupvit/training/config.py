"""Training configuration: one typed dataclass, loadable from YAML, overridable with key=value."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import MAX_COUNT, MAX_MINUTES, MAX_SHORT_SIDE, MAX_TRAIN_BATCH, MAX_WORKERS
from ..config import GroupViTConfig, dataclass_from_dict, located, model_config, read_yaml, section
from ..data.augment import LIGHT_CROP_SCALE, TENSOR_PRESETS
from ..losses import LOSSES, NOUN_LOSSES, NOUN_POSITIVES
from ..templates import TEMPLATE_SETS

# Upper bounds of the training config's sizes (the command line's options have the same).
LIMITS = {"batch_size": MAX_TRAIN_BATCH, "reference_batch": 1 << 20, "accum_steps": 1024, "steps": MAX_COUNT,
          "save_every": MAX_COUNT, "log_every": MAX_COUNT, "eval_every": MAX_COUNT, "eval_images": MAX_COUNT,
          "warmup_steps": MAX_COUNT, "minutes": MAX_MINUTES, "image_size": 1024, "eval_short_side": MAX_SHORT_SIDE,
          "workers": MAX_WORKERS, "shuffle_buffer": 1_000_000, "multi_label": 64}  # fmt: skip


@dataclass
class TrainConfig:
    # what to train
    # model preset name or YAML file (see groupvit/configs); empty: "small", or with `init` the weights' own
    model: str = ""
    # Fine-tuning (docs/training.md): start from these weights (any name or path `load_model` resolves: gcc_yfcc,
    # synthvoc, an NVlabs .pth, a transformers folder, a model.safetensors of ours) instead of random ones; the
    # architecture comes from them. Optimiser and schedule start fresh.
    init: str = ""
    # named parts kept as they are (groupvit.training.finetune.PARTS): text, text_head, image, image_stem,
    # image_stage0, image_stage1, ..., group_tokens, position_embeddings, image_head, heads, temperatures
    freeze: list[str] = field(default_factory=list)
    # learning-rate multiplier for the weights loaded from `init`, against the parts started fresh (biases, heads)
    pretrained_lr_scale: float = 1.0
    # the class names recorded with the saved model (its vocabulary); empty keeps the one `init` records
    classes: list[str] = field(default_factory=list)
    data: str = ""  # webdataset shards ("cc3m/{000000..000436}.tar::yfcc/{...}.tar") or a CSV/TSV of image,caption
    multi_label: int = 3  # K noun prompts per caption for the multi-label loss; 0 turns it off
    tagger: str = "spacy"  # part-of-speech tagger for caption nouns: spacy or pattern
    noun_loss: str = "pooled"  # pooled (the paper) or max_token (nouns scored by the best token; a variant)
    # words never made into noun prompts (the paper: none; groupvit.data.nouns.BOILERPLATE_WORDS is a list of
    # alt-text filler such as "photo", "image", "background", "is")
    noun_stopwords: list[str] = field(default_factory=list)
    # the prompt templates noun prompts are drawn from (groupvit.templates): "full", CLIP's 80 as the paper; "simple",
    # the one the zero-shot protocol names classes with ("a photo of a {}."; a variant, docs/synthvoc.md tenth round)
    noun_templates: str = "full"
    # Variants for small batches, not in the paper (docs/synthvoc.md, eighth round): "sigmoid" replaces both
    # softmax losses with SigLIP's pairwise sigmoid (the model needs logit_bias: true); noun_positives "shared"
    # makes every image whose caption has a prompt's noun a positive for it (the paper: only the prompt's own image);
    # deep_noun_loss > 0 adds a token-level noun loss on the patch tokens before grouping (model patch_head: true),
    # that weight, decayed linearly to zero over the run when deep_noun_decay is set; mosaic_loss > 0 adds that
    # weight of both losses on 2x2 mosaics of the batch, each quadrant's groups against its source image's caption
    # and nouns (MixReorg-style, simplified; needs batch_size >= 4 and a patch grid divisible by 2).
    loss: str = "softmax"
    noun_positives: str = "own"
    deep_noun_loss: float = 0.0
    deep_noun_decay: bool = False
    mosaic_loss: float = 0.0
    # optimisation (spec section 4); lr, warmup_lr and min_lr are for a global batch of `reference_batch`
    # and scale linearly with the actual global batch (batch_size x processes x accum_steps)
    steps: int = 1000
    # > 0: train for this many minutes of wall clock (evaluations excluded) instead of a step count; the
    # schedule then runs on the elapsed share of the budget, as if it were that share of `steps`
    minutes: float = 0.0
    reference_batch: int = 4096
    batch_size: int = 256  # per process
    # micro-batches per step: the losses, BatchNorm and gradients are those of the whole batch (gradient caching,
    # training.loop.train_step) in the memory of one micro-batch; above 1 it costs a second forward pass
    accum_steps: int = 1
    lr: float = 1.6e-3
    warmup_lr: float = 4e-6
    min_lr: float = 4e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 5.0
    # input
    image_size: int = 224
    augment: str = "groupvit"  # groupvit (RandAugment, random erasing), light (crop, flip) or flip (no crop)
    crop_scale: tuple[float, float] = LIGHT_CROP_SCALE  # the light preset's random crop: its share of the area
    workers: int = 4
    shuffle_buffer: int = 10_000
    resampled: bool = True  # shards drawn with replacement per worker; False: each shard once per epoch
    # hold the decoded shards in memory and augment batches with tensor ops in the training process (the "light"
    # or "flip" preset): for data that fits in RAM, such as SynthVOC; no JPEG decoding or loader process per step
    in_memory: bool = False
    # bookkeeping
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    eval_every: int = 0  # zero-shot segmentation every N steps (0: off); needs eval_root
    eval_dataset: str = "voc"
    eval_root: str = ""  # the dataset folder for the evaluation hook, e.g. VOCdevkit/VOC2012
    eval_images: int = 0  # evaluate on the first N images (0: all)
    eval_mode: str = "whole"
    eval_split: str = "val"
    eval_short_side: int = 448  # images resized to this short side (the protocol's 448)
    eval_threshold: float = -1.0  # background threshold; < 0: the dataset's own (0.95 for VOC)
    grad_checkpointing: bool = False
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU), bf16 or fp32
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes kept with checkpoints

    def __post_init__(self) -> None:
        # YAML reads "5e-3" as a string and "1" as an int: coerce to each field's type, or say which key is wrong.
        for f in dataclasses.fields(self):
            value, default = getattr(self, f.name), f.default
            try:
                if isinstance(default, bool):
                    if not isinstance(value, bool):
                        raise ValueError
                elif isinstance(default, int | float | str) and not isinstance(value, type(default)):
                    setattr(self, f.name, type(default)(value))
            except (TypeError, ValueError):
                kind = type(default).__name__
                raise ValueError(f"training config key {f.name!r}: {value!r} is not a {kind}") from None
            if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name)):
                raise ValueError(f"training config key {f.name!r}: {value!r} is not a finite number")
        try:
            beta1, beta2 = (float(b) for b in self.betas)
        except (TypeError, ValueError):
            beta1 = beta2 = -1.0
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must be [beta1, beta2], each in [0, 1), got {self.betas!r}")
        self.betas = (beta1, beta2)
        try:
            low, high = (float(v) for v in self.crop_scale)
        except (TypeError, ValueError):
            low = high = -1.0
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {self.crop_scale!r}")
        self.crop_scale = (low, high)
        words = self.noun_stopwords
        if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"noun_stopwords must be a list of words, e.g. [photo, image], got {words!r}")
        self.noun_stopwords = list(words)
        for key in ("freeze", "classes"):
            names = getattr(self, key)
            if not isinstance(names, list | tuple) or not all(isinstance(w, str) and w for w in names):
                raise ValueError(f"{key} must be a list of names, e.g. [text, image_stem], got {names!r}")
            setattr(self, key, list(names))
        if self.pretrained_lr_scale < 0:
            raise ValueError(f"pretrained_lr_scale must be >= 0, got {self.pretrained_lr_scale}")
        if (self.freeze or self.pretrained_lr_scale != 1.0) and not self.init:
            raise ValueError("freeze and pretrained_lr_scale apply to a fine-tuning run: set init (--init WEIGHTS)")
        counts = ("batch_size", "accum_steps", "steps", "save_every", "log_every", "image_size", "reference_batch")
        low = [f"{key}={getattr(self, key)}" for key in counts if getattr(self, key) < 1]
        if low or self.workers < 0:
            raise ValueError(f"training config: {', '.join(counts)} must be positive and workers >= 0; got "
                             f"{', '.join(low) or f'workers={self.workers}'}")  # fmt: skip
        for key, limit in LIMITS.items():  # sizes are bounded before anything is allocated
            if getattr(self, key) > limit:
                raise ValueError(f"training config: {key}={getattr(self, key):,g} is over the limit of {limit:,}")
        choices = (("noun_loss", self.noun_loss, NOUN_LOSSES), ("loss", self.loss, LOSSES),
                   ("noun_positives", self.noun_positives, NOUN_POSITIVES),
                   ("noun_templates", self.noun_templates, tuple(TEMPLATE_SETS)))  # fmt: skip
        for key, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {value!r}")
        if self.deep_noun_loss < 0:
            raise ValueError(f"deep_noun_loss must be >= 0, got {self.deep_noun_loss}")
        if self.mosaic_loss < 0:
            raise ValueError(f"mosaic_loss must be >= 0, got {self.mosaic_loss}")
        if self.mosaic_loss and self.batch_size < 4:
            raise ValueError(f"mosaic_loss tiles 4 images into one mosaic; batch_size {self.batch_size} is under 4")
        if self.in_memory and self.augment not in TENSOR_PRESETS:
            raise ValueError(f"in_memory data is augmented with {' or '.join(TENSOR_PRESETS)}, got augment: "
                             f"{self.augment}")  # fmt: skip
        if self.minutes < 0:
            raise ValueError(f"minutes must be >= 0, got {self.minutes}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")

    def model_config(self, weights: GroupViTConfig | None = None) -> GroupViTConfig:
        """The model to train: the `model` preset, or with `weights` (the config of `init`'s weights) that one
        with the training-only parts the losses need switched on (they start fresh: groupvit.training.finetune)."""
        cfg = copy.deepcopy(weights) if weights is not None else model_config(self.model or "small")
        if self.multi_label and not cfg.multi_label_logit_scale:
            cfg.multi_label_logit_scale = True  # the multi-label loss has its own temperature
        if weights is not None:
            cfg.logit_bias = cfg.logit_bias or self.loss == "sigmoid"
            cfg.patch_head = cfg.patch_head or bool(self.deep_noun_loss)
        if self.loss == "sigmoid" and not cfg.logit_bias:
            raise ValueError("loss: sigmoid needs the model's learnable biases; set logit_bias: true in the model")
        if self.deep_noun_loss and not cfg.patch_head:
            raise ValueError("deep_noun_loss needs a head for the patch tokens; set patch_head: true in the model")
        side = self.image_size // cfg.vision.patch_size
        if self.mosaic_loss and side % 2:
            raise ValueError(f"mosaic_loss needs an even patch grid; image_size {self.image_size} makes {side}x{side} "
                             f"patches of {cfg.vision.patch_size} pixels")  # fmt: skip
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        data = read_yaml(path)
        train = section(data, "train", path)
        if train is not data and "model" in data:  # the file's own model section is the model it trains
            if "model" in train:
                raise ValueError(f"{path}: both a model section and train.model{located(train, 'model')}; keep one")
            train["model"] = str(path)
        return cls.from_dict(train, overrides)

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
        return dataclass_from_dict(cls, data, overrides or (), what="training config")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["crop_scale"] = list(self.crop_scale)
        return out
