"""Fine-tuning (groupvit.training.finetune, `groupvit train --init`) and SynthVOC's second vocabulary: the start equals
the loaded weights in every layout, frozen parts stay bit for bit, a resumed fine-tuning run equals an uninterrupted
one, a disagreeing model is refused, the new classes' masks follow the drawn glyphs, and the released architecture
fine-tunes offline from a hand-built hub cache."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
from groupvit.config import GroupViTConfig, model_config
from groupvit.data import synthvoc
from groupvit.data.nouns import BOILERPLATE_WORDS
from groupvit.data.synthvoc import (
    CLUTTER,
    NOVEL_OBJECTS,
    VOC_OBJECTS,
    SceneOptions,
    SynthVOCSpec,
    generate,
    make_scene,
    voc_root,
)
from groupvit.demo import DEMO_THRESHOLDS
from groupvit.evaluation.datasets import VOC_CLASSES, load_dataset
from groupvit.evaluation.run import evaluate_segmentation
from groupvit.pretrained import PRETRAINED
from groupvit.recipes import NAMINGS
from groupvit.report import largest_object_named
from groupvit.segmentation import ZeroShotSegmenter
from groupvit.training.config import TrainConfig
from groupvit.training.finetune import (
    FRESH_LOGIT_BIAS,
    model_from_init,
    parameter_groups,
    part_selectors,
    set_learning_rate,
)
from groupvit.training.loop import train
from tests.conftest import randomize
from tests.test_training import TINY_MODEL, dataset  # noqa: F401  (a fixture: the tiny captioned squares)

NOVEL_NAMES = tuple(name for name, _, _ in NOVEL_OBJECTS)


# ----------------------------------------------------------------------------- the second vocabulary


def test_novel_classes_are_apart_from_voc_and_clutter():
    assert len(NOVEL_OBJECTS) == 20 and not set(NOVEL_NAMES) & set(VOC_CLASSES)
    glyphs = [g for _, gs, _ in NOVEL_OBJECTS for g in gs]
    others = {g for _, gs, _ in VOC_OBJECTS for g in gs} | {g for g, _ in CLUTTER}
    assert len(set(glyphs)) == len(glyphs) and not set(glyphs) & others
    for g in glyphs:  # every glyph renders (a missing one raises)
        assert synthvoc.glyph(g)[..., 3].max() == 255
    words = {w for _, _, pairs in NOVEL_OBJECTS for pair in pairs for phrase in pair for w in phrase.split()}
    voc_words = {w for _, _, pairs in VOC_OBJECTS for pair in pairs for phrase in pair for w in phrase.split()}
    clutter_words = {w for _, name in CLUTTER for w in name.split()}
    assert not (words - {"of"}) & (voc_words | clutter_words | set(BOILERPLATE_WORDS))


@pytest.mark.parametrize("vocabulary", ["novel", "combined"])
def test_masks_follow_the_scene_graph(vocabulary, monkeypatch):
    """Each object's label is where its glyph was pasted (alpha > 0.5), later objects over earlier ones; the labels
    are the vocabulary's (1-20 new classes; 1-20 VOC and 21-40 new in the combined split) and captions name only
    classes in the scene."""
    pasted = []
    paste = synthvoc._paste

    def recording_paste(canvas, rgb, alpha, y, x):
        full = paste(canvas, rgb, alpha, y, x)
        pasted.append(full.copy())
        return full

    monkeypatch.setattr(synthvoc, "_paste", recording_paste)
    options = SceneOptions(size=64, vocabulary=vocabulary)
    objects = synthvoc.VOCABULARIES[vocabulary]
    words = [(re.compile(rf"\b{re.escape(w)}\b"), c) for c, (_, _, pairs) in enumerate(objects)
             for pair in pairs for w in pair]  # fmt: skip
    seen = set()
    for i in range(40):
        pasted.clear()
        scene = make_scene(5, "val", i, options)
        drawn = pasted[len(scene.clutter) :]  # clutter is pasted first, then each placed object in order
        assert len(drawn) == len(scene.classes)
        expected = np.zeros((64, 64), np.uint8)
        for c, alpha in zip(scene.classes, drawn, strict=True):
            expected[alpha > 0.5] = c + 1
        np.testing.assert_array_equal(scene.labels, expected)
        named = {c for pattern, c in words if pattern.search(scene.caption)}
        assert named and named <= set(scene.classes), (scene.caption, scene.classes)
        seen.update(scene.classes)
    if vocabulary == "combined":  # both halves appear
        assert min(seen) < 20 <= max(seen)
    else:
        assert len(seen) > 15 and max(seen) < 20


def test_voc_scenes_are_unchanged_by_the_vocabulary_option():
    a, b = make_scene(1, "train", 3), make_scene(1, "train", 3, SceneOptions(vocabulary="voc"))
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    novel = make_scene(1, "train", 3, SceneOptions(vocabulary="novel"))
    assert not np.array_equal(a.image, novel.image)  # other layouts, not VOC's with other glyphs
    with pytest.raises(ValueError, match="scene vocabulary must be one of voc, novel, combined"):
        SceneOptions(vocabulary="fruit")


def test_novel_and_combined_folders_load_with_their_class_names(tmp_path):
    for vocabulary, names in (("novel", NOVEL_NAMES), ("combined", (*VOC_CLASSES, *NOVEL_NAMES))):
        spec = SynthVOCSpec(seed=2, train=6, val=8, test=2, calib=2, shard_size=6,
                            scene=SceneOptions(size=64, vocabulary=vocabulary))  # fmt: skip
        generate(tmp_path / vocabulary, spec, workers=1, progress=False)
        val = load_dataset("synthvoc", voc_root(tmp_path / vocabulary), "val")
        assert tuple(val.class_names) == names and val.label_names[0] == "background"
        scenes = json.loads((voc_root(tmp_path / vocabulary) / "scenes.json").read_text())
        for i in range(len(val)):
            image_id, _, labels = val[i]
            present = {val.label_names[v] for v in np.unique(labels)} - {"background"}
            assert present == set(scenes[image_id]["objects"])  # every object keeps pixels (min_visible)
        with tarfile.open(tmp_path / vocabulary / "train" / "000000.tar") as tar:  # captions only, no masks
            assert {Path(n).suffix for n in tar.getnames()} == {".jpg", ".txt"}
    (voc_root(tmp_path / "novel") / "class_names.txt").unlink()  # a folder of an older version
    with pytest.raises(ValueError, match=r"has no class_names\.txt: not a SynthVOC folder of this version"):
        load_dataset("synthvoc", voc_root(tmp_path / "novel"), "val")


# ----------------------------------------------------------------------------- train --init


def tiny_weights(folder: Path) -> dict[str, Path]:
    """One random tiny model (with its multi-label temperature) in each checkpoint layout."""
    cfg = GroupViTConfig.from_dict({**TINY_MODEL["model"], "multi_label_logit_scale": True})
    torch.manual_seed(0)
    model = randomize(groupvit.GroupViT(cfg))
    paths = {"groupvit": folder / "ours.safetensors", "nvlabs": folder / "nvlabs.pth", "hf": folder / "hf"}
    for layout, path in paths.items():
        groupvit.save_model(model, path, layout=layout)
    return paths


def test_init_from_every_layout_starts_from_the_loaded_weights(tmp_path, capsys):
    paths = {**tiny_weights(tmp_path), "package": "synthvoc"}
    for layout, path in paths.items():
        cfg = TrainConfig(init=str(path), multi_label=2, loss="sigmoid", deep_noun_loss=1.0)
        model, pretrained = model_from_init(cfg)
        reference = groupvit.load_model(path).state_dict()
        state = model.state_dict()
        for key, value in reference.items():
            assert torch.equal(state[key], value), (layout, key)  # |d| = 0
        fresh = {k for k in state if k not in reference}
        lacks_temperature = layout == "hf"  # transformers has no multi-label temperature
        expected = {"logit_bias", "multi_label_logit_bias"} | {k for k in state if k.startswith("patch_projection.")}
        assert fresh == expected | ({"multi_label_logit_scale"} if lacks_temperature else set()), layout
        assert pretrained == {n for n, _ in model.named_parameters()} - fresh
        assert model.logit_bias.item() == model.multi_label_logit_bias.item() == FRESH_LOGIT_BIAS
        assert model.test_settings.init == str(path)
    assert "has no logit_bias, multi_label_logit_bias, patch_projection.* (training-only)" in capsys.readouterr().out


def test_a_disagreeing_model_and_unknown_parts_are_refused(tmp_path, dataset):  # noqa: F811
    weights = tiny_weights(tmp_path)["groupvit"]
    common = dict(data=str(dataset / "pairs.csv"), init=str(weights), image_size=32, workers=0, multi_label=0)
    wider = tmp_path / "wider.yaml"
    wider.write_text(json.dumps({"model": {**TINY_MODEL["model"], "vision": {**TINY_MODEL["model"]["vision"],
                                                                               "width": 64}}}))  # fmt: skip
    with pytest.raises(ValueError, match=rf"model: {wider} disagrees with the weights of init {weights} "
                       rf"\(vision.width: 64 in model {wider}, 32 in init {weights}\)"):  # fmt: skip
        train(TrainConfig(model=str(wider), **common), tmp_path / "a")
    with pytest.raises(ValueError, match=r"freeze: unknown part 'txt'; valid for this model: text, text_head, .*"
                       r"image_stage0, image_block0, image_stage1, image_block1"):  # fmt: skip
        train(TrainConfig(freeze=["txt"], **common), tmp_path / "b")
    with pytest.raises(ValueError, match="freeze and pretrained_lr_scale apply to a fine-tuning run: set init"):
        TrainConfig(freeze=["text"])


def test_pretrained_weights_get_their_own_learning_rate():
    model, pretrained = groupvit.GroupViT(model_config("small")), {"logit_scale", "visual.pos_embed"}
    groups = parameter_groups(model, 0.05, pretrained, pretrained_lr_scale=0.1)
    optimizer = torch.optim.AdamW(groups)
    set_learning_rate(optimizer, 2.0)
    for group in optimizer.param_groups:
        names = {n for n, p in model.named_parameters() if any(p is q for q in group["params"])}
        assert group["lr"] == pytest.approx(0.2 if names <= pretrained else 2.0)
        assert names <= pretrained or not names & pretrained
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def finetune_config(data: Path, weights: Path, **changes) -> TrainConfig:
    return TrainConfig(data=str(data / "pairs.csv"), init=str(weights), image_size=32, augment="light", workers=0,
                       multi_label=2, tagger="pattern", warmup_steps=1, lr=5e-3, reference_batch=8, batch_size=8,
                       log_every=1, **changes)  # fmt: skip


def test_frozen_parts_stay_bit_identical(tmp_path, dataset):  # noqa: F811
    weights = tiny_weights(tmp_path)["groupvit"]
    freeze = ["text", "image_stage0", "heads"]
    train(finetune_config(dataset, weights, steps=3, save_every=3, freeze=freeze), tmp_path / "run")
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    before = groupvit.load_model(weights).state_dict()
    selectors = part_selectors(groupvit.load_model(weights))
    frozen = [k for k in before if any(selectors[p](k) for p in freeze)]
    assert any(k.startswith("visual_projection.norm.running_") for k in frozen)  # BatchNorm statistics too
    for key in frozen:
        if not key.endswith("num_batches_tracked"):  # a counter, not a weight
            assert torch.equal(after[key], before[key]), key
    moved = [k for k in before if k not in frozen and not torch.equal(after[k], before[k])]
    assert any(k.startswith("visual.stages.1.") for k in moved)  # what is not frozen trains


def test_resumed_finetuning_equals_uninterrupted(tmp_path, dataset, capsys):  # noqa: F811
    weights = tiny_weights(tmp_path)["groupvit"]
    cfg = finetune_config(dataset, weights, steps=4, save_every=2, pretrained_lr_scale=0.5, freeze=["text"],
                          classes=["red square", "blue square"])  # fmt: skip
    train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "cut")
    (tmp_path / "cut" / "checkpoint.pt").unlink()  # as if stopped after step 2: resume from checkpoint.prev.pt
    train(cfg, tmp_path / "cut", resume=True)
    assert f"init ({weights}) is ignored" in capsys.readouterr().out
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["pretrained_parameters"] == b["pretrained_parameters"] and a["pretrained_parameters"]
    saved = groupvit.load_model(tmp_path / "cut" / "model.safetensors")
    assert saved.test_settings.init == str(weights)  # recorded through the checkpoint across the resume
    assert saved.test_settings.classes == ("red square", "blue square")  # the new vocabulary
    assert json.loads((tmp_path / "cut" / "train_config.json").read_text())["init"] == str(weights)


# ----------------------------------------------------------------------------- the released architecture, offline


@pytest.mark.slow
def test_init_gcc_yfcc_offline_trains_saves_resumes_and_loads(tmp_path):
    """`groupvit train --init gcc_yfcc` on a hand-built Hugging Face cache holding random weights of the released
    config (transformers layout, at the pinned commit) and one tiny webdataset shard."""
    source = PRETRAINED["gcc_yfcc"].sources[0]
    base = tmp_path / "hub" / f"models--{source.location.replace('/', '--')}"
    torch.manual_seed(0)
    released = groupvit.GroupViT(model_config("gcc_yfcc"))
    groupvit.save_model(released, base / "snapshots" / source.revision, layout="hf")
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(source.revision)
    shard = tmp_path / "shard-000000.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(shard, "w") as tar:
        for i in range(6):
            for name, data in ((f"{i:04d}.png", _png(rng)), (f"{i:04d}.txt", f"a photo of a dog number {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "GROUPVIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "groupvit", "train", "--init", "gcc_yfcc", "--data",
           str(tmp_path / "shard-{000000..000000}.tar"), "--out", str(out), "--batch-size", "2", "--save-every", "1",
           "workers=0", "multi_label=2", "tagger=pattern", "augment=light", "shuffle_buffer=1", "reference_batch=2",
           "freeze=[text]", "pretrained_lr_scale=0.5"]  # fmt: skip
    run = subprocess.run([*cmd, "--steps", "2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "gcc_yfcc has no multi_label_logit_scale (training-only): started fresh" in run.stdout
    run = subprocess.run([*cmd, "--steps", "3", "--resume"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "init (gcc_yfcc) is ignored" in run.stdout
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    saved = groupvit.load_model(out / "model.safetensors")
    assert saved.test_settings.init == "gcc_yfcc"
    expected = model_config("gcc_yfcc").to_dict() | {"multi_label_logit_scale": True}
    assert saved.config.to_dict() == expected
    # the text tower was frozen: it is the hub file's, bit for bit
    for key, value in released.state_dict().items():
        if key.startswith("text."):
            assert torch.equal(saved.state_dict()[key], value), key


def _png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the fine-tuning demo


@pytest.mark.slow
def test_finetuning_demo_on_novel_classes_end_to_end(tmp_path):
    """`groupvit demo --init synthvoc --vocabulary novel` for a few steps on a few scenes, then from scratch."""
    data = tmp_path / "d"
    common = ["--data", str(data), "--train-scenes", "200", "--val-scenes", "12", "--calib-scenes", "12",
              "--workers", "1", "--replay", "0.3", "minutes=0", "steps=2", "eval_every=0"]  # fmt: skip
    out = tmp_path / "finetuned"
    run = subprocess.run([sys.executable, "-m", "groupvit", "demo", "--init", "synthvoc", "--vocabulary", "novel",
                          "--out", str(out), *common], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["init"] == "synthvoc" and result["vocabulary"] == "novel" and result["steps"] == 2
    assert set(result["per_class"]) == {"background", *NOVEL_NAMES} and result["images"] == 12
    for key in ("miou", "voc_miou", "combined_miou"):
        assert 0.0 <= result[key] <= 100.0
    assert {"miou", "voc_miou", "combined_miou", "recognition"} <= set(result["before"])
    # The training data: the novel scenes and the first VOC shard (replay), with the fine-tuning recipe.
    train_config = json.loads((out / "train_config.json").read_text())
    assert train_config["init"] == "synthvoc" and train_config["model"] == "" and train_config["lr"] == 3e-4
    assert (
        train_config["data"]
        == f"{data}/novel/train_nouns/{{000000..000000}}.tar::{data}/train_nouns/{{000000..000000}}.tar"
    )
    # The scores, recomputed here at the thresholds results.json names.
    shipped, after = groupvit.load_model("synthvoc"), groupvit.load_model(out / "model.safetensors")
    assert after.test_settings.init == "synthvoc" and after.test_settings.classes == NOVEL_NAMES
    novel_val = load_dataset("synthvoc", voc_root(data / "novel"), "val")
    before = evaluate_segmentation(shipped, novel_val, background_threshold=result["before"]["background_threshold"],
                                   progress=False)  # fmt: skip
    assert result["before"]["miou"] == pytest.approx(before["miou"], abs=1e-9)
    # The model records the naming chosen on calib, with its threshold; VOC and the grid are scored at them.
    choice = result["naming_choice"]
    assert choice["calib_scenes"] == 12 and result["before"]["background_threshold"] in DEMO_THRESHOLDS
    recorded = after.test_settings
    assert recorded.naming == NAMINGS[choice["chosen"]] and recorded.background_threshold == choice["threshold"]
    voc_val = load_dataset("voc", voc_root(data), "val")
    voc = evaluate_segmentation(after, voc_val, background_threshold=choice["threshold"],
                                naming=NAMINGS[choice["chosen"]], progress=False)  # fmt: skip
    assert result["voc_miou"] == pytest.approx(voc["miou"], abs=1e-9)
    _, scene, truth = novel_val[0]
    _, iou = largest_object_named(ZeroShotSegmenter(after, novel_val.class_names)(scene).labels, truth)
    assert result["report_grid"]["per_scene"][0]["iou"] == round(100 * iou, 1)
    combined = load_dataset("synthvoc", voc_root(data / "combined"), "val")
    assert len(combined.class_names) == 40
    # The grid: image, truth, after, before; the page says what fine-tuning changed.
    assert Image.open(out / "report_grid.png").size[0] > 4 * 3 * 64
    page = (out / "report.html").read_text()
    assert "Fine-tuned from <code>synthvoc</code>" in page and "the 40-class split" in page
    assert "new classes: val mIoU" in run.stdout
    # From scratch on the same scenes: no init, no before, the same scores reported.
    run = subprocess.run([sys.executable, "-m", "groupvit", "demo", "--vocabulary", "novel", "--out",
                          str(tmp_path / "scratch"), *common], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    scratch = json.loads((tmp_path / "scratch" / "results.json").read_text())
    assert scratch["init"] is None and "before" not in scratch and scratch["vocabulary"] == "novel"
    assert {"voc_miou", "combined_miou", "shipped_model"} <= set(scratch)
    assert json.loads((tmp_path / "scratch" / "train_config.json").read_text())["init"] == ""
