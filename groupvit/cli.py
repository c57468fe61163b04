"""The `groupvit` command line: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .checkpoint import CheckpointError


def _convert(args: argparse.Namespace) -> None:
    from .checkpoint import load_model, save_model

    model = load_model(args.src)
    path = save_model(model, args.dst, layout=args.to)
    print(f"wrote {path} ({args.to} layout)")


def _info(args: argparse.Namespace) -> None:
    import torch

    from .checkpoint import load_model
    from .config import list_presets, model_config
    from .model import GroupViT

    if args.model in list_presets() or args.model.endswith((".yaml", ".yml")):
        model = GroupViT(model_config(args.model)).eval()
    else:
        model = load_model(args.model)
    cfg = model.config
    size = cfg.vision.image_size
    with torch.no_grad():
        groups = model.encode_image_groups(torch.zeros(1, 3, size, size))
    print(cfg.to_json())
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    stages = " -> ".join(f"{m.shape[-1]} tokens into {m.shape[1]} groups" for m in groups.assignments)
    print(f"grouping at {size}x{size}: {stages}; embedding dim {groups.image_embeds.shape[-1]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an NVlabs .pth or transformers folder to another layout")
    p.add_argument("src", help="NVlabs .pth, transformers directory, or our .safetensors")
    p.add_argument("dst", help="output path (.safetensors for ours, a directory for hf, .pth for nvlabs)")
    p.add_argument("--to", choices=["groupvit", "hf", "nvlabs"], default="groupvit", help="output layout")
    p.set_defaults(run=_convert)

    p = sub.add_parser("info", help="print a model's configuration, parameter count and grouping shapes")
    p.add_argument("model", help="a preset name (gcc_yfcc, gcc_redcaps, small), a YAML config or a checkpoint")
    p.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"groupvit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
