"""The demo's recipes and what its report compares them with: below both `demo.py` (which trains by them) and
`report.py` (which names a run's departures from the paper's)."""

from __future__ import annotations

from .naming import SCLIP_WORDS, Naming

# Naming variants (groupvit.naming) tried on calib, each with its own threshold; the best is reported beside the
# headline, which keeps the official naming, and is what the trained model records (so `groupvit segment` and the
# report grid use it). PAMR lifts the fine-tuned models' masks most (docs/research/finetune.md, round 3).
NAMINGS = {"official": Naming(), "voc_words": Naming(background_words=SCLIP_WORDS), "area_0.1": Naming(min_area=0.1),
           "hierarchical_0.3": Naming(hierarchical=0.3), "pamr": Naming(refine="pamr"),
           "pamr_voc_words": Naming(background_words=SCLIP_WORDS, refine="pamr")}  # fmt: skip
# The model shipped in the package (groupvit.pretrained), which the report compares with the fresh one.
SHIPPED = "synthvoc"
# Fine-tuning a trained model (`--init`): the fast recipe at 0.3 times its learning rate with a short warmup, as the
# feasibility run that made 20 new classes emerge in 10 minutes (docs/research/finetune.md); over the preset's train
# section, under the command line's key=value overrides.
FINETUNE_TRAIN = {"lr": 3e-4, "warmup_lr": 3e-6, "warmup_steps": 20}
# The share of VOC scenes among the training scenes of another vocabulary (`--replay`): at 3,000 steps 50 % keeps
# VOC val at 21.5 mIoU (30 %: 18.7; none: 8.6) for 2 points of new-class mIoU (docs/research/finetune.md).
REPLAY = 0.5

# A recipe: the demo options that make up one way of training, each a field of DemoOptions below. "paper" is the
# paper's recipe on the synthvoc preset (two grouping stages, std-0.02 init, pooled noun loss, softmax losses, the
# shard loader). "fast", the default, is what measurably makes segmentation emerge in 10 CPU minutes (docs/
# synthvoc.md, eighth round); every way it departs from "paper" is named in results.json and the report.
RECIPES: dict[str, dict] = {
    "paper": dict(stages=2, grouping_init="reference", noun_loss="pooled", loss="softmax", noun_positives="own",
                  deep_noun_loss=0.0, deep_noun_decay=False, mosaic_loss=0.0, noun_templates="full", text_pool="eot",
                  in_memory=False),
    "fast": dict(stages=1, grouping_init="fan_in", noun_loss="max_token", loss="sigmoid", noun_positives="shared",
                 deep_noun_loss=1.0, deep_noun_decay=True, mosaic_loss=0.0, noun_templates="full", text_pool="eot",
                 in_memory=True),
}  # fmt: skip


# The paper's values of the demo options that are not part of a recipe (comparisons and variants).
PAPER_VARIANT = {"baseline": None, "soft_assignment": False, "multi_label": True, "drop_boilerplate_nouns": False}
