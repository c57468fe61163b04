"""The ONNX export (groupvit.export) run on onnxruntime (groupvit.runtime) against the PyTorch model it came from:
embeddings and assignment maps to 1e-4, `groupvit segment` labels equal on a SynthVOC scene, damaged folders
refused in one line, and the docs' onnxruntime-only snippet run as written."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
from groupvit.checkpoint import CheckpointError
from groupvit.config import model_config
from groupvit.export import export_onnx
from groupvit.runtime import OnnxGroupViT

from .conftest import randomize

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupvit", *args], capture_output=True, text=True, cwd=cwd)


def max_differences(model, onnx_model, pixels: torch.Tensor) -> list[float]:
    with torch.no_grad():
        ours, theirs = model.encode_image_groups(pixels), onnx_model.encode_image_groups(pixels)
    pairs = [(ours.image_embeds, theirs.image_embeds), (ours.group_embeds, theirs.group_embeds)]
    pairs += list(zip(ours.assignments, theirs.assignments, strict=True))
    for a, b in pairs:
        assert a.shape == b.shape
    return [float((a - b).abs().max()) for a, b in pairs]


def text_difference(model, onnx_model) -> float:
    ids = groupvit.tokenize(["a photo of a dog.", "a cat on a sofa next to a very long sentence about it", "x"])
    with torch.no_grad():
        return float((model.encode_text(ids) - onnx_model.encode_text(ids)).abs().max())


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[groupvit.GroupViT, Path]:
    model = randomize(groupvit.GroupViT(model_config("small")), seed=1)
    return model, export_onnx(model, tmp_path_factory.mktemp("small_onnx"))


@pytest.fixture(scope="module")
def synthvoc(tmp_path_factory) -> tuple[groupvit.GroupViT, Path]:
    return groupvit.load_model("synthvoc"), export_onnx("synthvoc", tmp_path_factory.mktemp("synthvoc_onnx"))


def test_export_folder_is_checked_and_records_what_it_needs(small):
    import onnx

    model, folder = small
    assert sorted(p.name for p in folder.iterdir()) == ["groupvit.json", "text.onnx", "vision.onnx"]
    for name in ("vision.onnx", "text.onnx"):
        proto = onnx.load(folder / name)
        onnx.checker.check_model(proto, full_check=True)
        assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == 17
    vision = onnx.load(folder / "vision.onnx").graph
    dims = [d.dim_param or d.dim_value for d in vision.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in vision.output] == ["image_embeds", "group_embeds", "assignment_0", "assignment_1"]
    manifest = json.loads((folder / "groupvit.json").read_text())
    assert manifest["opset"] == 17 and manifest["config"] == model.config.to_dict()
    assert manifest["test_settings"] == model.test_settings.to_dict()
    assert manifest["versions"]["groupvit"] == groupvit.__version__ and manifest["exported_from"]
    assert manifest["logit_scale"] == pytest.approx(model.logit_scale_value().item())
    assert model.training is False  # the export leaves the model as it found it, in eval mode


@pytest.mark.parametrize("size", [(64, 64), (40, 96), (128, 72)])
def test_small_matches_pytorch(small, size):
    model, folder = small
    onnx_model = groupvit.load_model(folder)
    assert isinstance(onnx_model, OnnxGroupViT) and onnx_model.runtime == "onnxruntime"
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
    assert max(max_differences(model, onnx_model, pixels)) <= TOLERANCE
    assert text_difference(model, onnx_model) <= TOLERANCE


def test_synthvoc_matches_pytorch_and_keeps_its_settings(synthvoc):
    model, folder = synthvoc
    onnx_model = groupvit.load_model(folder)
    assert onnx_model.test_settings == model.test_settings and onnx_model.config == model.config
    pixels = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    assert max(max_differences(model, onnx_model, pixels)) <= TOLERANCE
    assert text_difference(model, onnx_model) <= TOLERANCE
    assert float(onnx_model.logit_scale_value()) == pytest.approx(model.logit_scale_value().item())


@pytest.mark.slow
def test_released_architecture_matches_pytorch_at_224_448_and_non_square(tmp_path):
    # Random weights of the released GCC+YFCC architecture; batch 1 at each size keeps this to seconds.
    model = randomize(groupvit.GroupViT(model_config("gcc_yfcc")), seed=2)
    onnx_model = groupvit.load_model(export_onnx(model, tmp_path))
    for size in ((224, 224), (448, 448), (224, 320)):
        pixels = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(size[1]))
        assert max(max_differences(model, onnx_model, pixels)) <= TOLERANCE, size
    assert text_difference(model, onnx_model) <= TOLERANCE


def write_scene(folder: Path, index: int = 0) -> Path:
    from groupvit.data.synthvoc import make_scene
    from groupvit.demo import preset_sections, scene_options

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"val_{index:06d}.png"
    Image.fromarray(make_scene(0, "val", index, scene_options(preset_sections()[2])).image).save(path)
    return path


@pytest.mark.slow
def test_segment_cli_on_the_export_gives_pytorchs_labels(tmp_path):
    scene = write_scene(tmp_path / "scenes", 1)
    exported = run_cli("export", "synthvoc", "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert exported.returncode == 0, exported.stderr
    again = run_cli("export", "synthvoc", "--format", "onnx", "--out", str(tmp_path / "onnx"))
    assert again.returncode == 2 and "--overwrite" in again.stderr  # never replaces an export silently
    labels = {}
    for checkpoint, runtime in ((str(tmp_path / "onnx"), "onnxruntime"), ("synthvoc", "pytorch")):
        out = tmp_path / runtime
        result = run_cli("segment", str(scene), "--checkpoint", checkpoint, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert re.search(rf"groupvit segment: short side 64, .*; runtime {runtime}\n", result.stderr)
        labels[runtime] = np.array(Image.open(out / f"{scene.stem}_labels.png"))
    assert len(np.unique(labels["pytorch"])) > 1  # the scene has an object, not only background
    assert np.array_equal(labels["onnxruntime"], labels["pytorch"])


@pytest.mark.parametrize("damage", ["missing text.onnx", "truncated vision.onnx", "broken groupvit.json"])
def test_damaged_export_is_refused_in_one_line_naming_the_file(small, tmp_path, damage):
    import shutil

    folder = tmp_path / "export"
    shutil.copytree(small[1], folder)
    what, name = damage.split()
    if what == "missing":
        (folder / name).unlink()
    elif what == "truncated":
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    else:
        (folder / name).write_text('{"format": "groupvit-onnx", "config": ')
    with pytest.raises(CheckpointError, match=re.escape(name)):
        groupvit.load_model(folder)
    result = run_cli("segment", str(write_scene(tmp_path / "scenes")), "--checkpoint", str(folder), "--out",
                     str(tmp_path / "out"))  # fmt: skip
    assert result.returncode == 2 and name in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_without_onnxruntime_an_export_says_what_to_install(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(CheckpointError, match=re.escape('pip install "groupvit[onnx]"')):
        groupvit.load_model(small[1])


def test_onnx_model_refuses_what_the_export_cannot_do(small):
    onnx_model = groupvit.load_model(small[1])
    with pytest.raises(ValueError, match="compile applies to the PyTorch model"):
        onnx_model.compile_encoders()
    with pytest.raises(ValueError, match="not a positive multiple of the patch size 8"):
        onnx_model.encode_image(torch.zeros(1, 3, 60, 64))
    segmenter = groupvit.ZeroShotSegmenter(onnx_model, ["cat", "dog"], naming=groupvit.naming.Naming(hierarchical=0.5))
    with pytest.raises(ValueError, match="hierarchical naming needs the PyTorch model"):
        segmenter(np.zeros((64, 64, 3), np.uint8))


def docs_snippet() -> str:
    """The Python block of docs/deployment.md that runs an export with onnxruntime alone."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```python[^\n]*\n(.*?)```", text, re.S)
    (snippet,) = [b for b in blocks if "onnxruntime" in b]
    return snippet


@pytest.mark.slow
def test_docs_snippet_runs_the_export_without_groupvit_and_matches_pytorch(synthvoc, tmp_path):
    import shutil

    model, folder = synthvoc
    shutil.copytree(folder, tmp_path / "synthvoc_onnx")
    scene = tmp_path / "onnx_scenes" / "val_000000.jpg"  # where the README's line writes it
    scene.parent.mkdir()
    Image.open(write_scene(tmp_path / "scenes")).save(scene)
    # groupvit cannot be imported in the snippet's process: it runs on numpy, onnxruntime and the tokenizer alone.
    block = "import sys; sys.modules['groupvit'] = None\n"
    run = subprocess.run([sys.executable, "-c", block + docs_snippet()], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    shares = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    # The same steps on PyTorch: the image resized as the snippet does, the soft maps chained, each patch's group
    # named by its best class.
    settings = model.test_settings
    classes = list(settings.classes)
    side = settings.short_side
    image = Image.open(scene).convert("RGB").resize((side, side), Image.BILINEAR)
    mean, std = np.array(groupvit.image.IMAGENET_MEAN), np.array(groupvit.image.IMAGENET_STD)
    pixels = torch.from_numpy(((np.asarray(image) / 255 - mean) / std).transpose(2, 0, 1)[None]).float()
    with torch.no_grad():
        out = model.encode_image_groups(pixels)
        text = torch.nn.functional.normalize(
            model.encode_text(groupvit.tokenize([f"a photo of a {c}." for c in classes]))
        )
    to_group = out.assignments[0].transpose(1, 2)
    for soft in out.assignments[1:]:
        to_group = to_group @ soft.transpose(1, 2)
    group_class = (torch.nn.functional.normalize(out.group_embeds[0], dim=-1) @ text.T).argmax(dim=1)
    patch_class = group_class[to_group[0].argmax(dim=1)].numpy()
    expected = {classes[c]: round(float((patch_class == c).mean()), 3) for c in np.unique(patch_class)}
    assert shares == expected


@pytest.mark.slow
def test_readme_line_exports_synthvoc_and_segments_scenes_offline(tmp_path):
    """The README's copy-paste line, run as written (its `.venv/bin/groupvit` is this environment's)."""
    (line,) = [l for l in (ROOT / "README.md").read_text().splitlines() if "groupvit export synthvoc" in l]
    command = line.replace(".venv/bin/groupvit", f"{sys.executable} -m groupvit")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    env.update({k: v for k, v in os.environ.items() if k == "PYTHONPATH"})  # a checkout's code, where set
    run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert "runtime onnxruntime" in run.stderr
    assert len(list((tmp_path / "onnx_out").glob("*_labels.png"))) == 4


def test_int8_export_is_smaller_and_stays_close(small, tmp_path):
    model, folder = small
    quantized = export_onnx(model, tmp_path, quantize="int8")
    assert (quantized / "vision.onnx").stat().st_size < (folder / "vision.onnx").stat().st_size / 2
    onnx_model = groupvit.load_model(quantized)
    assert onnx_model.manifest["quantization"] == "dynamic int8 (onnxruntime)"
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(model.encode_image(pixels), onnx_model.encode_image(pixels))
    assert cosine.min() > 0.95  # close, not equal: the weights are rounded to 8 bits


@pytest.mark.slow
def test_onnx_benchmark_quick(tmp_path):
    """benchmarks.run --onnx in quick mode, so that it cannot rot (its numbers come from full runs)."""
    out = tmp_path / "onnx.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.run", "--onnx", "--quick", "--threads", "1", "--out",
                          str(out)], capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["case"], r["batch"]) for r in rows] == [("image224", 1), ("image224", 4), ("image448", 1),
                                                       ("image448", 4), ("text", 16)]  # fmt: skip
    for row in rows:
        assert set(row["seconds"]) == {"ours", "ours onnx", "ours onnx int8", "theirs", "theirs onnx"}
        assert all(s > 0 for s in row["seconds"].values())
        assert set(row["cpu_seconds"]) == set(row["seconds"]) and all(s > 0 for s in row["cpu_seconds"].values())
        assert row["best_fp32_vs_theirs_cpu"] == pytest.approx(
            row["cpu_seconds"]["theirs"] / min(row["cpu_seconds"]["ours"], row["cpu_seconds"]["ours onnx"])
        )


def test_classifier_and_app_run_on_the_export(small):
    from groupvit.app import load_app_model

    model, folder = small
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    names = ["cat", "dog", "a red car", "grass"]
    rankings = [groupvit.ZeroShotClassifier(m, names)(image, top=4) for m in (model, groupvit.load_model(folder))]
    assert [n for n, _ in rankings[0]] == [n for n, _ in rankings[1]]
    assert np.allclose([p for _, p in rankings[0]], [p for _, p in rankings[1]], atol=1e-4)
    onnx_model, description, warning = load_app_model(str(folder), "cpu")
    assert onnx_model.runtime == "onnxruntime" and "(on onnxruntime)" in description and warning is None


@pytest.mark.parametrize("grid", [(28, 28), (7, 9), (14, 20), (1, 1), (50, 13)])
def test_position_embedding_resize_is_torchs_bicubic_interpolation(grid):
    """The resize is written as two interpolation matrices (the export keeps it dynamic and fast); it must stay
    F.interpolate's bicubic, align_corners=False, as transformers and the reference resize."""
    from groupvit.vision import resize_pos_embed

    pos = torch.randn(1, 14 * 14, 32, generator=torch.Generator().manual_seed(0))
    square = pos.reshape(1, 14, 14, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(square, size=grid, mode="bicubic", align_corners=False)
    assert torch.allclose(resize_pos_embed(pos, grid), expected.permute(0, 2, 3, 1).reshape(1, -1, 32), atol=1e-5)


@pytest.mark.slow
def test_eval_cli_on_the_export_scores_as_pytorch_and_says_so(small, tmp_path):
    from .conftest import write_tiny_voc

    model, folder = small
    root = write_tiny_voc(tmp_path)
    weights = tmp_path / "small.safetensors"
    groupvit.save_model(model, weights)
    results = {}
    for checkpoint in (weights, folder):
        out = tmp_path / f"{checkpoint.name}.json"
        run = run_cli("eval", "--dataset", "voc", "--root", str(root), "--checkpoint", str(checkpoint), "--mode",
                      "whole", "--out", str(out))  # fmt: skip
        assert run.returncode == 0, run.stderr
        results[checkpoint] = json.loads(out.read_text())
    pytorch, onnx = results[weights], results[folder]
    assert (pytorch["runtime"], onnx["runtime"]) == ("pytorch", "onnxruntime")
    assert onnx["miou"] == pytorch["miou"] and onnx["per_class"] == pytorch["per_class"]  # the same labels
