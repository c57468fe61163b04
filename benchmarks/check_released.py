"""The released weights against transformers' own check, for a machine with network.

    python -m benchmarks.check_released [--names gcc_yfcc gcc_redcaps] [--sources hf nvlabs] [--image FILE]

For each released model and source it downloads the weights (`groupvit download`, cached), loads them with
`groupvit.load_model`, and prints the image-text logits of COCO val 000000039769 (two cats on a sofa) against
"a photo of a cat" / "a photo of a dog" beside the values transformers' convert_groupvit_nvlab_to_hf.py asserts
(gcc_yfcc [[13.3523, 6.3629]], gcc_redcaps [[16.1873, 8.6230]], atol 1e-3 there). The image is preprocessed as
that script's CLIPProcessor does: shortest side to 224 (bicubic), centre crop 224, CLIP's mean and std. Exit
code 1 when a logit differs by more than --atol (resize implementations differ slightly, hence 0.01).
"""

from __future__ import annotations

import argparse
import io
import sys
import urllib.request

import numpy as np
import torch
from PIL import Image

IMAGE_URL = "http://images.cocodataset.org/val2017/000000039769.jpg"
TEXTS = ("a photo of a cat", "a photo of a dog")
EXPECTED = {"gcc_yfcc": (13.3523, 6.3629), "gcc_redcaps": (16.1873, 8.6230)}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(image: Image.Image, size: int = 224) -> torch.Tensor:
    """CLIPProcessor's preprocessing: shortest side to `size` (bicubic), centre crop, rescale, normalise."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.convert("RGB").resize((int(width * scale), int(height * scale)), Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255
    x = (torch.from_numpy(crop) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    return x.permute(2, 0, 1)[None]


def image_text_logits(model, pixels: torch.Tensor, texts: tuple[str, ...] = TEXTS) -> torch.Tensor:
    """logit scale x cosine similarity, [images, texts], as transformers' `logits_per_image`."""
    from groupvit import tokenize

    with torch.no_grad():
        image, text, scale = model(pixels, tokenize(list(texts)))
    return scale * image @ text.T


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", nargs="+", default=list(EXPECTED), choices=list(EXPECTED))
    p.add_argument("--sources", nargs="+", default=["hf", "nvlabs"], choices=["hf", "nvlabs"])
    p.add_argument("--image", help=f"a local copy of {IMAGE_URL} (default: download it)")
    p.add_argument("--atol", type=float, default=0.01)
    args = p.parse_args(argv)

    import groupvit

    if args.image:
        image = Image.open(args.image)
    else:
        with urllib.request.urlopen(IMAGE_URL, timeout=60) as response:
            image = Image.open(io.BytesIO(response.read()))
    pixels = clip_pixels(image)
    worst = 0.0
    for name in args.names:
        for source in args.sources:
            model = groupvit.load_model(name, source=source)
            logits = image_text_logits(model, pixels)[0].tolist()
            diff = max(abs(a - b) for a, b in zip(logits, EXPECTED[name], strict=True))
            worst = max(worst, diff)
            print(f"{name:12s} {source:7s} logits [{logits[0]:.4f}, {logits[1]:.4f}]  transformers "
                  f"[{EXPECTED[name][0]:.4f}, {EXPECTED[name][1]:.4f}]  max |diff| {diff:.4f}")  # fmt: skip
    print("agree" if worst <= args.atol else f"DISAGREE: max |diff| {worst:.4f} > {args.atol}")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
