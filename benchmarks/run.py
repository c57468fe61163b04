"""Side-by-side speed of groupvit and transformers' GroupViTModel on identical random weights.

    python -m benchmarks.run [--quick] [--repeats 5] [--threads N] [--out benchmarks/results/run.json]

Medians over repeats after a warm-up; ratios are ours / theirs in throughput (higher is better for us). Cases:
image embedding (batch 32 at 224 and 448), text embedding (256 prompts), a training step (forward, backward and
AdamW on the contrastive loss, batch 32), and zero-shot segmentation of a 500x375 image with the 21 VOC classes
under the official protocol against a per-crop reference that encodes each crop twice, one at a time, as the
NVlabs code does (and transformers' `output_segmentation` at 224 for scale). Peak memory is the peak RSS growth
of a fresh subprocess per case; the machine's fp32 matmul rate is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from groupvit.evaluation.datasets import VOC_CLASSES

VOC = list(VOC_CLASSES)
VISION_GFLOPS_224 = 7.94  # one 224 image through the vision tower (issue 6)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def models(quick: bool):
    """Identical random weights in transformers' GroupViTModel and ours (through a saved transformers folder)."""
    from transformers import GroupViTConfig, GroupViTModel

    import groupvit

    torch.manual_seed(0)
    config = GroupViTConfig()
    if quick:
        config = GroupViTConfig(
            projection_dim=32, projection_intermediate_dim=64,
            vision_config=dict(hidden_size=64, intermediate_size=256, depths=[1, 1, 1], num_hidden_layers=3,
                               num_group_tokens=[8, 4, 0], num_output_groups=[8, 4, 4], num_attention_heads=2),
            text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=1),
        )  # fmt: skip
    theirs = GroupViTModel(config).eval()
    folder = tempfile.mkdtemp()
    theirs.save_pretrained(folder)
    return groupvit.load_model(folder), theirs


def per_crop_reference(model, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Spec 5.3 as the reference runs it: per crop, one encoder pass for the maps, another for the features."""
    from groupvit.segmentation import segment_crops, slide_windows

    H, W = pixels.shape[2:]
    total, count = None, torch.zeros(1, H, W)
    for y1, y2, x1, x2 in slide_windows(H, W, 448, 224):
        crop = pixels[:, :, y1:y2, x1:x2]
        model.encode_image_groups(crop)  # the reference's first pass (attention maps)
        logits, _ = segment_crops(model, crop, text, 0.95)  # second pass
        total = logits.new_zeros(logits.shape[1], H, W) if total is None else total
        total[:, y1:y2, x1:x2] += logits[0]
        count[:, y1:y2, x1:x2] += 1
    return total / count


def case(name: str, quick: bool, repeats: int) -> float:
    """Seconds per call (median) of one case, run in this process."""
    import groupvit
    from groupvit.losses import image_text_contrastive_loss
    from groupvit.segmentation import ZeroShotSegmenter, class_text_embeddings

    ours, theirs = models(quick)
    batch = 4 if quick else 32
    who, what = name.split(":")
    if what.startswith("image"):
        size = int(what.removeprefix("image"))
        x = torch.randn(batch, 3, size, size)
        if who == "ours":
            return timed(lambda: torch.no_grad()(ours.encode_image)(x), repeats)
        vm = theirs.vision_model

        def hf_image():
            with torch.no_grad():
                h = vm.encoder(vm.embeddings(x, interpolate_pos_encoding=True)).last_hidden_state
                theirs.visual_projection(vm.layernorm(h).mean(1))

        return timed(hf_image, repeats)
    if what == "text":
        ids = groupvit.tokenize([f"a photo of a {c}." for c in VOC] * (4 if quick else 13))[: 16 if quick else 256]
        fn = ours.encode_text if who == "ours" else (lambda i: theirs.get_text_features(input_ids=i))
        return timed(lambda: torch.no_grad()(fn)(ids), repeats)
    if what == "train":
        x, ids = torch.randn(batch, 3, 224, 224), groupvit.tokenize([f"a photo of a {c}." for c in VOC[:batch]] * 2)
        ids = ids[:batch]
        model = ours if who == "ours" else theirs
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            if who == "ours":
                image, text = F.normalize(ours.encode_image(x), dim=-1), F.normalize(ours.encode_text(ids), dim=-1)
                scale = ours.logit_scale_value()
            else:
                image = F.normalize(theirs.get_image_features(pixel_values=x).pooler_output, dim=-1)
                text = F.normalize(theirs.get_text_features(input_ids=ids).pooler_output, dim=-1)
                scale = theirs.logit_scale.exp()
            image_text_contrastive_loss(image, text, scale).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return timed(step, repeats)
    if what == "segment":
        size = (94, 125) if quick else (375, 500)
        image = torch.randint(0, 255, (*size, 3), dtype=torch.uint8).numpy()
        if who == "ours":
            seg = ZeroShotSegmenter(ours, VOC, mode="slide", group_maps=False)
            return timed(lambda: seg(image), repeats)
        if who == "reference":
            from groupvit.image import rescale_size, to_tensor

            text = class_text_embeddings(ours, VOC)
            pixels = to_tensor(image, rescale_size(*size))
            return timed(lambda: torch.no_grad()(per_crop_reference)(ours, pixels, text), repeats)
        ids = groupvit.tokenize([f"a photo of a {c}." for c in VOC])
        x = torch.randn(1, 3, 224, 224)
        return timed(lambda: torch.no_grad()(theirs)(input_ids=ids, pixel_values=x, output_segmentation=True), repeats)
    raise ValueError(name)


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    seconds = timed(lambda: a @ b, 5)
    return 2 * 2048**3 / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes, one repeat (for CI)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/run.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in a fresh process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    if args.case:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = case(args.case, args.quick, repeats)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({"seconds": seconds, "peak_rss_growth_mib": peak}))
        return
    pairs = [("image224", "theirs"), ("image448", "theirs"), ("text", "theirs"), ("train", "theirs"),
             ("segment", "reference"), ("segment", "theirs")]  # fmt: skip
    rows = []
    for what, peer in pairs:
        measured = {}
        for who in ("ours", peer):
            command = [sys.executable, "-m", "benchmarks.run", "--case", f"{who}:{what}", "--threads",
                       str(args.threads), "--repeats", str(repeats)] + (["--quick"] if args.quick else [])  # fmt: skip
            run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if run.returncode:
                raise SystemExit(f"case {who}:{what} failed:\n{run.stderr[-2000:]}")
            measured[who] = json.loads(run.stdout.strip().splitlines()[-1])
        ratio = measured[peer]["seconds"] / measured["ours"]["seconds"]
        rows.append({"case": what, "peer": peer, "ours_s": measured["ours"]["seconds"],
                     "peer_s": measured[peer]["seconds"], "speedup": ratio,
                     "ours_peak_mib": measured["ours"]["peak_rss_growth_mib"],
                     "peer_peak_mib": measured[peer]["peak_rss_growth_mib"]})  # fmt: skip
        print(f"{what:<10} vs {peer:<9} ours {measured['ours']['seconds'] * 1e3:9.1f} ms  "
              f"{peer} {measured[peer]['seconds'] * 1e3:9.1f} ms  speed-up {ratio:5.2f}x  "
              f"peak RSS +{rows[-1]['ours_peak_mib']:.0f} / +{rows[-1]['peer_peak_mib']:.0f} MiB")  # fmt: skip
    gflops = matmul_gflops()
    image = next(r for r in rows if r["case"] == "image224")
    batch = 4 if args.quick else 32
    achieved = None if args.quick else VISION_GFLOPS_224 * batch / image["ours_s"]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else None},
        "quick": args.quick, "repeats": repeats, "matmul_gflops": gflops,
        "vision_gflops_achieved_224": achieved, "rows": rows,
    }  # fmt: skip
    print(f"fp32 matmul {gflops:.1f} GFLOP/s" + (f"; vision tower at 224 {achieved:.1f} GFLOP/s" if achieved else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
