"""SynthVOC: masks follow the drawn glyphs, captions name only what is there, the VOC layout round-trips, bytes are
a function of the seed alone, and `groupvit demo` runs end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import groupvit
from groupvit.data import synthvoc
from groupvit.data.nouns import BOILERPLATE_WORDS
from groupvit.data.synthvoc import (
    CLASS_NAMES,
    VOC_OBJECTS,
    SceneOptions,
    SynthVOCSpec,
    caption_for,
    generate,
    make_scene,
    voc_root,
)
from groupvit.demo import DEMO_THRESHOLDS
from groupvit.evaluation.datasets import VOC_CLASSES, load_dataset
from groupvit.evaluation.run import evaluate_segmentation
from groupvit.report import largest_object_named
from groupvit.segmentation import ZeroShotSegmenter

SMALL = SynthVOCSpec(seed=3, train=30, val=12, test=4, calib=4, shard_size=16, scene=SceneOptions(size=64))


def test_classes_are_the_voc_classes_with_glyphs():
    assert CLASS_NAMES == VOC_CLASSES
    for _, glyphs, _ in VOC_OBJECTS:
        for g in glyphs:  # every glyph renders (a missing one raises)
            assert synthvoc.glyph(g)[..., 3].max() == 255


def test_masks_are_where_glyphs_were_drawn(monkeypatch):
    magenta = np.array([255.0, 0.0, 255.0])

    def plain_magenta(rng, size):
        rng.uniform(0, 1, 6)  # keep the stream moving like the real backdrop does
        return np.broadcast_to(magenta, (size, size, 3)).copy(), "plain"

    monkeypatch.setattr(synthvoc, "background", plain_magenta)
    options = SceneOptions(size=64, max_clutter=0)
    for i in range(20):
        scene = make_scene(0, "val", i, options)
        image, labels = scene.image.astype(int), scene.labels
        assert set(np.unique(labels)) - {0} == {c + 1 for c in scene.classes}
        # Background pixels are untouched backdrop, except where a glyph's soft edge (alpha <= 0.5) blends in.
        background = labels == 0
        untouched = (np.abs(image - magenta).max(axis=-1) == 0) & background
        assert untouched.sum() > 0.9 * (background.sum() - _edge(labels).sum())
        # Labelled pixels are at least half glyph: no labelled pixel is pure backdrop.
        assert (np.abs(image - magenta).max(axis=-1)[labels > 0] > 0).all()


def _edge(labels: np.ndarray) -> np.ndarray:
    """Pixels within 2 px of a label change."""
    fg = labels > 0
    grown = fg.copy()
    for axis in (0, 1):
        for shift in (-2, -1, 1, 2):
            grown |= np.roll(fg, shift, axis=axis)
    return grown & ~fg


def test_every_class_appears_and_scene_sizes_vary():
    seen, counts = set(), set()
    for i in range(300):
        scene = make_scene(1, "train", i)
        seen.update(scene.classes)
        counts.add(len(scene.classes))
    assert seen == set(range(20))
    assert counts == {1, 2, 3, 4}


def _word_classes() -> list[tuple[re.Pattern, int]]:
    pairs = []
    for c, (_, _, words) in enumerate(VOC_OBJECTS):
        for singular, plural in words:
            for w in {singular, plural}:
                pairs.append((re.compile(rf"\b{re.escape(w)}\b"), c))
    return pairs


def test_captions_name_only_objects_present_or_clutter():
    words = _word_classes()
    mentioned_some = 0
    for i in range(400):
        scene = make_scene(2, "train", i)
        named = {c for pattern, c in words if pattern.search(scene.caption)}
        assert named <= set(scene.classes), (scene.caption, [CLASS_NAMES[c] for c in scene.classes])
        assert named, scene.caption  # at least one object is always named
        assert set(scene.mentioned_clutter) <= set(scene.clutter)
        for w in scene.mentioned_clutter:
            assert w in scene.caption
        mentioned_some += len(named) < len(set(scene.classes))
    assert 0 < mentioned_some < 200  # objects are sometimes left unmentioned, not usually


def test_crowded_scenes_have_captions():
    """Scenes with more objects than the default 4, as hierarchical naming is measured on: a class may repeat 5+
    times ('five dogs', and 'many' past the number words)."""
    rng = np.random.default_rng(0)
    dog_words = {w for pair in VOC_OBJECTS[11][2] for w in pair}
    for count in range(1, 13):
        caption, _ = caption_for([11] * count, [], "plain", rng, 0.0)
        assert any(w in caption for w in dog_words), caption
    options = SceneOptions(min_objects=8, max_objects=8, object_scale=(0.1, 0.2))
    assert max(len(make_scene(3, "val", i, options).classes) for i in range(10)) > 4


def test_boilerplate_words_never_drop_an_object_or_clutter_word():
    # --drop-boilerplate-nouns must only remove filler: no word of any class synonym or clutter name is on the list
    object_words = {w for _, _, pairs in VOC_OBJECTS for pair in pairs for phrase in pair for w in phrase.split()}
    clutter_words = {w for _, name in synthvoc.CLUTTER for w in name.split()}
    assert not (object_words | clutter_words) & set(BOILERPLATE_WORDS)
    filler = {w for w in re.findall(r"[a-z]+", " ".join(synthvoc.TEMPLATES).lower())} & set(BOILERPLATE_WORDS)
    assert {"photo", "illustration", "background", "cartoon", "clipart", "stock", "image", "is", "look"} <= filler


def test_voc_layout_round_trips_and_shards_hold_captions(tmp_path, capsys):
    assert generate(tmp_path / "a", SMALL, workers=2)
    # The bar counts scenes: 30 training (shards of 16 and 14), 12 + 4 + 4 labelled.
    assert re.search(r"generating SynthVOC: 100%\|[^|]*\| 50/50 \[.*scene/s\]", capsys.readouterr().err)
    assert not generate(tmp_path / "a", SMALL, workers=2, progress=False)  # cached
    voc = voc_root(tmp_path / "a")
    for split, n in (("val", 12), ("test", 4), ("calib", 4)):
        dataset = load_dataset("voc", voc, split)
        assert len(dataset) == n
        for k in range(n):
            image_id, _, labels = dataset[k]
            scene = make_scene(SMALL.seed, split, int(image_id.split("_")[1]), SMALL.scene)
            np.testing.assert_array_equal(labels, scene.labels)
            assert (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes() == synthvoc.encode_jpeg(scene.image)
    scenes = json.loads((voc / "scenes.json").read_text())
    assert scenes["val_000000"]["objects"] == [CLASS_NAMES[c] for c in make_scene(3, "val", 0, SMALL.scene).classes]
    with tarfile.open(tmp_path / "a" / "train" / "000001.tar") as tar:
        names = tar.getnames()
        assert names[:2] == ["00000016.jpg", "00000016.txt"] and len(names) == 2 * 14
        assert tar.extractfile("00000016.txt").read().decode() == make_scene(3, "train", 16, SMALL.scene).caption
        assert Image.open(tar.extractfile("00000016.jpg")).size == (64, 64)


def test_recognition_scores_the_classes_each_scene_holds(tmp_path):
    """With class prompts embedded as the unit vectors e_k: groups equal to the scene's e_k recall every class; a
    pooled embedding ranking the classes in index order recalls |{0..n-1} & classes| / n for a scene of n classes."""
    import torch

    from groupvit.config import GroupViTConfig, TextConfig, VisionConfig
    from groupvit.evaluation.run import evaluate_recognition
    from groupvit.model import GroupViT, ImageGroups

    spec = SynthVOCSpec(seed=5, train=1, val=24, test=1, calib=1, shard_size=1, scene=SceneOptions(size=64))
    generate(tmp_path, spec, workers=1, progress=False)
    dataset = load_dataset("voc", voc_root(tmp_path), "val")
    scenes = json.loads((voc_root(tmp_path) / "scenes.json").read_text())
    truth = [sorted({VOC_CLASSES.index(o) for o in scenes[dataset.samples[i][0]]["objects"]}) for i in range(24)]
    vision = VisionConfig(image_size=64, patch_size=16, width=32, depths=[1, 1], num_heads=2, num_group_tokens=[4, 0],
                          num_output_groups=[4])  # fmt: skip
    model = GroupViT(GroupViTConfig(vision=vision, text=TextConfig(width=32, layers=1, heads=2), projection_dim=16,
                                    projection_hidden_dim=32)).eval()  # fmt: skip
    unit = torch.eye(20)
    model.encode_text = lambda ids: unit[: len(ids)]  # one prompt per class, in class order
    ranked = torch.arange(20, 0, -1.0)[None]  # [1, 20]: class 0 first
    calls = iter(truth)
    model.encode_image_groups = lambda pixels: ImageGroups(ranked, unit[next(calls)][None], [])
    result = evaluate_recognition(model, dataset, short_side=64)
    assert result["images"] == 24 and result["best_group"] == pytest.approx(100.0)
    expected = 100 * np.mean([len(set(range(len(t))) & set(t)) / len(t) for t in truth])
    assert 0 < expected < 100 and result["pooled"] == pytest.approx(expected)

    class Backdrops:  # scenes of background and ignored pixels only: nothing to recognise, and no error
        name, class_names, has_background = "backdrops", VOC_CLASSES, True

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return f"b{i}", np.zeros((64, 64, 3), np.uint8), np.where(np.eye(64, dtype=bool), 255, 0).astype(np.uint8)

    calls = iter([[0], [0]])  # recognition shares the segmentation pass, which encodes both
    assert evaluate_recognition(model, Backdrops(), short_side=64) == {"images": 0, "pooled": None, "best_group": None}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    generate(tmp_path / "one", SMALL, workers=1, progress=False)
    generate(tmp_path / "two", SMALL, workers=2, progress=False)
    generate(tmp_path / "other", SynthVOCSpec(**{**SMALL.__dict__, "seed": 4}), workers=2, progress=False)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, two, other = files(tmp_path / "one"), files(tmp_path / "two"), files(tmp_path / "other")
    assert one == two
    assert one.keys() == other.keys() and one["train/000000.tar"] != other["train/000000.tar"]


def test_largest_object_named_by_hand():
    target = np.array([[0, 3, 3, 3], [0, 3, 3, 255], [7, 7, 0, 0]])  # class 3 is the largest (5 pixels)
    prediction = np.array([[3, 3, 3, 3], [0, 3, 0, 3], [7, 7, 3, 0]])  # 4 of its 5 hit, 2 false, 1 on ignore
    label, iou = largest_object_named(prediction, target)
    assert label == 3 and iou == pytest.approx(4 / 7)  # the prediction on the ignored pixel does not count
    assert largest_object_named(prediction, np.zeros_like(target)) == (-1, 0.0)


@pytest.mark.slow
def test_demo_one_minute_end_to_end(tmp_path):
    out = tmp_path / "demo"
    config = tmp_path / "deeper_text.yaml"
    config.write_text("model: {text: {layers: 2}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "demo", "--minutes", "1", "--out", str(out), "--data", str(tmp_path / "d"),
         "--train-scenes", "1000", "--val-scenes", "40", "--calib-scenes", "20", "--scene", "max_clutter=0",
         "--scene", "object_scale=[0.4,0.7]", "--config", str(config), "--drop-boilerplate-nouns"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    # The scene options reach the generator: the data's manifest and the results both record them.
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["spec"]["scene"]["max_clutter"] == result["scene"]["max_clutter"] == 0
    assert manifest["spec"]["scene"]["object_scale"] == result["scene"]["object_scale"] == [0.4, 0.7]
    assert 0.0 <= result["miou"] <= 100.0 and result["images"] == 40
    assert result["recognition"]["images"] == 40 and 0.0 <= result["recognition"]["pooled"] <= 100.0
    # --config and --drop-boilerplate-nouns reach the model and the training loop
    assert yaml.safe_load((out / "model.yaml").read_text())["model"]["text"]["layers"] == 2
    assert json.loads((out / "train_config.json").read_text())["noun_stopwords"] == list(BOILERPLATE_WORDS)
    assert result["variant"]["drop_boilerplate_nouns"] and result["variant"]["config"] == str(config)
    assert set(result["per_class"]) == {"background", *VOC_CLASSES}
    assert 0.9 <= result["minutes"] <= 1.5 and result["images_seen"] > 0
    assert result["curve"] and result["curve"][-1]["step"] == result["steps"]
    assert (out / "model.safetensors").is_file() and (out / "checkpoint.pt").is_file()
    assert Image.open(out / "report_grid.png").size[0] > 3 * 64 and Image.open(out / "report_groups.png").size[0] > 64
    assert "report_grid.png" in (out / "report.html").read_text() and "Recognition" in (out / "report.html").read_text()
    assert "SynthVOC val mIoU" in run.stdout
    # The weights record how they were scored (groupvit.settings), so `groupvit segment` runs them the same way.
    settings = groupvit.load_model(out / "model.safetensors").test_settings
    assert (settings.short_side, settings.mode, settings.trained_on) == (64, "whole", "synthvoc")
    choice = result["naming_choice"]  # the naming chosen on calib (--calib-scenes of them), with its threshold
    assert choice["calib_scenes"] == 20 and len(result["calibration"]) == len(DEMO_THRESHOLDS)
    assert settings.background_threshold == choice["threshold"] and settings.classes == VOC_CLASSES
    assert settings.naming.to_dict() == choice["naming"]
    # The shipped model on the same scenes, scored independently here at its recorded settings.
    shipped = groupvit.load_model("synthvoc")
    val = load_dataset("voc", voc_root(tmp_path / "d"), "val")
    alone = evaluate_segmentation(shipped, val, background_threshold=shipped.test_settings.background_threshold,
                                  progress=False)  # fmt: skip
    assert result["shipped_model"]["miou"] == pytest.approx(alone["miou"], abs=1e-9)
    assert "shipped in the package" in (out / "report.html").read_text()
    assert Image.open(out / "report_grid.png").size[0] > 4 * 3 * 64  # image, truth, this run, the shipped model
    # The grid's check, recounted here: the largest object's IoU over the first 12 scenes at the recorded settings.
    segmenter = ZeroShotSegmenter(groupvit.load_model(out / "model.safetensors"), val.class_names)
    ious = []
    for i in range(12):
        _, image, target = val[i]
        labels = segmenter(image).labels
        largest = np.bincount(target[(target > 0) & (target < 255)]).argmax()
        truth, predicted = target == largest, (labels == largest) & (target != 255)
        ious.append((truth & predicted).sum() / (truth | predicted).sum())
    grid = result["report_grid"]
    assert [item["iou"] for item in grid["per_scene"]] == pytest.approx([100 * v for v in ious], abs=0.06)
    assert grid["largest_object_correct"] == sum(v >= 0.5 for v in ious) and grid["scenes"] == 12
    assert f"in <b>{grid['largest_object_correct']} of 12</b>" in (out / "report.html").read_text()
    # The plain ViT baseline of the default recipe (one stage is moot without groups), a few steps on the same data.
    vit = subprocess.run(
        [sys.executable, "-m", "groupvit", "demo", "--baseline", "vit", "--out", str(tmp_path / "vit"), "--data",
         str(tmp_path / "d"), "--train-scenes", "1000", "--val-scenes", "40", "--calib-scenes", "20", "--scene",
         "max_clutter=0", "--scene", "object_scale=[0.4,0.7]", "minutes=0", "steps=2", "eval_every=0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert vit.returncode == 0, vit.stderr[-3000:]
    vit_result = json.loads((tmp_path / "vit" / "results.json").read_text())
    assert (
        vit_result["steps"] == 2
        and vit_result["groups_in_use"] == 64
        and "hierarchical_0.3" not in (vit_result["naming_choice"]["calib_miou"])
    )


def test_scene_options_from_preset_and_overrides():
    from groupvit.demo import default_data_dir, scene_options

    options = scene_options({"max_objects": 3}, ["max_clutter=0", "object_scale=[0.5, 0.8]", "size=64"])
    assert options == SceneOptions(size=64, max_objects=3, max_clutter=0, object_scale=(0.5, 0.8))
    assert scene_options({}, []) == SceneOptions()
    with pytest.raises(ValueError, match=r"unknown keys in scene options: \['clutter'\]"):
        scene_options({}, ["clutter=0"])
    with pytest.raises(ValueError, match="key=value"):
        scene_options({}, ["max_clutter"])
    # The same parser reads training overrides.
    from groupvit.training.config import TrainConfig

    with pytest.raises(ValueError, match=r"unknown keys in training config: \['lr_typo'\]"):
        TrainConfig.from_dict({}, ["lr_typo=1"])
    assert TrainConfig.from_dict({}, ["lr=2e-3", "betas=[0.9, 0.98]"]).betas == (0.9, 0.98)
    assert TrainConfig.from_dict({}, ["noun_stopwords=[photo, image]"]).noun_stopwords == ["photo", "image"]
    with pytest.raises(ValueError, match=r"noun_stopwords must be a list of words, e\.g\. \[photo, image\]"):
        TrainConfig.from_dict({}, ["noun_stopwords=photo"])
    # Other scene settings are cached beside the default data, never over it.
    assert default_data_dir(0, SceneOptions()).name == "synthvoc-0"
    assert default_data_dir(0, options).name.startswith("synthvoc-0-")
    assert default_data_dir(0, options) != default_data_dir(0, SceneOptions(max_clutter=0))


def test_demo_config_file_overrides_the_preset_key_by_key(tmp_path):
    from groupvit.cli import build_parser
    from groupvit.demo import preset_sections

    base_model, base_train, base_scene = preset_sections()
    wide = tmp_path / "wide.yaml"
    wide.write_text("model:\n  vision: {width: 128, num_heads: 4}\ntrain: {batch_size: 256}\nscene: {max_objects: 2}\n")
    model, train, scene = preset_sections(wide)
    assert (
        model["vision"] == {**base_model["vision"], "width": 128, "num_heads": 4}
        and model["text"] == base_model["text"]
    )
    assert train == {**base_train, "batch_size": 256} and scene == {**base_scene, "max_objects": 2}
    assert build_parser().parse_args(["demo", "--config", str(wide)]).config == str(wide)
    typo = tmp_path / "typo.yaml"
    typo.write_text("modle: {}\n")
    with pytest.raises(ValueError, match=r"unknown section 'modle' \(.*typo\.yaml, line 1\); a settings file has the "
                       r"sections model, train, scene"):  # fmt: skip
        preset_sections(typo)
    flat = tmp_path / "flat.yaml"
    flat.write_text("train: 5\n")
    with pytest.raises(ValueError, match="expected sections of key: value settings"):
        preset_sections(flat)
    sizes = tmp_path / "sizes.yaml"
    sizes.write_text("model: {vision: {image_size: 96}}\n")
    with pytest.raises(ValueError, match="image sizes disagree"):
        preset_sections(sizes)


def test_packaged_gpu_config_builds_the_scaled_up_model_and_names_are_checked():
    import torch

    from groupvit.config import GroupViTConfig, list_presets
    from groupvit.demo import DemoOptions, packaged_demo_configs, preset_sections, variant_model
    from groupvit.model import GroupViT
    from groupvit.training.config import TrainConfig

    assert "synthvoc_gpu" in packaged_demo_configs() and "synthvoc" not in packaged_demo_configs()
    assert "synthvoc_gpu" not in list_presets()  # a partial config, not a model preset for `--model` or the app
    base_model, base_train, _ = preset_sections()
    model, train, _ = preset_sections("synthvoc_gpu")
    assert model["vision"]["width"] > base_model["vision"]["width"] and train["batch_size"] > base_train["batch_size"]
    assert model["vision"]["patch_size"] == base_model["vision"]["patch_size"]  # kept from the CPU preset
    TrainConfig.from_dict({**train, "data": "x/{0..1}.tar"})  # every key is a training setting
    options = DemoOptions(stages=1, grouping_init="fan_in", config="synthvoc_gpu")
    config = GroupViTConfig.from_dict(variant_model(model, options))
    assert config.vision.depths == [6, 6] and config.vision.num_output_groups == [16]
    out = GroupViT(config).eval().encode_image_groups(torch.randn(2, 3, 96, 96))
    assert out.group_embeds.shape == (2, 16, config.projection_dim)
    with pytest.raises(FileNotFoundError, match=r"not a packaged demo config \(synthvoc_gpu\)"):
        preset_sections("synthvoc_gpu.yml")


def test_variant_models_and_ablation_flags():
    from benchmarks.synthvoc_ablations import LEVERS, demo_command, selected, variants
    from benchmarks.synthvoc_ablations import build_parser as ablation_parser
    from groupvit.cli import build_parser
    from groupvit.config import GroupViTConfig
    from groupvit.demo import RECIPES, DemoOptions, preset_sections, variant_model

    model, train, _ = preset_sections()
    assert train["image_size"] == model["vision"]["image_size"] == train["eval_short_side"]
    paper = GroupViTConfig.from_dict(variant_model(model, DemoOptions(recipe="paper"))).vision
    vit = GroupViTConfig.from_dict(variant_model(model, DemoOptions(recipe="paper", baseline="vit"))).vision
    one = GroupViTConfig.from_dict(variant_model(model, DemoOptions(recipe="paper", stages=1))).vision
    soft = GroupViTConfig.from_dict(variant_model(model, DemoOptions(recipe="paper", soft_assignment=True))).vision
    assert vit.num_group_tokens == [0] and vit.num_output_groups == [] and vit.depths == [sum(paper.depths)]
    fast_vit = GroupViTConfig.from_dict(variant_model(model, DemoOptions(baseline="vit"))).vision  # one stage: moot
    assert fast_vit.num_group_tokens == [0] and fast_vit.depths == vit.depths
    assert one.num_group_tokens == [paper.num_group_tokens[0], 0] and sum(one.depths) == sum(paper.depths)
    assert paper.hard_assignment and paper.gumbel and not soft.hard_assignment and not soft.gumbel
    fan_in = GroupViTConfig.from_dict(variant_model(model, DemoOptions(recipe="paper", grouping_init="fan_in"))).vision
    assert paper.grouping_init == "reference" and fan_in.grouping_init == "fan_in"
    with pytest.raises(ValueError, match="stages"):
        variant_model(model, DemoOptions(stages=3))
    # The paper's recipe is the preset as it stands: nothing of the variants reaches its model.
    assert variant_model(model, DemoOptions(recipe="paper")) == variant_model(
        model, DemoOptions(recipe="fast", stages=2, grouping_init="reference", loss="softmax", deep_noun_loss=0)
    )
    fast = GroupViTConfig.from_dict(variant_model(model, DemoOptions()))
    assert fast.logit_bias and fast.patch_head and fast.vision.num_output_groups == [paper.num_output_groups[0]]
    assert not GroupViTConfig.from_dict(variant_model(model, DemoOptions(recipe="paper"))).logit_bias
    parser = build_parser()
    shared = ablation_parser().parse_args(["--minutes", "2", "--out", "abl", "--scene", "max_objects=2", "lr=5e-4"])
    for recipe in RECIPES:  # every run's command line is one `groupvit demo` takes, with the shared options
        for variant in variants(recipe):
            args = parser.parse_args(demo_command(recipe, variant, shared)[3:])
            assert args.run.__name__ == "_demo" and args.minutes == 2 and args.recipe == recipe
            assert args.out == str(Path("abl") / recipe / variant)
            assert args.scene == ["max_objects=2"] and args.overrides == ["lr=5e-4"]
    # the shared flags come after the recipe and before the variant's own flags, which win
    from_variant = ablation_parser().parse_args(["--flags", "--grouping-init fan_in --stages 1"])
    args = parser.parse_args(demo_command("paper", "stages_1", from_variant)[3:])
    assert args.recipe == "paper" and args.grouping_init == "fan_in" and args.stages == 1
    args = parser.parse_args(demo_command("fast", "stages_2", from_variant)[3:])
    assert args.stages == 2
    assert selected("paper", "comparisons") == ["base", "vit", "soft_assignment", "no_multi_label", "stages_1"]
    assert selected("paper", "levers") == [] and selected("fast", "levers") == list(LEVERS)
    with pytest.raises(ValueError, match="unknown variants"):
        selected("paper", "shard_loader")


def test_ablation_table_names_the_base_of_shared_flags():
    from benchmarks.synthvoc_ablations import table

    row = {"miou": 8.234, "miou_at_official_threshold": 7.8, "groups_in_use": 3.756, "oracle": {"miou": 32.94},
           "recognition": {"pooled": 40.21}, "images_seen": 115520, "minutes": 10.0}  # fmt: skip
    plain = table({("paper", "base"): row, ("fast", "vit"): row}).splitlines()
    assert plain[2] == "| paper | base | 8.2 | 7.8 | 3.76 | 32.9 | 40.2 | 115520 | 10.0 |"
    assert plain[3].startswith("| fast | vit | 8.2 |")
    from_variant = table({("paper", "base"): row, ("paper", "vit"): row}, flags=["--grouping-init", "fan_in"])
    assert from_variant.splitlines()[2].startswith("| paper | base (with the shared flags) | 8.2 |")


def test_recipes_fill_what_is_not_given_and_name_their_departures():
    from groupvit.cli import build_parser
    from groupvit.demo import RECIPES, DemoOptions

    paper = DemoOptions(recipe="paper")
    assert {key: getattr(paper, key) for key in RECIPES["paper"]} == RECIPES["paper"] and paper.departures() == {}
    fast = DemoOptions()
    assert fast.recipe == "fast" and fast.departures() == {
        key: value for key, value in RECIPES["fast"].items() if value != RECIPES["paper"][key]
    }
    mixed = DemoOptions(recipe="paper", loss="sigmoid", soft_assignment=True)
    assert mixed.departures() == {"loss": "sigmoid", "soft_assignment": True} and mixed.stages == 2
    with pytest.raises(ValueError, match="unknown recipe 'fastest'"):
        DemoOptions(recipe="fastest")
    # The CLI leaves the recipe's parts unset unless a flag says otherwise.
    args = build_parser().parse_args(["demo", "--recipe", "paper", "--no-in-memory", "--deep-noun-loss", "0.5"])
    assert args.stages is None and args.in_memory is False and args.deep_noun_loss == 0.5 and args.recipe == "paper"


def test_scenes_only_writes_the_val_splits_files_byte_for_byte(tmp_path):
    from groupvit.data.synthvoc import encode_jpeg
    from groupvit.demo import preset_sections, scene_options

    run = subprocess.run([sys.executable, "-m", "groupvit", "demo", "--scenes-only", "3", "--out", str(tmp_path)],
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    scene = scene_options(preset_sections()[2])  # the preset's scenes, which `groupvit demo` generates for val
    captions = (tmp_path / "captions.txt").read_text().splitlines()
    for i in range(3):
        made = make_scene(0, "val", i, scene)
        assert (tmp_path / f"val_{i:06d}.jpg").read_bytes() == encode_jpeg(made.image)  # as write_voc_images writes
        assert captions[i] == f"val_{i:06d}.jpg\t{made.caption}"
    again = subprocess.run([sys.executable, "-m", "groupvit", "demo", "--scenes-only", "3", "--out", str(tmp_path)],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "--overwrite" in again.stderr  # never replaces files silently


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_two_demos_prepare_one_data_folder_in_turn(tmp_path, monkeypatch, capsys):
    """A second demo on the same cache waits for the first to finish generating and tagging, instead of deleting
    its half-tagged shards (the race two demos started together used to lose)."""
    import threading
    import time

    import groupvit.data.nouns as nouns
    import groupvit.data.synthvoc as synthvoc
    import groupvit.training.data as training_data
    from groupvit.demo import DemoOptions, prepare_data

    events = []

    def fake_generate(root, spec, workers=2):
        events.append("generate")
        time.sleep(0.3)
        return True

    def fake_prepare_nouns(shards, out, num_workers=1, skip_existing=False):
        events.append("tag")
        time.sleep(0.3)
        events.append("tagged")

    monkeypatch.setattr(synthvoc, "generate", fake_generate)
    monkeypatch.setattr(nouns, "prepare_nouns", fake_prepare_nouns)
    monkeypatch.setattr(training_data, "expand_shards", lambda pattern: [pattern])  # no shards are written
    options = DemoOptions(data=tmp_path / "d")
    runs = [threading.Thread(target=prepare_data, args=(options, SceneOptions())) for _ in range(2)]
    for run in runs:
        run.start()
        time.sleep(0.1)
    for run in runs:
        run.join()
    assert events == ["generate", "tag", "tagged"] * 2
    assert f"waiting for another process preparing {tmp_path / 'd'}" in capsys.readouterr().out


def test_the_report_draws_short_curves_and_tables_not_json():
    from groupvit.report import curve_svg, departures_table, results_table

    one = [{"step": 37, "minutes": 0.3, "miou": 4.7}]
    svg = curve_svg(one)
    assert svg.count("<circle") == 1 and ">4.7</text>" in svg and "Measured at step 37." in svg
    two = curve_svg([{"step": 0, "minutes": 0.0, "miou": 1.0}, {"step": 80, "minutes": 1.0, "miou": 10.0}])
    assert two.count("<circle") == 2 and 'points="40.0,178.3 470.0,163.0"' in two  # 10 of 100 over 170 px
    assert "eval_every=0" in curve_svg([])
    departures = departures_table({"loss": "sigmoid", "baseline": "vit"})
    assert "<tr><td>loss</td><td>sigmoid</td><td>softmax</td></tr>" in departures
    assert "<tr><td>baseline</td><td>vit</td><td>None</td></tr>" in departures
    assert "paper's recipe" in departures_table({})
    result = {"miou": 12.345, "miou_at_official_threshold": 8.0, "oracle": {"miou": 30.0}, "groups_in_use": 3.5,
              "recognition": {"pooled": 40.0, "best_group": 35.5}, "groups_in_use_by_objects": {"1": 2.0, "3": 4.25},
              "naming_choice": {"chosen": "area_0.1", "val_miou": 13.0, "threshold": 0.3},
              "background_threshold": 0.4}  # fmt: skip
    table = results_table(result)
    assert "<td>12.35</td><td>background threshold 0.4, chosen on the calib split</td>" in table
    assert "<td>40.0 % / 35.5 %</td>" in table and "1 object: 2.00, 3 objects: 4.25" in table
    assert "{" not in table and "mIoU with the naming chosen on calib: area_0.1</td><td>13.00" in table
