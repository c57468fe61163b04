"""The `synthvoc` model shipped in the package: it loads offline by name with the settings it was calibrated with,
scores its model card's number on validation scenes regenerated from the seed, and travels in the wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from safetensors import safe_open

import groupvit
from groupvit import pretrained
from groupvit.checkpoint import TRAINING_ONLY
from groupvit.data.synthvoc import CLASS_NAMES, SynthVOCSpec, generate, voc_root
from groupvit.evaluation.datasets import load_dataset
from groupvit.evaluation.run import evaluate_segmentation

ROOT = Path(__file__).resolve().parents[1]
MODEL_CARD = ROOT / "docs" / "models.md"


def model_card_miou() -> float:
    """The shipped file's mIoU (the bold number) in the model card's row for the first 100 validation scenes."""
    match = re.search(r"first 100 validation scenes[^\n]*?\*\*([\d.]+)\*\*", MODEL_CARD.read_text())
    assert match, f"{MODEL_CARD} has no row for the first 100 validation scenes with a bold mIoU"
    return float(match.group(1))


def test_loads_offline_by_name_with_its_settings(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = pretrained.resolve("synthvoc")
    assert path.is_file() and path.stat().st_size <= 10 * 2**20
    with safe_open(str(path), framework="pt") as f:
        assert not any(k.startswith(TRAINING_ONLY) for k in f.keys())  # the training-only parameters are dropped
    settings = groupvit.load_model("synthvoc").test_settings
    assert (settings.short_side, settings.mode, settings.trained_on) == (64, "whole", "synthvoc")
    assert settings.classes == tuple(CLASS_NAMES) and 0.0 < settings.background_threshold < 1.0
    assert "synthvoc" in pretrained.table() and str(path) in pretrained.table()  # `groupvit list`: in the package


@pytest.mark.slow
def test_scores_its_model_card_on_the_first_100_val_scenes_regenerated(tmp_path):
    # The scenes are a function of (seed, split, index): the first 100 are those the model card was measured on.
    generate(tmp_path, SynthVOCSpec(seed=0, train=0, val=100, test=0, calib=0), workers=1, progress=False)
    model = groupvit.load_model("synthvoc")
    settings = model.test_settings
    result = evaluate_segmentation(model, load_dataset("voc", voc_root(tmp_path), "val"),
                                   background_threshold=settings.background_threshold, naming=settings.naming,
                                   progress=False)  # fmt: skip
    assert result["images"] == 100 and result["short_side"] == 64 and result["mode"] == "whole"
    assert abs(result["miou"] - model_card_miou()) <= 1.5, (result["miou"], model_card_miou())


@pytest.mark.slow
def test_the_wheel_ships_the_weights_and_they_load_in_a_fresh_environment(tmp_path):
    # Built from a copy: an in-tree build would reuse (and leave) ./build, whose stale files can reach a wheel.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(".*", "build", "dist", "runs", "*.egg-info", "__pycache__", "tests", "docs")
    shutil.copytree(ROOT, source, ignore=skip)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)  # fmt: skip
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("groupvit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "groupvit/weights/synthvoc.safetensors" in names and "groupvit/assets/synthvoc/examples.json" in names
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    python = str(env / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True)  # fmt: skip
    assert install.returncode == 0, install.stderr
    # The dependencies (torch and the rest) come from this environment; groupvit itself only from the wheel.
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    import sysconfig

    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = "import groupvit; m = groupvit.load_model('synthvoc'); print(groupvit.__file__, m.test_settings.short_side)"
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)})  # fmt: skip
    assert run.returncode == 0, run.stderr
    location, short_side = run.stdout.split()
    assert Path(location).is_relative_to(env) and short_side == "64"
