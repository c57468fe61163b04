"""Option groups that several `groupvit` subcommands share, each with its help, and their values read back as the
objects the jobs take (`model_choice`, `naming`); `groupvit.cli` builds its parser with them."""

from __future__ import annotations

import argparse

from .checks import MAX_SHORT_SIDE, at_most, unit_float
from .config import list_presets
from .factory import ModelChoice
from .naming import Naming, naming_from_options
from .segmentation import MAX_SEGMENT_CLASSES

CHECKPOINT_HELP = ("weights by name: synthvoc (shipped in the package: SynthVOC scenes, not photographs), gcc_yfcc, "
                   "gcc_redcaps (NVIDIA's, non-commercial licence; downloaded once, `groupvit list`), NAME@nvlabs, "
                   "hf-hub:ORG/REPO[@REV]; or an NVlabs .pth, a transformers folder or our .safetensors")  # fmt: skip
SOURCE_HELP = ("where released weights come from: hf (the Hugging Face Hub) or nvlabs (the release .pth, which keeps "
               "the multi-label temperature); default: hf, then nvlabs")  # fmt: skip


def add_source_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["hf", "nvlabs"], help=SOURCE_HELP)


def add_weights_options(p: argparse.ArgumentParser, checkpoint_help: str = CHECKPOINT_HELP) -> None:
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help=checkpoint_help)
    presets = list_presets()
    weights.add_argument("--random-init", metavar="PRESET", choices=presets,
                         help=f"untrained random weights of a preset architecture: {', '.join(presets)}")  # fmt: skip
    add_source_option(p)


def add_naming_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("naming variants", "how groups become classes or background, beyond the official "
                             "threshold (groupvit.naming; results are labelled a protocol variant)")  # fmt: skip
    g.add_argument("--background-words", metavar="voc|car|none|W1,W2|FILE",
                   help="stuff words scored with the classes; a pixel won by one is background: voc (SCLIP and "
                   "NACLIP's 26), car (CaR's 23), your own comma-separated, or a file of them; combines with the "
                   "threshold (--no-background for words alone)")  # fmt: skip
    g.add_argument("--min-area", type=unit_float, default=0.0, metavar="SHARE",
                   help="a class covering at most this share of an image's predicted foreground becomes background "
                   "(SCLIP's area_thd, 0.1 for VOC; default 0: off)")  # fmt: skip
    g.add_argument("--background-thresholds", metavar="FILE",
                   help="one threshold per class instead of one for all: JSON {class: threshold}, or the JSON of "
                   "`groupvit eval --calibrate-background N --per-class-thresholds`")  # fmt: skip
    g.add_argument("--top-k", type=at_most(MAX_SEGMENT_CLASSES), default=5, metavar="K",
                   help="groups may only take the image's K best classes by pooled score (official: 5; a K of at "
                   "least the class count keeps every class)")  # fmt: skip
    g.add_argument("--gate", type=unit_float, metavar="P",
                   help="... and only classes with a pooled probability of at least P (the image's best "
                   "always)")  # fmt: skip
    g.add_argument("--hierarchical", type=unit_float, metavar="SCORE",
                   help="name the members (previous-stage groups) of a final group whose members name different "
                   "classes with at least this score: more classes than final groups")  # fmt: skip
    g.add_argument("--refine", choices=["pamr"],
                   help="pamr: refine the masks along the image's colours (PAMR, TCL's variant)")  # fmt: skip


def add_test_size_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["slide", "whole"],
                   help="slide (crops at a stride: the official protocol) or whole (one pass); default: the model's "
                   "test setting")  # fmt: skip
    p.add_argument("--short-side", type=at_most(MAX_SHORT_SIDE), metavar="N",
                   help="resize images to this short side (default: the model's test setting: 448 for the released "
                   "224-pixel models, the training size of SynthVOC models)")  # fmt: skip


def add_model_options(p: argparse.ArgumentParser) -> None:
    add_weights_options(p)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 autocast (GPU)")
    precision.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU, or CPUs with AVX512-BF16/AMX)")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders (slow first call; helps on GPU)")


def model_choice(args: argparse.Namespace) -> ModelChoice:
    """The options of `add_model_options`, read back as groupvit.factory.ModelChoice."""
    return ModelChoice(args.checkpoint, args.random_init, args.device, args.source, args.compile, args.fp16, args.bf16,
                       args.command)  # fmt: skip


def naming(args: argparse.Namespace) -> Naming:
    """The options of `add_naming_options`, read back as groupvit.naming.Naming."""
    return naming_from_options(args.background_words, args.background_thresholds, args.min_area, args.top_k,
                               args.gate, args.hierarchical, args.refine)  # fmt: skip
