"""`synthvoc` on onnxruntime against PyTorch on the first N SynthVOC validation scenes (a measurement, not a test).

    python -m benchmarks.onnx_synthvoc [--scenes 100] [--threads 1] [--repeats 3] [--out FILE.json]

Exports the shipped model twice (float32, and onnxruntime's dynamic int8 quantisation), segments the scenes
regenerated from seed 0 with each runtime under the model's own test settings, and reports: the share of pixels
whose label agrees with PyTorch's, the mIoU of each, and segmentation images/s (the N scenes one at a time, the
three runtimes interleaved per repeat, medians; the machine is shared, so pairs matter more than absolutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import groupvit
from groupvit.data.synthvoc import SynthVOCSpec, generate, voc_root
from groupvit.evaluation.datasets import load_dataset
from groupvit.evaluation.run import evaluate_segmentation
from groupvit.export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/onnx_synthvoc.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    generate(work / "synthvoc", SynthVOCSpec(seed=0, train=0, val=args.scenes, test=0, calib=0), workers=1)
    dataset = load_dataset("voc", voc_root(work / "synthvoc"), "val")
    models = {
        "pytorch": groupvit.load_model("synthvoc"),
        "onnxruntime": groupvit.load_model(export_onnx("synthvoc", work / "fp32")),  # after set_num_threads
        "onnxruntime int8": groupvit.load_model(export_onnx("synthvoc", work / "int8", quantize="int8")),
    }
    settings = models["pytorch"].test_settings
    segmenters = {
        key: groupvit.ZeroShotSegmenter(model, dataset.class_names, group_maps=False) for key, model in models.items()
    }
    images = [dataset[i][1] for i in range(len(dataset))]
    labels = {key: [seg(image).labels for image in images] for key, seg in segmenters.items()}
    pixels = sum(label.size for label in labels["pytorch"])
    agreement = {
        key: sum(int((a == b).sum()) for a, b in zip(labels[key], labels["pytorch"], strict=True)) / pixels
        for key in models
    }
    miou = {
        key: evaluate_segmentation(
            model, dataset, background_threshold=settings.background_threshold, naming=settings.naming, progress=False
        )["miou"]
        for key, model in models.items()
    }
    seconds: dict[str, list[float]] = {key: [] for key in models}
    for _ in range(args.repeats):
        for key, seg in segmenters.items():
            start = time.perf_counter()
            for image in images:
                seg(image)
            seconds[key].append(time.perf_counter() - start)
    result = {
        "scenes": len(images),
        "threads": args.threads,
        "settings": settings.describe(),
        "pixels": pixels,
        "label_agreement_with_pytorch": agreement,
        "miou": miou,
        "images_per_second": {key: len(images) / statistics.median(s) for key, s in seconds.items()},
        "seconds_per_repeat": seconds,
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "?",
        ),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
