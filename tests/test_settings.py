"""Test settings recorded with a model (groupvit.settings): the protocol's by default, stored in our .safetensors,
followed by the segmenter, the classifier and the CLI unless overridden."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

import groupvit
from groupvit.checkpoint import CheckpointError
from groupvit.classification import ZeroShotClassifier
from groupvit.config import model_config
from groupvit.model import GroupViT
from groupvit.naming import Naming
from groupvit.segmentation import ZeroShotSegmenter
from groupvit.settings import TestSettings

RECORDED = TestSettings(short_side=32, mode="whole", crop_size=32, stride=16, background_threshold=0.3,
                        naming=Naming(min_area=0.05), classes=("cat", "dog"), about="a test model",
                        trained_on="synthvoc")  # fmt: skip


@pytest.fixture(scope="module")
def small_model(small_checkpoint):
    return groupvit.load_model(small_checkpoint)


@pytest.fixture(scope="module")
def recorded_checkpoint(small_model, tmp_path_factory):
    model = GroupViT(small_model.config)
    model.load_state_dict(small_model.state_dict())
    model.test_settings = RECORDED
    path = tmp_path_factory.mktemp("recorded") / "recorded.safetensors"
    groupvit.save_model(model, path)
    return path


def test_the_protocol_settings_scale_with_the_training_size():
    # The released models are trained at 224: the protocol's 448 short side, 448 crops at stride 224 (spec 5.1).
    assert TestSettings.for_config(model_config("gcc_yfcc")) == TestSettings(448, "slide", 448, 224)
    synthvoc = TestSettings.for_config(model_config("synthvoc"))  # trained at 64
    assert (synthvoc.short_side, synthvoc.crop_size, synthvoc.stride) == (128, 128, 64)
    assert not TestSettings.for_config(model_config("gcc_yfcc")).recorded(model_config("gcc_yfcc"))
    assert RECORDED.recorded(model_config("synthvoc"))


def test_settings_round_trip_through_the_file_and_half_precision_storage(small_model, tmp_path):
    model = GroupViT(small_model.config)
    model.load_state_dict(small_model.state_dict())
    model.test_settings = RECORDED
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    groupvit.save_model(model, full)
    groupvit.save_model(model, half, dtype=torch.float16)
    with safe_open(str(half), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16, torch.int64}  # int64: position ids
    assert half.stat().st_size < 0.6 * full.stat().st_size
    for path, dtype in ((full, torch.float32), (half, torch.float16)):
        loaded = groupvit.load_model(path)
        assert loaded.test_settings == RECORDED
        for name, tensor in loaded.state_dict().items():
            original = model.state_dict()[name]
            if original.is_floating_point():  # read back as float32 for CPU inference
                assert tensor.dtype == torch.float32 and torch.equal(tensor, original.to(dtype).float())
            else:
                assert torch.equal(tensor, original)
    # A file without settings (written before they existed) gets the protocol's for its size.
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, tmp_path / "old.safetensors", metadata={"format": "groupvit", "config": model.config.to_json()})
    assert groupvit.load_model(tmp_path / "old.safetensors").test_settings == TestSettings.for_config(model.config)
    with pytest.raises(ValueError, match="nvlabs"):
        groupvit.save_model(model, tmp_path / "x.pth", layout="nvlabs", dtype=torch.float16)


def test_broken_settings_in_a_file_are_named(small_model, tmp_path):
    tensors = {k: v.contiguous() for k, v in small_model.state_dict().items()}
    path = tmp_path / "broken.safetensors"
    metadata = {"format": "groupvit", "config": small_model.config.to_json(), "test_settings": '{"mode": "zoom"}'}
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: the test settings .* not valid .*zoom"):
        groupvit.load_model(path)
    with pytest.raises(ValueError, match="unknown test settings colour"):
        TestSettings.from_dict({"colour": "red"})


def test_the_segmenter_follows_the_model_unless_told_otherwise(small_model):
    model = GroupViT(small_model.config)
    model.load_state_dict(small_model.state_dict())
    default = ZeroShotSegmenter(model, ["cat", "dog"])  # the protocol's, scaled to the 64-pixel model
    assert (default.short_side, default.mode, default.crop_size, default.stride) == (128, "slide", 128, 64)
    assert default.background_threshold == 0.95 and default.naming == Naming()
    model.test_settings = RECORDED
    recorded = ZeroShotSegmenter(model, ["cat", "dog"])
    assert (recorded.short_side, recorded.mode, recorded.background_threshold) == (32, "whole", 0.3)
    assert recorded.naming == Naming(min_area=0.05)
    told = ZeroShotSegmenter(model, ["cat"], background_threshold=None, mode="slide", short_side=48, naming=Naming())
    assert (told.short_side, told.mode, told.background_threshold, told.naming) == (48, "slide", None, Naming())
    # The resize really follows: a 100 x 200 image is encoded at short side 32, i.e. a 32 x 64 canvas.
    rgb = np.zeros((100, 200, 3), np.uint8)
    assert recorded.encode(rgb).canvas == (32, 64) and told.encode(rgb).canvas == (48, 96)


def test_the_classifier_crops_the_training_size(small_model):
    pixels = ZeroShotClassifier(small_model, ["cat", "dog"]).transform(Image.new("RGB", (300, 200)))
    assert pixels.shape == (3, 64, 64)  # short side 73 (256/224 of 64), centre crop 64
    pixels = ZeroShotClassifier(small_model, ["cat", "dog"], short_side=48).transform(Image.new("RGB", (300, 200)))
    assert pixels.shape == (3, 48, 48)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupvit", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_segment_uses_the_recorded_settings_and_vocabulary(recorded_checkpoint, tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(image)
    run = cli("segment", str(image), "--checkpoint", str(recorded_checkpoint), "--out", str(tmp_path / "a"))
    assert run.returncode == 0, run.stderr
    assert "short side 32, whole mode (one pass), background threshold 0.3, a naming variant" in run.stderr
    assert "recorded with the model" in run.stderr
    summary = json.loads((tmp_path / "a" / "scene.json").read_text())
    assert summary["classes"] == ["cat", "dog"] and summary["short_side"] == 32 and summary["mode"] == "whole"
    assert summary["background_threshold"] == 0.3 and summary["naming"]["min_area"] == 0.05
    run = cli("segment", str(image), "--checkpoint", str(recorded_checkpoint), "--out", str(tmp_path / "b"),
              "--classes", "car", "--short-side", "48", "--mode", "slide", "--dataset", "context")  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "b" / "scene.json").read_text())
    assert summary["classes"] == ["car"] and summary["short_side"] == 48 and summary["mode"] == "slide"
    assert summary["background_threshold"] == 0.35  # --dataset context's preset over the recorded one
    assert "background threshold 0.35" in run.stderr
    run = cli("segment", str(image), "--checkpoint", str(recorded_checkpoint), "--out", str(tmp_path / "c"),
              "--no-background")  # fmt: skip
    assert run.returncode == 0 and "background threshold none" in run.stderr, run.stderr
    assert json.loads((tmp_path / "c" / "scene.json").read_text())["background_threshold"] is None


@pytest.mark.slow
def test_segment_asks_for_classes_when_the_model_has_none(small_checkpoint, tmp_path):
    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40)).save(image)
    run = cli("segment", str(image), "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "a"))
    assert run.returncode == 2 and "--classes is required: this model records no vocabulary" in run.stderr
    assert dataclasses.asdict(groupvit.load_model(small_checkpoint).test_settings)["classes"] == ()


def test_convert_stores_half_precision_and_keeps_the_settings(recorded_checkpoint, tmp_path, capsys):
    from groupvit.cli import main

    half = tmp_path / "half.safetensors"
    assert main(["convert", str(recorded_checkpoint), str(half), "--dtype", "float16"]) == 0
    with safe_open(str(half), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16, torch.int64}
    assert groupvit.load_model(half).test_settings == RECORDED
    assert main(["convert", str(recorded_checkpoint), str(tmp_path / "nv.pth"), "--to", "nvlabs", "--dtype",
                 "float16"]) == 2  # fmt: skip
    assert "--dtype float16 applies to our .safetensors layout" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["hf", "nvlabs"])
def test_every_layout_keeps_the_settings_and_vocabulary_through_a_round_trip(layout, recorded_checkpoint, tmp_path,
                                                                             capsys):  # fmt: skip
    from groupvit.cli import main

    exported = tmp_path / ("exported" if layout == "hf" else "exported.pth")
    assert main(["convert", str(recorded_checkpoint), str(exported), "--to", layout]) == 0
    err = capsys.readouterr().err
    assert groupvit.load_model(exported).test_settings == RECORDED
    if layout == "hf":  # where transformers looks, beside its own config; and what the layout cannot hold is named
        assert json.loads((exported / "config.json").read_text())["groupvit_test_settings"]["classes"] == ["cat", "dog"]
        assert "multi-label temperature" not in err  # this model has none
        with_temperature = GroupViT(dataclasses.replace(model_config("small"), multi_label_logit_scale=True))
        with pytest.warns(UserWarning, match="the transformers layout has no multi-label temperature: it is left out"):
            groupvit.save_model(with_temperature, tmp_path / "temperature", layout="hf")
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(exported), str(back)]) == 0
    assert groupvit.load_model(back).test_settings == RECORDED
    (tmp_path / "broken").mkdir()
    hf_config = json.loads((exported / "config.json").read_text()) if layout == "hf" else None
    if hf_config is not None:  # a damaged entry is named with its file
        hf_config["groupvit_test_settings"] = {"mode": "zoom"}
        for name in ("config.json", "model.safetensors"):
            (tmp_path / "broken" / name).write_bytes((exported / name).read_bytes())
        (tmp_path / "broken" / "config.json").write_text(json.dumps(hf_config))
        with pytest.raises(CheckpointError, match=r"broken/config\.json: the test settings .* not valid .*zoom"):
            groupvit.load_model(tmp_path / "broken")


def test_classify_uses_the_recorded_vocabulary_and_the_settings_line_names_each_source(
    recorded_checkpoint, small_checkpoint, tmp_path, capsys
):
    from groupvit.cli import main

    rng = np.random.default_rng(0)
    square, photo = tmp_path / "square.png", tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(square)
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(photo)
    assert main(["classify", str(square), "--checkpoint", str(recorded_checkpoint)]) == 0
    out, err = capsys.readouterr()
    assert err == "groupvit classify: the 2 classes recorded with the model (--classes changes them)\n"
    ranked = {entry.rsplit(" ", 1)[0] for entry in out.split(": ", 1)[1].strip().split(", ")}
    assert ranked == {"cat", "dog"}
    # A model trained on (square) SynthVOC scenes given photographs: what it knows, said once.
    assert main(["classify", str(photo), str(square), str(photo), "--checkpoint", str(recorded_checkpoint),
                 "--classes", "car,tree"]) == 0  # fmt: skip
    out, err = capsys.readouterr()
    assert err.count("note: this model knows SynthVOC's emoji-like scenes") == 1 and "70x40 pixels" in err
    assert "recorded with the model" not in err and out.count("car") == 3
    assert main(["classify", str(square), "--checkpoint", str(small_checkpoint)]) == 2
    assert "--classes is required: this model records no vocabulary of its own" in capsys.readouterr().err

    def settings_line(*argv: str, checkpoint=recorded_checkpoint) -> str:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main(["segment", str(square), "--checkpoint", str(checkpoint), "--out", str(out), *argv]) == 0
        return capsys.readouterr().err.splitlines()[0]

    line = settings_line("--short-side", "48", "--dataset", "context")
    assert line.startswith("groupvit segment: short side 48, whole mode (one pass), background threshold 0.35")
    assert ("(short side: from --short-side; mode, naming, classes: recorded with the model; background threshold: "
            "from --dataset context;") in line  # fmt: skip
    line = settings_line("--mode", "slide", "--classes", "car", "--background-threshold", "0.5", "--min-area", "0.1")
    assert ("(short side: recorded with the model; mode: from --mode; background threshold: from "
            "--background-threshold; naming: from the naming options; classes: from --classes;") in line  # fmt: skip
    line = settings_line("--classes", "car", "--no-background", checkpoint=small_checkpoint)
    assert "(short side, mode, naming: the protocol's; background threshold: from --no-background; classes: " in line


# Each entry point resolves through groupvit.settings.resolve_settings: with it replaced by one that answers
# differently (the real answer, marked), what the entry point runs and prints follows the replacement.


def marked_resolver(monkeypatch, module, calls: list, **changes):
    """Replace `module.resolve_settings` by the real one with `changes` to its answer; each answer in `calls`."""
    from groupvit import settings

    def resolve(*args, **kwargs):
        calls.append(dataclasses.replace(settings.resolve_settings(*args, **kwargs), **changes))
        return calls[-1]

    monkeypatch.setattr(module, "resolve_settings", resolve)


def test_segment_takes_its_settings_line_from_resolve_settings(recorded_checkpoint, tmp_path, capsys, monkeypatch):
    from groupvit import predict
    from groupvit.cli import main

    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40)).save(image)
    calls = []
    marked_resolver(monkeypatch, predict, calls, origins="MARKED", background_threshold=0.125)
    assert main(["segment", str(image), "--checkpoint", str(recorded_checkpoint), "--out", str(tmp_path / "a")]) == 0
    assert len(calls) == 1 and "background threshold 0.125, a naming variant (MARKED;" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "scene.json").read_text())["background_threshold"] == 0.125


def test_classify_takes_its_classes_from_resolve_settings(recorded_checkpoint, tmp_path, capsys, monkeypatch):
    from groupvit import predict
    from groupvit.cli import main

    image = tmp_path / "scene.png"
    Image.new("RGB", (40, 40)).save(image)
    calls = []
    marked_resolver(monkeypatch, predict, calls, classes=("kettle", "lamp", "moon"))
    assert main(["classify", str(image), "--checkpoint", str(recorded_checkpoint)]) == 0
    out, err = capsys.readouterr()
    assert (
        len(calls) == 1 and err == "groupvit classify: the 3 classes recorded with the model (--classes changes them)\n"
    )
    assert {entry.rsplit(" ", 1)[0] for entry in out.split(": ", 1)[1].strip().split(", ")} == {
        "kettle",
        "lamp",
        "moon",
    }


def test_eval_resolves_the_dataset_threshold_and_says_where_each_setting_came_from(
    recorded_checkpoint, tmp_path, capsys, monkeypatch
):
    from groupvit.cli import main
    from groupvit.evaluation import run
    from tests.conftest import write_tiny_voc

    root = write_tiny_voc(tmp_path / "voc", count=2)
    out = tmp_path / "voc.json"
    # The model records 0.3, whole mode, short side 32 and a naming variant: eval takes VOC's 0.95 (the benchmark's
    # protocol), the official naming and the dataset's classes, but the model's mode.
    assert main(["eval", "--dataset", "voc", "--root", str(root), "--checkpoint", str(recorded_checkpoint), "--out",
                 str(out), "--short-side", "64"]) == 0  # fmt: skip
    line = capsys.readouterr().err.splitlines()[0]
    assert line == ("groupvit eval: short side 64, whole mode (one pass), background threshold 0.95 (short side: from "
                    "--short-side; mode: recorded with the model; background threshold, classes: from dataset voc; "
                    "naming: the protocol's)")  # fmt: skip
    assert json.loads(out.read_text())["background_threshold"] == 0.95
    calls = []
    marked_resolver(monkeypatch, run, calls, origins="MARKED", background_threshold=0.125)
    assert main(["eval", "--dataset", "voc", "--root", str(root), "--checkpoint", str(recorded_checkpoint),
                 "--short-side", "64", "--out", str(out), "--overwrite"]) == 0  # fmt: skip
    assert calls and "background threshold 0.125 (MARKED)" in capsys.readouterr().err
    assert json.loads(out.read_text())["background_threshold"] == 0.125  # what was scored, not only what was said


def test_the_python_api_and_the_app_resolve_through_resolve_settings(small_model, monkeypatch):
    from groupvit import segmentation

    calls = []
    marked_resolver(monkeypatch, segmentation, calls, background_threshold=0.125)
    assert ZeroShotSegmenter(small_model, ["cat"]).background_threshold == 0.125 and len(calls) == 1
    pytest.importorskip("gradio")
    from groupvit import app

    monkeypatch.setattr(app, "_load_app_model", lambda *args: (small_model, "a test model", None))
    marked_resolver(monkeypatch, app, calls, settings=dataclasses.replace(RECORDED, short_side=40))
    model, _, _ = app.load_app_model("any", "cpu", short_side=56)
    assert len(calls) == 2 and model.test_settings.short_side == 40
