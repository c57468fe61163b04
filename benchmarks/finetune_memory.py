"""Peak memory of a fine-tuning step per batch size (docs/training.md, fine-tuning), on CPU in fp32.

Each batch size runs in a fresh process: a model of the preset's architecture (random weights: memory does not
depend on their values), the multi-label loss over K = 3 noun prompts per image, two AdamW steps (the second holds the
optimiser's moments; fused, as `groupvit train` runs it from torch 2.4), then the peak resident set (ru_maxrss). A
straight line through the measured points gives the larger batches.

    python -m benchmarks.finetune_memory --preset gcc_yfcc --batches 2 3 4 8
    python -m benchmarks.finetune_memory --preset gcc_yfcc --batches 4 --freeze text
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np

PROMPTS = 3  # noun prompts per image, the recipe's multi_label
COMPUTED = (16, 64, 256)


def one_step(preset: str, batch: int, frozen: list[str]) -> float:
    """Peak RSS in MiB of two training steps at `batch` (run in its own process)."""
    import torch

    from groupvit.config import model_config
    from groupvit.losses import groupvit_losses
    from groupvit.model import GroupViT
    from groupvit.training.finetune import freeze, parameter_groups

    cfg = model_config(preset)
    cfg.multi_label_logit_scale = True
    torch.manual_seed(0)
    model = GroupViT(cfg).train()
    freeze(model, frozen)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05, set()), lr=1e-5, fused=True)  # as train() on CPU
    size = cfg.vision.image_size
    images = torch.randn(batch, 3, size, size)
    texts = torch.randint(1, 49000, (batch, 1 + PROMPTS, cfg.text.context_length))
    texts[..., 20] = 49407  # the end-of-text token, where the text feature is read
    for _ in range(2):
        itc, ml = groupvit_losses(model, images, texts)
        (itc + ml).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(preset: str, batches: list[int], frozen: list[str]) -> dict:
    rows = []
    for batch in batches:
        cmd = [sys.executable, "-m", "benchmarks.finetune_memory", "--one", str(batch), "--preset", preset,
               "--freeze", *frozen]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append({"batch": batch, "peak_mib": float(run.stdout.strip().splitlines()[-1])})
    result: dict = {"preset": preset, "freeze": frozen, "measured": rows}
    if len(rows) > 1:
        slope, fixed = np.polyfit([r["batch"] for r in rows], [r["peak_mib"] for r in rows], 1)
        result.update(fixed_mib=float(fixed), per_image_mib=float(slope),
                      computed={str(b): float(fixed + slope * b) for b in COMPUTED})  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gcc_yfcc")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 3, 4, 8], help="at least 2 (BatchNorm heads)")
    parser.add_argument("--freeze", nargs="*", default=[], help="part names, as the training config's freeze")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(one_step(args.preset, args.one, args.freeze))
        return
    print(json.dumps(measure(args.preset, args.batches, args.freeze), indent=2))


if __name__ == "__main__":
    main()
