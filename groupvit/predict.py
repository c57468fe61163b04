"""Image files in, predictions out: `groupvit segment` and `groupvit classify` as Python functions.

`segment_files` writes, per image, an overlay, a label PNG, the group maps and a JSON summary (SEGMENT_OUTPUTS);
`classify_files` prints each image's top classes. One unreadable or too-large image is skipped with its reason and
the others still run; both return how many were skipped.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .checks import input_files, output_dir
from .errors import describe
from .image import load_image
from .io import atomic_write
from .model import GroupViT
from .settings import Requested, resolve_settings

# What `segment` writes per image, after the image's name.
SEGMENT_OUTPUTS = ("_overlay.png", "_labels.png", "_groups.png", ".json")
# Errors of one image that should not stop a batch: unreadable, degenerate or too large for memory.
IMAGE_ERRORS = (ValueError, RuntimeError, MemoryError)
# The options of `groupvit segment` that change each test setting, for the line saying where each came from.
SEGMENT_SOURCES = {"short_side": "--short-side", "mode": "--mode", "classes": "--classes",
                   "background_threshold": "--background-threshold", "no_background": "--no-background",
                   "naming": "the naming options"}  # fmt: skip


def output_stems(images: Sequence[Path]) -> list[str]:
    """Each image's output name: its stem, with '_' appended until it differs from the earlier ones."""
    stems: list[str] = []
    for path in images:
        stem = path.stem
        while stem in stems:
            stem += "_"
        stems.append(stem)
    return stems


def segment_targets(images: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> tuple[list[Path], Path]:
    """The image files and the output folder of a `segment_files` run, checked before any model is loaded."""
    paths = input_files(images)
    names = [s + o for s in output_stems(paths) for o in SEGMENT_OUTPUTS]
    return paths, output_dir(out, names=names, overwrite=overwrite)


def run_classes(classes: Sequence[str]) -> list[str]:
    """A run's class names as `resolve_settings` gave them (the caller's, else the model's vocabulary): there must
    be some."""
    if not classes:
        raise ValueError("--classes is required: this model records no vocabulary of its own")
    return list(classes)


def note_unlike(model: GroupViT, shape: tuple[int, ...], command: str, noted: list) -> None:
    """Once per run: what the model knows, when an image is not of the kind it was trained on."""
    from tqdm import tqdm

    if not noted and (note := model.test_settings.unlike(shape)):
        noted.append(note)
        tqdm.write(f"groupvit {command}: note: {note}, so expect little", file=sys.stderr)  # above a progress bar


def segment_files(
    model: GroupViT,
    images: Sequence[Path],
    out: Path,
    class_names: Sequence[str] | None = None,
    requested: Requested | None = None,
    *,
    templates: str = "simple",
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    checkpoint: str = "",
) -> int:
    """Segment each image into `out` (see the module docstring; `segment_targets` checks both first). Test settings
    not `requested` are the model's (groupvit.settings.resolve_settings); class_names default to the model's
    vocabulary.
    Returns the number of images skipped."""
    from tqdm import tqdm

    from .segmentation import ZeroShotSegmenter
    from .viz import group_maps_image, label_image, overlay

    requested = requested or Requested()
    sources = SEGMENT_SOURCES | ({"dataset": f"--dataset {requested.dataset}"} if requested.dataset else {})
    run = resolve_settings(model.test_settings, model.config, requested, classes=class_names, sources=sources)
    settings, threshold = run.settings, run.background_threshold
    class_names = run_classes(run.classes)
    used = settings.describe(background="none" if threshold is None else f"{threshold:g}")
    print(f"groupvit segment: {used} ({run.origins}; --short-side, --mode, "
          f"--background-threshold change it); runtime {model.runtime}", file=sys.stderr)  # fmt: skip
    segmenter = ZeroShotSegmenter(model, class_names, background_threshold=threshold, mode=settings.mode,
                                  templates=templates, short_side=settings.short_side,
                                  batch_size=batch_size, autocast_dtype=autocast_dtype,
                                  naming=settings.naming)  # fmt: skip
    failures, noted = 0, []
    for path, stem in tqdm(list(zip(images, output_stems(images), strict=True)), desc="segment", unit="image",
                           disable=len(images) < 2):  # fmt: skip
        try:
            rgb = load_image(path)
            note_unlike(model, rgb.shape, "segment", noted)
            result = segmenter(rgb)
            pictures = {
                f"{stem}_overlay.png": overlay(rgb, result.labels, class_names),
                f"{stem}_labels.png": label_image(result.labels),
                f"{stem}_groups.png": group_maps_image(rgb, result.group_maps),
            }
        except IMAGE_ERRORS as e:
            tqdm.write(f"groupvit segment: skipped {path}: {describe(e)}", file=sys.stderr)
            failures += 1
            continue
        fractions = result.fractions()
        summary = {
            "image": str(path),
            "size": list(rgb.shape[:2]),
            "classes": class_names,
            "present": [n for n in fractions if n != "background"],
            "fractions": fractions,
            "mode": settings.mode,
            "short_side": settings.short_side,
            "background_threshold": threshold,
            "refine": settings.naming.refine,
            "checkpoint": checkpoint,
            **({} if settings.naming.official else {"protocol": "variant", "naming": settings.naming.to_dict()}),
        }
        for name, picture in pictures.items():
            atomic_write(out / name, lambda tmp, pic=picture: pic.save(tmp, format="PNG"))
        atomic_write(out / f"{stem}.json", lambda tmp, s=summary: Path(tmp).write_text(json.dumps(s, indent=2)))
        present = ", ".join(f"{n} {f:.0%}" for n, f in summary["fractions"].items())
        tqdm.write(f"{path}: {present}")
    skipped = f"; {failures} skipped (see above)" if failures else ""
    print(f"wrote results for {len(images) - failures} of {len(images)} images to {out}{skipped}")
    return failures


def classify_files(
    model: GroupViT,
    images: Sequence[Path],
    class_names: Sequence[str] | None = None,
    *,
    templates: str = "subset",
    short_side: int | None = None,
    top: int = 5,
) -> int:
    """Print each image's `top` classes with their probabilities; class_names default to the model's vocabulary
    (groupvit.settings.resolve_settings).
    Returns the number of images skipped."""
    from .classification import ZeroShotClassifier

    run = resolve_settings(model.test_settings, model.config, classes=class_names, sources={"classes": "--classes"})
    given, class_names = class_names, run_classes(run.classes)
    if given is None:
        print(f"groupvit classify: the {len(class_names)} classes recorded with the model (--classes changes them)",
              file=sys.stderr)  # fmt: skip
    classifier = ZeroShotClassifier(model, class_names, templates=templates, short_side=short_side)
    failures, noted = 0, []
    for path in images:
        try:
            rgb = load_image(path)
            note_unlike(model, rgb.shape, "classify", noted)
            ranking = classifier(rgb, top=top)
        except IMAGE_ERRORS as e:
            print(f"groupvit classify: skipped {path}: {describe(e)}", file=sys.stderr)
            failures += 1
            continue
        print(f"{path}: " + ", ".join(f"{name} {p:.1%}" for name, p in ranking))
    return failures
