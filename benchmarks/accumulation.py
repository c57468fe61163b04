"""Gradient-cached accumulation: peak memory and time per image against the number of micro-batches k at a fixed
global batch, and the activation memory of the released model (what sets the micro-batch that fits a GPU).

    python -m benchmarks.accumulation [--global-batch 64] [--k 1 2 4 8] [--steps 3] [--threads 2] [--repeats 1]
                                      [--out benchmarks/results/accumulation.json]

Each k runs in a fresh process: the `small` preset (64 px, Gumbel noise on) with the multi-label loss (K = 3 noun
prompts per caption) on random images and captions, `training.loop.train_step` plus the AdamW step; one warm-up step,
then the mean of `--steps` steps, in wall time and in the process's CPU time (less disturbed by other jobs on a
shared machine). For k > 1 a baseline runs the same micro-batches one pass each, each with its own
losses (accumulation as it was before gradient caching: a wrong loss, the same micro-batch sizes), so that the ratio
of the two is the cost of the second pass alone. Peak memory is the process's peak resident set
(`resource.getrusage` maxrss) and its growth over the resident set before the first step (model, optimiser and data
already in memory). The released-model rows count the bytes autograd keeps for backward (distinct storages of the
saved tensors) for the GCC+YFCC model at 224 px, each image with its caption and 3 prompts, in fp32 and under bf16
autocast (CPU's autocast; a GPU's differs in details), and the encoders' FLOPs per image.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from groupvit.losses import EncoderFeatures, encode_features, losses_from_features
from groupvit.model import GroupViT
from groupvit.sample_noise import row_seeds
from groupvit.tokenizer import tokenize
from groupvit.training.config import TrainConfig
from groupvit.training.loop import parameter_groups, train_step

WORDS = ["dog", "cat", "car", "bird", "chair", "sky", "grass", "boat", "horse", "table", "bus", "train"]


def random_batch(n: int, size: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random images [n, 3, size, size], a caption and k prompts per image [n, 1 + k, 77], noun keys [n, k + 16]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    pick = torch.randint(len(WORDS), (n, 3), generator=g).tolist()
    captions = [[f"a {WORDS[a]} next to a {WORDS[b]} and a {WORDS[c]}"] for a, b, c in pick]
    prompts = [[f"a photo of a {WORDS[w]}." for w in words[:k]] for words in pick]
    texts = torch.stack([tokenize(c + p) for c, p in zip(captions, prompts, strict=True)])
    return images, texts, torch.zeros(n, k + 16, dtype=torch.long)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def per_micro_batch_step(model: GroupViT, micro: list) -> None:
    """The timing baseline, not a training method: each micro-batch's own losses, one pass each (what accumulation
    did before gradient caching: the negatives and BatchNorm of one micro-batch only), the same micro-batch sizes."""
    for batch in micro:
        itc, ml = losses_from_features(model, encode_features(model, *batch[:2], seeds=batch[3]))
        ((itc + ml) / len(micro)).backward()


def case(global_batch: int, k: int, steps: int, variant: str) -> dict:
    """One k in this process: seconds per image and peak memory of `steps` training steps after a warm-up."""
    cfg = TrainConfig(model="small", batch_size=global_batch // k, accum_steps=k, multi_label=3)
    torch.manual_seed(0)
    model = GroupViT(cfg.model_config()).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=1e-4, fused=True)
    images, texts, keys = random_batch(global_batch, model.config.vision.image_size, cfg.multi_label)
    size = cfg.batch_size
    times, cpu_times, before = [], [], rss_mib()
    for step in range(steps + 1):
        seeds = row_seeds(0, step, torch.arange(global_batch))
        micro = [(images[i : i + size], texts[i : i + size], keys[i : i + size], seeds[i : i + size])
                 for i in range(0, global_batch, size)]  # fmt: skip
        tic, cpu_tic = time.perf_counter(), time.process_time()
        if variant == "cached":
            train_step(model, micro, cfg)
        else:
            per_micro_batch_step(model, micro)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tic)
        cpu_times.append(time.process_time() - cpu_tic)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"k": k, "variant": variant, "micro_batch": size,
            "ms_per_image": 1000 * sum(times[1:]) / steps / global_batch,
            "cpu_ms_per_image": 1000 * sum(cpu_times[1:]) / steps / global_batch,
            "peak_rss_mib": peak, "rss_before_steps_mib": before, "peak_growth_mib": peak - before}  # fmt: skip


def activation_bytes(model: GroupViT, run, bf16: bool) -> int:
    """Bytes of the distinct storages autograd saves for backward while `run()` builds its graph (parameters not
    counted)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.device.type != "meta":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        kept = run()
    del kept
    return sum(n for ptr, n in storages.items() if ptr not in params)


def fit(rows: tuple[int, ...], mib: list[float]) -> list[float]:
    """Exact polynomial through the measured points, coefficients from the constant up: memory as a function of B."""
    return [float(c) for c in np.polynomial.polynomial.polyfit(rows, mib, len(rows) - 1)]


def released_activations(images: tuple[int, int] = (2, 4), head_rows: tuple[int, int, int] = (128, 256, 512)) -> dict:
    """The released GCC+YFCC model at 224 with a caption and 3 prompts per image, autograd's saved tensors in MiB as a
    function of the batch B, fitted exactly through measured points so that what does not grow with B (autocast's bf16
    copies of the weights) is kept apart: the encoders (a + b B: one micro-batch holds b B), the features one image
    leaves in the cache between the passes, and the heads and losses on the whole batch (a + b B + c B^2: the
    projections grow with B, the multi-label logits [B, B K] with B^2)."""
    cfg = TrainConfig(model="gcc_yfcc", multi_label=3)
    model = GroupViT(cfg.model_config()).train()
    row = {"params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        one = encode_features(model, *random_batch(1, 224, 3)[:2])
    row["cached_kib_per_image"] = sum(t.numel() * 4 for t in one if t is not None) / 1024
    for name, bf16 in (("fp32", False), ("bf16", True)):
        mib = []
        for n in images:
            pixels, texts, _ = random_batch(n, 224, 3)
            mib.append(activation_bytes(model, lambda: encode_features(model, pixels, texts), bf16) / 2**20)  # noqa: B023
        row[f"encoder_{name}"] = {"measured_mib": dict(zip(images, mib, strict=True)), "fit": fit(images, mib)}
        mib = []
        for n in head_rows:
            tokens = torch.randn(n, *one.tokens.shape[1:], requires_grad=True)
            text = torch.randn(n * 4, one.text.shape[1], requires_grad=True)
            features = EncoderFeatures(tokens, text, None, None, None, None)
            mib.append(activation_bytes(model, lambda: losses_from_features(model, features), bf16) / 2**20)  # noqa: B023
        row[f"heads_{name}"] = {"measured_mib": dict(zip(head_rows, mib, strict=True)), "fit": fit(head_rows, mib)}
    pixels, texts, _ = random_batch(8, 224, 3)
    with FlopCounterMode(display=False) as forward:
        features = encode_features(model, pixels, texts)
    with FlopCounterMode(display=False) as backward:
        torch.autograd.backward([features.tokens, features.text], [torch.ones_like(features.tokens),
                                                                    torch.ones_like(features.text)])  # fmt: skip
    row["encoder_gflops_per_image"] = {"forward": forward.get_total_flops() / 8e9,
                                       "backward": backward.get_total_flops() / 8e9}  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="sweeps over every k; each row keeps its fastest")
    parser.add_argument("--no-released", action="store_true", help="skip the released model's activation count")
    parser.add_argument("--out", default="benchmarks/results/accumulation.json")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)  # internal: one k in a fresh process
    parser.add_argument("--variant", default="cached", help=argparse.SUPPRESS)  # internal: cached or per_micro_batch
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps(case(args.global_batch, args.case, args.steps, args.variant)))
        return 0
    if any(args.global_batch % k for k in args.k):
        raise SystemExit(f"--global-batch {args.global_batch} must be a multiple of every k in {args.k}")
    runs: dict[tuple[int, str], list[dict]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    load_start = os.getloadavg()[0]
    for _ in range(args.repeats):  # whole sweeps, one after another: a burst of load hits every case alike
        for k in args.k:
            # The baseline of the same micro-batches without the second pass, right after the cached step.
            for variant in ("cached", "per_micro_batch") if k > 1 else ("cached",):
                cmd = [sys.executable, "-m", "benchmarks.accumulation", "--case", str(k), "--variant", variant,
                       "--global-batch", str(args.global_batch), "--steps", str(args.steps), "--threads",
                       str(args.threads)]  # fmt: skip
                run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                runs.setdefault((k, variant), []).append(json.loads(run.stdout.strip().splitlines()[-1]))
                print(runs[k, variant][-1], flush=True)
    # The fastest of the repeats (the least disturbed by other jobs); memory does not depend on the load.
    rows = [min(found, key=lambda r: r["cpu_ms_per_image"]) for found in runs.values()]
    result = {
        "model": "small",
        "image_size": 64,
        "multi_label": 3,
        "global_batch": args.global_batch,
        "steps": args.steps,
        "threads": args.threads,
        "repeats": args.repeats,
        "rows": rows,
        "all_runs": [r for found in runs.values() for r in found],
        "load_average_1min_start": load_start,
        "machine": {"cpu": cpu_name(), "torch": torch.__version__, "python": platform.python_version()},
        "load_average_1min_end": os.getloadavg()[0],
    }
    if not args.no_released:
        result["released"] = released_activations()
        print(result["released"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
