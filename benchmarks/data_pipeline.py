"""Throughput of the training data pipeline: shard reading, JPEG decoding, augmentation, noun prompts.

    python -m benchmarks.data_pipeline [--images 512] [--workers 0 2] [--out benchmarks/results/data_pipeline.json]

Writes a webdataset shard of synthetic 500x375 JPEGs with alt-text-like captions, then times
`groupvit.training.data.shard_loader` (images/s after the first batch) for each worker count with nouns tagged
on the fly (spaCy), with nouns precomputed into the shard (`groupvit prepare-nouns`), and without the
multi-label loss; and the in-memory path (`MemoryPairs`, the shard decoded once, light augmentation in the training
process, as `groupvit demo` trains) after one pass over the shard, when every caption's tokens are cached.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from groupvit.data.augment import tensor_transform, train_transform
from groupvit.training.data import CaptionTexts, MemoryPairs, collate, shard_loader

CAPTIONS = [
    "a man riding a red motorcycle down the street",
    "Two elephants in the jungle this morning",
    "dog playing with a ball on the beach",
    "Sunset over the mountains, photographed by John",
    "a bowl of fruit on a wooden table next to a window",
]


def write_shard(path: Path, count: int, with_nouns: bool) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (375 // 8, 500 // 8, 3), dtype=np.uint8)
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            image = Image.fromarray(np.roll(base, i, axis=1)).resize((500, 375), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            caption = CAPTIONS[i % len(CAPTIONS)]
            entries = {"jpg": buffer.getvalue(), "txt": caption.encode()}
            if with_nouns:
                entries["nouns.json"] = json.dumps([w for w in caption.split() if len(w) > 3]).encode()
            for ext, data in entries.items():
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def measure(shard: Path, workers: int, multi_label: int, batch: int, images: int) -> float:
    loader = shard_loader(str(shard), train_transform(224, "groupvit"), CaptionTexts(multi_label, "spacy"), batch,
                          workers, seed=0, shuffle_buffer=256)  # fmt: skip
    stream = iter(loader)
    next(stream)  # start-up: worker launch, tagger loading
    start, seen = time.perf_counter(), 0
    while seen < images:
        seen += next(stream)[0].shape[0]
    return seen / (time.perf_counter() - start)


def measure_in_memory(shard: Path, batch: int, images: int, size: int) -> float:
    pairs = MemoryPairs(str(shard), tensor_transform(size, "light"), CaptionTexts(3, "spacy"), seed=0)
    for q in range(len(pairs)):  # one pass: captions and prompts tokenised once, as after a demo's first pass
        pairs[q]
    firsts = range(len(pairs), len(pairs) + images, batch)
    start = time.perf_counter()
    for first in firsts:
        collate([pairs[q] for q in range(first, first + batch)])
    return len(firsts) * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain, tagged = Path(tmp) / "plain.tar", Path(tmp) / "tagged.tar"
        write_shard(plain, 256, with_nouns=False)
        write_shard(tagged, 256, with_nouns=True)
        for workers in args.workers:
            for label, shard, k in (("nouns tagged on the fly (spaCy)", plain, 3),
                                    ("nouns precomputed in the shard", tagged, 3),
                                    ("no multi-label loss", plain, 0)):  # fmt: skip
                rate = measure(shard, workers, k, args.batch, args.images)
                rows.append({"pipeline": label, "workers": workers, "images_per_second": round(rate, 1)})
                print(f"{label:<34} workers={workers}  {rate:7.1f} images/s")
        for size in (224, 64):
            rate = measure_in_memory(tagged, args.batch, args.images, size)
            label = f"in memory, light augmentation to {size} px"
            rows.append({"pipeline": label, "workers": 0, "images_per_second": round(rate, 1)})
            print(f"{label:<34} workers=0  {rate:7.1f} images/s")
    result = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
              "image": "500x375 JPEG -> 224 groupvit augmentation", "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
