"""Make the `synthvoc` model shipped in the package from a `groupvit demo` run, and measure what shipping costs.

    python -m benchmarks.ship_synthvoc RUN_DIR --data SYNTHVOC_ROOT [--examples 6]

Reads RUN_DIR/model.safetensors and results.json, drops the training-only parameters, records the test settings
the run was scored with (short side, whole mode, the background threshold calibrated on `calib`, the VOC classes),
writes groupvit/weights/synthvoc.safetensors in float16, picks example scenes for the app (the first validation
scenes whose largest object the model names, written to groupvit/assets/synthvoc/), and prints the model card's
numbers: mIoU on val (all, and the first 100 scenes that tests/test_shipped_model.py regenerates) and test, in float32
and float16, with recognition and the oracle-named mIoU. Numbers go to docs/models.md by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from groupvit.checkpoint import TRAINING_ONLY, exported_config, load_model, save_model
from groupvit.config import GroupViTConfig
from groupvit.data.synthvoc import voc_root
from groupvit.demo import score_at_own_settings, synthvoc_test_settings
from groupvit.evaluation.datasets import load_dataset
from groupvit.model import GroupViT
from groupvit.pretrained import SYNTHVOC_FILE
from groupvit.segmentation import ZeroShotSegmenter
from groupvit.settings import TestSettings

PACKAGE = Path(__file__).resolve().parents[1] / "groupvit"
SHORT_SIDE = 64  # the synthvoc preset's training size, which the demo scores at


def inference_model(model: GroupViT, settings: TestSettings) -> GroupViT:
    """The model without its training-only parameters (SigLIP biases, the deep noun loss's head)."""
    slim = GroupViT(GroupViTConfig.from_dict(exported_config(model.config)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(TRAINING_ONLY)}
    slim.load_state_dict(state)
    slim.test_settings = settings
    return slim.eval()


def scores(model: GroupViT, voc: Path, split: str, limit: int | None = None) -> dict:
    result = score_at_own_settings(model, load_dataset("voc", voc, split), limit)
    return {"miou": round(result["miou"], 2), "oracle_miou": round(result["oracle"]["miou"], 2),
            "recognition_pooled": round(result["recognition"]["pooled"], 1), "images": result["images"]}  # fmt: skip


def write_examples(model: GroupViT, voc: Path, count: int, folder: Path) -> list[dict]:
    """The first `count` validation scenes whose largest object's class the model puts on at least a tenth of
    that object's pixels, as PNGs with examples.json (file, caption, objects, largest)."""
    val = load_dataset("voc", voc, "val")
    scenes = json.loads((voc / "scenes.json").read_text())
    segmenter = ZeroShotSegmenter(model, val.class_names, group_maps=False)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    chosen = []
    for i in range(len(val)):
        image_id, image, target = val[i]
        labels, counts = np.unique(target[(target > 0) & (target < 255)], return_counts=True)
        if not len(labels):
            continue
        largest = int(labels[counts.argmax()])
        predicted = segmenter(image).labels
        if (predicted[target == largest] == largest).mean() < 0.1:
            continue
        Image.fromarray(image).save(folder / f"{image_id}.png")
        chosen.append({"file": f"{image_id}.png", "caption": scenes[image_id]["caption"],
                       "objects": scenes[image_id]["objects"], "largest": val.class_names[largest - 1],
                       "val_index": i})  # fmt: skip
        if len(chosen) == count:
            break
    (folder / "examples.json").write_text(json.dumps(chosen, indent=1) + "\n")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a `groupvit demo --out` folder")
    parser.add_argument("--data", type=Path, required=True, help="the SynthVOC folder the run was scored on")
    parser.add_argument("--examples", type=int, default=6)
    parser.add_argument("--about", help="the page's line on the model (default: from the run's results.json)")
    args = parser.parse_args()

    results = json.loads((args.run / "results.json").read_text())
    voc = voc_root(args.data)
    trained = load_model(args.run / "model.safetensors")
    about = args.about or (
        f"trained by `groupvit demo` on SynthVOC captions alone ({results['recipe']} recipe, {results['steps']} steps, "
        f"{results['images_seen']:,} images); knows the 20 VOC classes in emoji-like scenes, not photographs"
    )
    class_names = load_dataset("voc", voc, "val").class_names
    settings = synthvoc_test_settings(SHORT_SIDE, results["background_threshold"], class_names, about)
    model = inference_model(trained, settings)
    target = PACKAGE / SYNTHVOC_FILE
    save_model(model, target, dtype=torch.float16)
    shipped = load_model(target)
    assert shipped.test_settings == settings
    report = {"file": str(target), "megabytes": round(target.stat().st_size / 1e6, 2),
              "parameters": sum(p.numel() for p in shipped.parameters()),
              "settings": dataclasses.asdict(settings) | {"naming": settings.naming.to_dict()}}  # fmt: skip
    for name, m in (("float32", model), ("float16", shipped)):
        report[name] = {"val": scores(m, voc, "val"), "val_first_100": scores(m, voc, "val", 100),
                        "test": scores(m, voc, "test")}  # fmt: skip
    report["examples"] = write_examples(shipped, voc, args.examples, PACKAGE / "assets" / "synthvoc")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
