"""Naming variants (groupvit.naming): each option by hand on tiny inputs, then wired through the segmenter, eval,
the CLI and the app."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import groupvit
from groupvit.evaluation.datasets import VOC_CLASSES, load_dataset
from groupvit.evaluation.metrics import ConfusionMatrix
from groupvit.evaluation.run import CalibrationImages, evaluate_namings, evaluate_segmentation
from groupvit.naming import (
    CAR_WORDS,
    SCLIP_WORDS,
    Naming,
    area_filter,
    background_channel,
    background_words,
    class_mask,
    coordinate_ascent,
    load_class_thresholds,
    name_pixels,
    split_groups,
)
from groupvit.segmentation import ZeroShotSegmenter, encode_crops
from tests.conftest import write_tiny_voc

INF = float("-inf")


@pytest.fixture(scope="module")
def model(hf_small):
    return groupvit.load_model(hf_small[1])


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_tiny_voc(tmp_path_factory.mktemp("voc"))


def image(seed: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- options by hand


def test_word_lists_as_published():
    assert len(SCLIP_WORDS) == 26 and SCLIP_WORDS[:3] == ("sky", "wall", "tree") and SCLIP_WORDS[-1] == "fence"
    assert len(CAR_WORDS) == 23 and "railroad" in CAR_WORDS and len(set(CAR_WORDS)) == 23
    assert background_words("voc") == SCLIP_WORDS and background_words("CAR") == CAR_WORDS
    assert background_words("none") == () and background_words(None) == ()
    assert background_words(" sky, sea ,grass") == ("sky", "sea", "grass")
    with pytest.raises(ValueError, match="empty background word"):
        background_words("sky,,sea")


def test_word_file_read_only_when_allowed(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("sky\nsea, sand\n")
    assert background_words(str(words)) == ("sky", "sea", "sand")
    assert background_words(str(words), files=False) == (str(words),)  # the app never reads a file


def test_a_background_word_winning_a_group_makes_its_pixels_background():
    """Classes e0 (cat), e1 (dog), word e2 (sky); group 0 points at e0, group 1 at e2. Scale 10, so each group's
    affinity is softmax(10 e)^2: about 0.9998 on its own axis and 2e-9 elsewhere."""
    text = torch.eye(3)  # [K=3, D=3]
    groups = torch.tensor([[[1.0, 0, 0], [0, 0, 1.0]]])  # [B=1, G=2, D]
    pooled = torch.tensor([[1.0, 1.0, 1.0]])
    final = torch.tensor([[[0, 1, 1]]])  # [B, H=1, W=3]
    scale = torch.tensor(10.0)
    words = Naming(background_words=("sky",))
    logits = name_pixels(groups, pooled, final, text, scale, 2, None, words)  # [1, 1 + 2, 1, 3]
    assert logits.shape == (1, 3, 1, 3)
    assert logits[0, 0, 0].tolist() == [0.0, 1.0, 1.0]  # the word wins group 1
    assert logits[0].argmax(0)[0].tolist() == [1, 0, 0]  # cat, background, background
    own = (math.exp(10) / (math.exp(10) + 2)) ** 2
    assert logits[0, 1, 0, 0].item() == pytest.approx(own, rel=1e-6)
    # Combined with a threshold: the threshold rule still applies to the word's losers.
    both = name_pixels(groups, pooled, final, text, scale, 2, 0.5, words)
    assert both[0, 0, 0].tolist() == [0.0, 1.0, 1.0]
    # Without words there is no background at all (threshold None): group 1 takes a class.
    plain = name_pixels(groups, pooled, final, text[:2], scale, 2, None, Naming())
    assert plain.shape == (1, 2, 1, 3)


def test_area_filter_by_hand():
    labels = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 2], [0, 0, 0, 3]])  # foreground 9: class 1 7/9, 2 and 3 1/9 each
    assert area_filter(labels, 3, 0.2).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]]
    assert area_filter(labels, 3, 0.1).tolist() == labels.tolist()  # 1/9 = 0.111 > 0.1: kept
    assert area_filter(labels, 3, 1 / 9).tolist() == area_filter(labels, 3, 0.2).tolist()  # at most the share: off
    assert area_filter(torch.zeros(2, 2, dtype=torch.long), 3, 0.5).tolist() == [[0, 0], [0, 0]]


def test_per_class_thresholds_by_coordinate_ascent_on_a_tiny_confusion_set():
    """Eight pixels, each (best class, its score, ground truth). Class 1's background pixels score 0.2 and 0.4, its
    own 0.5 and 0.8: only t1 = 0.5 on the grid separates them. Class 2's pixels: background at 0.25 and 0.5, class 2
    at 0.3 and 0.7; with t1 = 0.5:
      t2 <= 0.25: bg IoU 2/4, class 2 2/4      -> mIoU (0.5 + 1 + 0.5) / 3   = 66.7
      t2 = 0.3:   bg IoU 3/4, class 2 2/3      -> mIoU (0.75 + 1 + 2/3) / 3  = 80.6  (the best)
      t2 = 0.4, 0.5: bg 3/5, class 2 1/3      -> 64.4
      t2 = 0.6, 0.7: bg 4/5, class 2 1/2      -> 76.7
      t2 >= 0.8:  bg 4/6, class 2 0           -> 55.6
    The background rule is the segmenter's own (background_channel with one threshold per class)."""
    pixels = [(1, 0.2, 0), (1, 0.4, 0), (1, 0.5, 1), (1, 0.8, 1), (2, 0.25, 0), (2, 0.3, 2), (2, 0.5, 0), (2, 0.7, 2)]
    foreground = torch.full((1, 2, 1, len(pixels)), 0.01)  # [B, C, H, W]
    for i, (c, s, _) in enumerate(pixels):
        foreground[0, c - 1, 0, i] = s
    affinity = torch.ones(1, 1, 2)  # the min() guard at 1: out of the way
    target = np.array([[t for *_, t in pixels]])
    grid = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

    def miou(thresholds: list[float]) -> float:
        background = background_channel(foreground, affinity, torch.tensor(thresholds))
        labels = torch.cat([background, foreground], dim=1)[0].argmax(0).numpy()
        scores = ConfusionMatrix(3)
        scores.update(labels, target)
        return scores.results(["background", "a", "b"])["miou"]

    assert miou([0.5, 0.3]) == pytest.approx(100 * (0.75 + 1 + 2 / 3) / 3)
    assert miou([0.5, 0.6]) == pytest.approx(100 * (0.8 + 1 + 0.5) / 3)
    for start in ([0.9, 0.9], [0.1, 0.1], [0.5, 0.5]):
        assert coordinate_ascent(miou, start, grid) == ([0.5, 0.3], pytest.approx(100 * (0.75 + 1 + 2 / 3) / 3))


def test_hierarchical_naming_splits_a_group_whose_members_disagree():
    """Final group 0 holds members 0 (cat, 0.9) and 1 (dog, 0.85); group 1 holds member 2 (dog, 0.7)."""
    group_rows = torch.tensor([[[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]])  # [B=1, G=2, K=3]
    member_rows = torch.tensor([[[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.2, 0.7, 0.1]]])  # [B, M=3, K]
    final = torch.tensor([[[0, 0, 1]]])  # [B, H=1, W=3]
    member = torch.tensor([[[0, 1, 2]]])
    rows, index = split_groups(group_rows, member_rows, final, member, confidence=0.8)
    assert rows.shape == (1, 5, 3) and index.tolist() == [[[2, 3, 1]]]  # pixels 0, 1 take members 0, 1 (rows G + m)
    # Member 1 is not confident at 0.86: one confident name only, no split.
    assert split_groups(group_rows, member_rows, final, member, confidence=0.86)[1].tolist() == [[[0, 0, 1]]]
    # Two members naming the same class: no split.
    same = member_rows.clone()
    same[0, 1] = torch.tensor([0.95, 0.03, 0.02])
    assert split_groups(group_rows, same, final, member, confidence=0.8)[1].tolist() == [[[0, 0, 1]]]


def test_hierarchical_naming_names_more_classes_than_groups():
    """One final group, two members along e0 and e1: officially the whole crop takes one class; split, two."""
    text, scale = torch.eye(2), torch.tensor(10.0)
    groups = torch.tensor([[[1.0, 0.9]]])  # [B, G=1, D]
    members = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [B, M=2, D]
    final, member = torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[0, 1]]])
    official = name_pixels(groups, groups[:, 0], final, text, scale, 2, None, Naming())
    split = name_pixels(groups, groups[:, 0], final, text, scale, 2, None, Naming(hierarchical=0.9), (members, member))
    assert official[0].argmax(0).tolist() == [[0, 0]] and split[0].argmax(0).tolist() == [[0, 1]]


def test_top_k_and_pooled_gate_by_hand():
    image_logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])  # pooled softmax: 0.644, 0.087, 0.237, 0.032
    assert class_mask(image_logits, 4, top_k=2).tolist() == [[0, INF, 0, INF]]
    assert class_mask(image_logits, 4, top_k=None).tolist() == [[0, 0, 0, 0]]
    assert class_mask(image_logits, 4, top_k=None, gate=0.2).tolist() == [[0, INF, 0, INF]]
    assert class_mask(image_logits, 4, top_k=None, gate=0.9).tolist() == [[0, INF, INF, INF]]  # the best stays
    assert class_mask(image_logits, 4, top_k=1, gate=0.05).tolist() == [[0, INF, INF, INF]]  # both apply
    # With a background word (K = 5, C = 4) the word is always kept and is not a class for top-k or the gate.
    with_word = torch.tensor([[3.0, 1.0, 2.0, 0.0, 9.0]])
    assert class_mask(with_word, 4, top_k=1, gate=0.5).tolist() == [[0, INF, INF, INF, 0]]


def test_naming_options_are_checked_and_recorded():
    assert Naming().official and not Naming(top_k=3).official and not Naming(background_words=("sky",)).official
    assert Naming(min_area=0.1).makes_background() and not Naming(gate=0.3).makes_background()
    for bad in (dict(min_area=1.0), dict(top_k=0), dict(gate=1.5), dict(class_thresholds={"cat": -0.1})):
        with pytest.raises(ValueError):
            Naming(**bad)
    assert Naming(background_words=["sky"]).to_dict()["background_words"] == ["sky"]


def test_class_thresholds_file_formats(tmp_path):
    plain, result = tmp_path / "plain.json", tmp_path / "eval.json"
    plain.write_text(json.dumps({"cat": 0.3, "dog": 0.5}))
    result.write_text(json.dumps({"miou": 1.0, "naming": {"class_thresholds": {"cat": 0.2}}}))
    assert load_class_thresholds(plain) == {"cat": 0.3, "dog": 0.5}
    assert load_class_thresholds(result) == {"cat": 0.2}
    (tmp_path / "bad.json").write_text(json.dumps({"miou": 50.0, "per_class": {"cat": 1.0}}))  # no thresholds
    with pytest.raises(ValueError, match="expected"):
        load_class_thresholds(tmp_path / "bad.json")


# ----------------------------------------------------------------------------- through the segmenter


def whole(model, classes, **options) -> ZeroShotSegmenter:
    """64 px images at short side 64: no resize, so labels compare pixel for pixel with the crop's logits."""
    return ZeroShotSegmenter(model, classes, mode="whole", short_side=64, **options)


def test_background_words_equal_scoring_the_words_as_classes(model):
    """With every name kept by top-k (4 <= 5), naming with words equals scoring the words as extra classes and
    calling their pixels background."""
    rgb = image(3)
    with_words = whole(model, ["cat", "dog"], background_threshold=None,
                       naming=Naming(background_words=("sky", "grass")))(rgb).labels  # fmt: skip
    as_classes = whole(model, ["cat", "dog", "sky", "grass"], background_threshold=None)(rgb).labels
    np.testing.assert_array_equal(with_words, np.where(as_classes > 2, 0, as_classes))
    assert (with_words == 0).any() and (with_words > 0).any()  # both happen on this image


def test_a_word_that_is_also_a_class_is_refused(model):
    with pytest.raises(ValueError, match="both a class and a background word"):
        whole(model, ["cat", "Sky"], naming=Naming(background_words=("sky",)))


def test_area_filter_and_per_class_thresholds_in_the_segmenter(model):
    rgb = image(3)  # threshold 0: no background; cat takes 6.5 % of the pixels, dog the rest
    official = whole(model, ["cat", "dog", "car"], background_threshold=0.0)(rgb)
    assert official.fractions()["cat"] == pytest.approx(0.065, abs=0.001) and "background" not in official.fractions()
    filtered = whole(model, ["cat", "dog", "car"], background_threshold=0.0, naming=Naming(min_area=0.1))(rgb)
    np.testing.assert_array_equal(filtered.labels, np.where(official.labels == 1, 0, official.labels))
    kept = whole(model, ["cat", "dog", "car"], background_threshold=0.0, naming=Naming(min_area=0.06))(rgb)
    np.testing.assert_array_equal(kept.labels, official.labels)
    rgb, official = image(4), whole(model, ["cat", "dog", "car"])(image(4))
    # One threshold per class, all equal to the single threshold: the same labels.
    same = whole(model, ["cat", "dog", "car"], naming=Naming(class_thresholds=dict.fromkeys(["cat", "dog", "car"],
                                                                                            0.95)))(rgb)  # fmt: skip
    np.testing.assert_array_equal(same.labels, official.labels)
    with pytest.raises(ValueError, match="no background threshold for car"):
        whole(model, ["cat", "dog", "car"], naming=Naming(class_thresholds={"cat": 0.5, "dog": 0.5}))


def test_members_are_the_first_stage_groups(model):
    """Two grouping stages (16 then 4 groups): the final groups' members are the 16 first-stage groups, and each
    pixel's member is its first-stage group."""
    crop = encode_crops(model, torch.randn(2, 3, 64, 64), group_maps=True, members=True)
    member_embeds, member_index = crop.members
    assert member_embeds.shape == (2, 16, model.embed_dim)
    assert torch.equal(member_index, crop.group_index[0])
    plain = encode_crops(model, torch.randn(2, 3, 64, 64))
    assert plain.members is None


def test_hierarchical_with_confidence_above_one_changes_nothing(model):
    rgb = image(5)
    official = whole(model, ["cat", "dog", "car"])(rgb)
    never = whole(model, ["cat", "dog", "car"], naming=Naming(hierarchical=1.0))(rgb)  # no score reaches 1
    np.testing.assert_array_equal(never.labels, official.labels)


def test_encode_once_name_many(model):
    """A segmenter names one encoding under different options exactly as a fresh call with those options does."""
    rgb = image(6)
    seg = whole(model, ["cat", "dog", "car"], naming=Naming(hierarchical=0.5))
    encoded = seg.encode(rgb, members=True)
    for naming in (Naming(), Naming(top_k=1), Naming(gate=0.4), Naming(hierarchical=0.3)):
        seg.naming = naming
        fresh = whole(model, ["cat", "dog", "car"], naming=naming)(rgb)
        np.testing.assert_array_equal(seg.name(encoded).labels, fresh.labels)


# ----------------------------------------------------------------------------- evaluation, calibration, CLI, app


def test_eval_labels_variants_and_shares_one_pass(model, voc_root):
    dataset = load_dataset("voc", voc_root)
    options = {"official": (0.95, Naming()), "words": (0.95, Naming(background_words=("sky", "grass"))),
               "k1": (None, Naming(top_k=1))}  # fmt: skip
    together = evaluate_namings(model, dataset, options, "whole", progress=False, recognition=True, short_side=64)
    for key, (threshold, naming) in options.items():
        alone = evaluate_segmentation(model, dataset, "whole", threshold, naming=naming, progress=False, short_side=64)
        assert together[key]["miou"] == alone["miou"] and together[key]["per_class"] == alone["per_class"]
    assert "naming" not in together["official"] and together["words"]["naming"]["background_words"] == ["sky", "grass"]
    assert together["words"]["protocol"] == "variant" and together["k1"]["naming"]["top_k"] == 1
    assert together["official"]["recognition"]["images"] == 3
    official = evaluate_segmentation(model, dataset, "whole", progress=False, limit=1, short_side=448)
    assert official["protocol"] == "official" and "naming" not in official
    own_size = evaluate_segmentation(model, dataset, "whole", progress=False, limit=1)  # the model's: 2 x 64
    assert own_size["short_side"] == 128 and own_size["protocol"] == "variant"
    voc20 = load_dataset("voc20", voc_root)
    with pytest.raises(ValueError, match="no background class"):
        evaluate_segmentation(model, voc20, "whole", naming=Naming(min_area=0.1), progress=False)


def test_per_class_calibration_on_held_out_images(model, voc_root):
    dataset = load_dataset("voc", voc_root)
    images = CalibrationImages(model, dataset, 3, "whole", short_side=64)
    threshold, curve = images.threshold()
    thresholds, miou = images.class_thresholds(threshold, grid=[0.1, 0.5, 0.9], rounds=1)
    assert list(thresholds) == list(VOC_CLASSES) and miou >= curve[threshold]  # ascent starts from the global one
    check = evaluate_segmentation(model, dataset, "whole", None, naming=Naming(class_thresholds=thresholds),
                                  progress=False, short_side=64)  # fmt: skip
    assert check["miou"] == pytest.approx(miou)


def test_cli_per_class_thresholds_are_stored_and_reusable(small_checkpoint, voc_root, tmp_path):
    from groupvit.cli import main

    first, second = tmp_path / "calibrated.json", tmp_path / "reused.json"
    common = ["eval", "--dataset", "voc", "--root", str(voc_root), "--checkpoint", str(small_checkpoint), "--mode",
              "whole", "--background-words", "sky,grass", "--top-k", "3", "--limit", "1"]  # fmt: skip
    calibrate = ["--calibrate-background", "1", "--calibration-grid", "0.5,0.9", "--per-class-thresholds"]
    assert main([*common, *calibrate, "--out", str(first)]) == 0
    calibrated = json.loads(first.read_text())
    assert calibrated["protocol"] == "variant" and calibrated["naming"]["top_k"] == 3
    assert calibrated["naming"]["class_thresholds"] == calibrated["calibration"]["class_thresholds"]
    assert main([*common, "--background-thresholds", str(first), "--out", str(second)]) == 0
    reused = json.loads(second.read_text())
    assert reused["miou"] == calibrated["miou"] and reused["naming"] == calibrated["naming"]
    assert main([*common, "--per-class-thresholds"]) == 2  # needs held-out images


def test_cli_segment_records_the_naming(small_checkpoint, tmp_path):
    from PIL import Image

    from groupvit.cli import main

    Image.fromarray(image(7)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "a.png"), "--classes", "cat,dog", "--checkpoint", str(small_checkpoint),
            "--mode", "whole", "--background-words", "voc", "--min-area", "0.1", "--hierarchical", "0.5",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "a.json").read_text())
    assert summary["protocol"] == "variant" and summary["naming"]["background_words"] == list(SCLIP_WORDS)
    assert summary["naming"]["min_area"] == 0.1 and summary["naming"]["hierarchical"] == 0.5


def test_app_background_words_box(small_checkpoint, tmp_path):
    import gradio as gr
    from PIL import Image

    from groupvit.app import Limits, SegmentationApp, legend_html

    app = SegmentationApp(groupvit.load_model(small_checkpoint), "small", None, tmp_path, Limits())
    path = tmp_path / "a.png"
    Image.fromarray(image(8)).save(path)
    _, _, _, status = app.segment(str(path), "cat, dog", 0.0, "whole")
    _, legend, _, with_words = app.segment(str(path), "cat, dog", 0.0, "whole", "sky, grass")
    assert "background words" not in status and "2 background words" in with_words
    assert app.segmenter.naming.official  # requests leave the shared segmenter alone
    expected = ZeroShotSegmenter(app.segmenter.model, ["cat", "dog"], background_threshold=0.0, mode="whole",
                                 naming=Naming(background_words=("sky", "grass")))(image(8)).labels  # fmt: skip
    assert legend == legend_html(["cat", "dog"], expected)
    with pytest.raises(gr.Error, match="both a class and a background word"):
        app.segment(str(path), "cat, sky", 0.0, "whole", "voc")
    with pytest.raises(gr.Error, match="empty background word"):
        app.segment(str(path), "cat", 0.0, "whole", "sky,,sea")


def test_demo_picks_the_naming_on_calib_and_scores_it_on_val(model, tmp_path):
    from groupvit.data.synthvoc import SceneOptions, SynthVOCSpec, generate, voc_root
    from groupvit.demo import DEMO_THRESHOLDS, NAMINGS, evaluate_demo

    spec = SynthVOCSpec(seed=4, train=1, val=4, test=1, calib=3, shard_size=1, scene=SceneOptions(size=64))
    generate(tmp_path, spec, workers=1, progress=False)
    result = evaluate_demo(model, voc_root(tmp_path), 64)
    choice = result["naming_choice"]
    assert choice["chosen"] == max(choice["calib_miou"], key=choice["calib_miou"].get)
    assert list(choice["calib_miou"]) == list(NAMINGS)
    calib = CalibrationImages(model, load_dataset("voc", voc_root(tmp_path), "calib"), 3, "whole", members=True,
                              keep_pixels=True, short_side=64)  # fmt: skip
    assert calib.threshold(NAMINGS[choice["chosen"]], DEMO_THRESHOLDS)[0] == choice["threshold"]
    val = load_dataset("voc", voc_root(tmp_path), "val")

    def val_miou(threshold: float, naming: Naming | None = None) -> float:
        scores = evaluate_segmentation(model, val, "whole", threshold, naming=naming, short_side=64, progress=False)
        return scores["miou"]

    assert result["miou"] == val_miou(result["background_threshold"])
    assert result["miou_at_official_threshold"] == val_miou(0.95)
    assert choice["val_miou"] == val_miou(choice["threshold"], NAMINGS[choice["chosen"]])
    assert result["recognition"]["images"] == 4 and "per_image" in result


# ----------------------------------------------------------------------------- refinement as a naming option


def test_pamr_refinement_is_a_naming_option_a_model_can_record(model, tmp_path):
    import torch.nn.functional as F

    from groupvit.pamr import pamr
    from groupvit.settings import TestSettings

    with pytest.raises(ValueError, match="refine must be one of"):
        Naming(refine="crf")
    noise = image(0, (96, 96))  # the tiny random model splits noise into groups (a flat image: one group)
    refined = ZeroShotSegmenter(model, ["cat", "dog", "bird"], 0.5, mode="whole", short_side=64,
                                naming=Naming(refine="pamr"))  # fmt: skip
    encoded = refined.encode(noise)
    assert encoded.pixels is not None and encoded.pixels.shape[2:] == (64, 64)
    by_hand = pamr(encoded.pixels, refined.crop_logits(encoded)[None])  # the scores at 64 px, then resized
    by_hand = F.interpolate(by_hand, size=(96, 96), mode="bilinear", align_corners=False)[0]
    result = refined.name(encoded)
    assert np.allclose(result.scores, by_hand.numpy(), atol=1e-6)
    # The class channels are refined once per image and naming and reused: other thresholds, another vocabulary
    # and back give what a fresh segmenter gives.
    for threshold, names in ((0.9, ["cat", "dog", "bird"]), (0.5, ["car", "tree"]), (0.5, ["cat", "dog", "bird"])):
        refined.background_threshold = threshold
        refined.set_classes(names)
        fresh = ZeroShotSegmenter(model, names, threshold, mode="whole", short_side=64, naming=Naming(refine="pamr"))
        assert np.allclose(refined.name(encoded).scores, fresh(noise).scores, atol=1e-6)
    assert np.allclose(refined.name(encoded).scores, result.scores, atol=1e-6)
    plain = ZeroShotSegmenter(model, ["cat", "dog", "bird"], 0.5, mode="whole", short_side=64)(noise)
    assert not np.allclose(plain.scores, result.scores, atol=1e-3)  # it did change the scores
    with pytest.raises(ValueError, match="PAMR needs the image"):
        refined.name(refined.encode(noise, keep_pixels=False))
    # Recorded with the model, it is what a run without naming options uses.
    settings = TestSettings(short_side=64, mode="whole", background_threshold=0.5, naming=Naming(refine="pamr"))
    assert TestSettings.from_dict(json.loads(settings.to_json())) == settings
    old = settings.to_dict()
    del old["naming"]["refine"]  # a model saved before the option
    assert TestSettings.from_dict(old).naming.refine is None
    model.test_settings, kept = settings, model.test_settings
    try:
        groupvit.save_model(model, tmp_path / "m.safetensors")
    finally:
        model.test_settings = kept
    loaded = groupvit.load_model(tmp_path / "m.safetensors")
    assert loaded.test_settings.naming.refine == "pamr"
    again = ZeroShotSegmenter(loaded, ["cat", "dog", "bird"])(noise)
    assert np.array_equal(again.labels, result.labels)
    # evaluate_namings encodes once and names with and without it; the refined option is a variant.
    val = load_dataset("voc", write_tiny_voc(tmp_path / "voc"), "val")
    scores = evaluate_namings(model, val, {"plain": (0.5, Naming()), "pamr": (0.5, Naming(refine="pamr"))},
                              "whole", short_side=64, progress=False)  # fmt: skip
    assert scores["pamr"]["naming"]["refine"] == "pamr" and scores["pamr"]["protocol"] == "variant"
    alone = evaluate_segmentation(model, val, "whole", 0.5, naming=Naming(refine="pamr"), short_side=64, progress=False)
    assert alone["miou"] == scores["pamr"]["miou"]
