"""Zero-shot segmentation: protocol steps by hand, and spec 5.3 recomputed from transformers' outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import groupvit
from groupvit.segmentation import (
    ZeroShotSegmenter,
    background_channel,
    check_class_names,
    group_class_affinity,
    segment_crops,
    slide_windows,
    token_grid,
)

CLASSES = ["cat", "dog", "grass", "sky", "car", "tree", "road"]


# ----------------------------------------------------------------------------- protocol steps by hand


def test_affinity_top5_filter_by_hand():
    """One group, 7 classes: classes outside the image's top 5 get 0; the rest softmax(R|top5) * softmax(R)."""
    text = torch.eye(7)
    group = torch.tensor([[[0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.4]]])  # [B=1, G=1, D=7]
    image = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])  # top-5 classes: 2..6
    scale = torch.tensor(10.0)
    got = group_class_affinity(group, image, text, scale)[0, 0]
    r = 10 * np.array([0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.4]) / np.linalg.norm([0.5, 0.1, 0.9, 0.3, 0.2, 0.8, 0.4])
    full = np.exp(r) / np.exp(r).sum()
    top = np.zeros(7)
    top[2:] = np.exp(r[2:]) / np.exp(r[2:]).sum()
    np.testing.assert_allclose(got.numpy(), top * full, rtol=1e-5, atol=1e-7)
    assert got[0] == 0 and got[1] == 0


def test_affinity_with_fewer_than_five_classes_keeps_all():
    text = F.normalize(torch.randn(3, 4), dim=-1)
    groups, image = torch.randn(2, 5, 4), torch.randn(2, 4)
    got = group_class_affinity(groups, image, text, torch.tensor(5.0))
    soft = (5 * F.normalize(groups, dim=-1) @ text.t()).softmax(-1)
    torch.testing.assert_close(got, soft * soft)


def test_background_rule_with_min_guard():
    affinity = torch.tensor([[[0.6, 0.1], [0.3, 0.2]]])  # [B=1, G=2, C=2]; best score 0.6 < threshold 0.95
    foreground = torch.tensor([[[[0.6, 0.3]], [[0.1, 0.2]]]])  # [B, C, H=1, W=2]: pixel 0 in group 0, pixel 1 group 1
    bg = background_channel(foreground, affinity, threshold=0.95)
    assert bg.tolist() == [[[[0.0, 1.0]]]]  # t = min(0.95, 0.6): the best group stays foreground
    assert background_channel(foreground, affinity, threshold=0.25).tolist() == [[[[0.0, 0.0]]]]
    assert background_channel(foreground, affinity, threshold=0.0).tolist() == [[[[0.0, 0.0]]]]


def test_slide_windows_by_hand():
    assert slide_windows(448, 448, 448, 224) == [(0, 448, 0, 448)]
    # 448 x 597: ceil((597 - 448) / 224) + 1 = 2 columns, the last shifted back to end at 597.
    assert slide_windows(448, 597, 448, 224) == [(0, 448, 0, 448), (0, 448, 149, 597)]
    # 900 rows: ceil(452 / 224) + 1 = 4 windows at 0, 224, 448, then 672 shifted back to 452 to end at 900.
    assert [w[:2] for w in slide_windows(900, 448, 448, 224)] == [(0, 448), (224, 672), (448, 896), (452, 900)]
    assert slide_windows(300, 200, 448, 224) == [(0, 300, 0, 200)]  # smaller than a crop: one smaller window


@pytest.mark.parametrize(
    ("tokens", "height", "width", "grid"),
    [
        (196, 224, 224, (14, 14)),
        (28 * 37, 448, 597, (28, 37)),
        (37 * 28, 597, 448, (37, 28)),
        (8 * 12, 64, 100, (8, 12)),
    ],
)
def test_token_grid_non_square(tokens, height, width, grid):
    assert token_grid(tokens, height, width) == grid


def test_class_name_checks():
    assert check_class_names(" dog, grass ,sky") == ["dog", "grass", "sky"]
    for bad, message in [("", "empty class name"), ([], "no class names"), ("dog,Dog", "duplicate"),
                         ("dog,,cat", "empty"), ([f"c{i}" for i in range(256)], "at most 255")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            check_class_names(bad)
    assert len(check_class_names([f"c{i}" for i in range(1000)], limit=1000)) == 1000  # classification's limit


# ----------------------------------------------------------------------------- against transformers


def reference_logits(hf, pixels: torch.Tensor, class_names, threshold):
    """Spec 5.3 written directly on transformers' GroupViTModel outputs, one crop at a time, with an explicit
    one-hot matrix O and O @ A, as the reference does."""
    from transformers import CLIPTokenizer  # noqa: F401  (transformers present; ids come from groupvit.tokenize)

    ids = groupvit.tokenize([f"a photo of a {c}." for c in class_names])
    with torch.no_grad():
        T = F.normalize(hf.get_text_features(input_ids=ids).pooler_output, dim=-1)  # [C, D]
        s = min(math.exp(hf.logit_scale.item()), 100.0)
        out = []
        for crop in pixels:
            vm = hf.vision_model
            enc = vm.encoder(vm.embeddings(crop[None], interpolate_pos_encoding=True), output_attentions=True)
            tokens = vm.layernorm(enc.last_hidden_state)[0]  # [G, C]
            soft0, soft1 = (a[0] for a in enc.attentions)  # [64, N], [8, 64]
            P = soft0.t() @ soft1.t()  # [N, 8]
            H, W = crop.shape[1:]
            p = hf.config.vision_config.patch_size
            h, w = H // p, W // p
            up = F.interpolate(P.t().reshape(1, -1, h, w), size=(H, W), mode="bilinear", align_corners=False)[0]
            O = F.one_hot(up.argmax(0), up.shape[0]).float()  # [H, W, 8]
            G = F.normalize(hf.visual_projection(tokens), dim=-1)
            v = F.normalize(hf.visual_projection(tokens.mean(0, keepdim=True)), dim=-1)[0]
            R = s * G @ T.t()
            pre = R.softmax(-1)
            top = (s * v @ T.t()).softmax(-1).topk(min(5, len(class_names))).indices
            masked = torch.full_like(R, float("-inf"))
            masked[:, top] = R[:, top]
            A = masked.softmax(-1) * pre  # [8, C]
            fg = (O @ A).permute(2, 0, 1)  # [C, H, W]
            if threshold is None:
                out.append(fg)
                continue
            t = min(threshold, A.max().item())
            bg = (fg.max(0, keepdim=True).values < t).float()
            out.append(torch.cat([bg, fg]))
        return torch.stack(out)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 96), (80, 48)])
@pytest.mark.parametrize("threshold", [0.95, 0.3, None])
def test_segment_crops_equals_reference_on_transformers(hf_small, height, width, threshold):
    hf, path = hf_small
    model = groupvit.load_model(path)
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, height, width)
    text = groupvit.segmentation.class_text_embeddings(model, CLASSES)
    ours, group_maps = segment_crops(model, pixels, text, threshold)
    expected = reference_logits(hf, pixels, CLASSES, threshold)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert [g.shape for g in group_maps] == [(3, height, width)] * 2


def test_crop_with_partial_patches_floors_like_a_strided_conv(hf_small):
    """A 70x75 crop: tokens come from the 64x72 part (as the reference's conv ignores the rest), logits cover
    all 70x75 pixels."""
    _, path = hf_small
    model = groupvit.load_model(path)
    pixels = torch.randn(1, 3, 70, 75)
    text = groupvit.segmentation.class_text_embeddings(model, CLASSES)
    logits, maps = segment_crops(model, pixels, text, 0.9)
    assert logits.shape == (1, 8, 70, 75) and maps[-1].shape == (1, 70, 75)
    with torch.no_grad():
        groups = model.encode_image_groups(pixels[:, :, :64, :72])
    assert groups.assignments[0].shape[-1] == 8 * 9


def reference_slide(model, pixels, text, threshold, crop, stride):
    """mmseg 0.18's slide inference: pad each crop's logits into the canvas, divide by the per-pixel count."""
    _, _, H, W = pixels.shape
    rows = max(H - crop + stride - 1, 0) // stride + 1
    cols = max(W - crop + stride - 1, 0) // stride + 1
    preds, count = None, torch.zeros(1, 1, H, W)
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride, c * stride
            y2, x2 = min(y1 + crop, H), min(x1 + crop, W)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            logit, _ = segment_crops(model, pixels[:, :, y1:y2, x1:x2], text, threshold)
            padded = F.pad(logit, (x1, W - x2, y1, H - y2))
            preds = padded if preds is None else preds + padded
            count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


def test_slide_batched_equals_per_crop_reference(hf_small):
    _, path = hf_small
    model = groupvit.load_model(path)
    seg = ZeroShotSegmenter(model, CLASSES, mode="slide", crop_size=64, stride=32, batch_size=3, group_maps=False)
    pixels = torch.randn(1, 3, 100, 150)
    logits, _ = seg.logits(pixels)
    expected = reference_slide(model, pixels, seg.text_embeds, 0.95, 64, 32)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_slide_on_image_within_one_crop_equals_whole(hf_small):
    _, path = hf_small
    model = groupvit.load_model(path)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)  # -> 64 x 85 at short side 64: one 96-crop
    common = dict(short_side=64, crop_size=96, stride=48)
    slide = ZeroShotSegmenter(model, CLASSES, mode="slide", **common)(image)
    whole = ZeroShotSegmenter(model, CLASSES, mode="whole", **common)(image)
    np.testing.assert_array_equal(slide.labels, whole.labels)
    np.testing.assert_allclose(slide.scores, whole.scores, atol=1e-6)
    assert slide.labels.shape == (96, 128) and slide.scores.shape == (8, 96, 128)


def test_result_api_and_no_background(hf_small):
    _, path = hf_small
    model = groupvit.load_model(path)
    image = np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    seg = ZeroShotSegmenter(model, CLASSES, background_threshold=None, short_side=64, crop_size=64, stride=32)
    result = seg(image)
    assert result.labels.min() >= 1 and result.labels.max() <= len(CLASSES)
    assert result.scores.shape == (len(CLASSES) + 1, 70, 90) and not result.scores[0].any()
    assert [g.shape for g in result.group_maps] == [(70, 90), (70, 90)]
    assert result.group_maps[0].max() < 16 and result.group_maps[1].max() < 4
    assert sum(result.fractions().values()) == pytest.approx(1.0)
    # text embeddings are cached per vocabulary
    first = seg.text_embeds
    seg.set_classes(["sky", "sea"])
    seg.set_classes(CLASSES)
    assert seg.text_embeds is first


def test_pamr_refinement_keeps_masks_within_regions():
    from groupvit.pamr import pamr

    image = torch.zeros(1, 3, 32, 32)
    image[:, :, :, 16:] = 1.0  # two flat regions
    masks = torch.zeros(1, 2, 32, 32)
    masks[:, 0, :, :16] = 1.0
    masks[:, 1, :, 16:] = 1.0
    noisy = masks + 0.3 * torch.rand(1, 2, 32, 32)
    refined = pamr(image, noisy)
    assert (refined.argmax(1) == masks.argmax(1)).all()
    assert refined[:, :, :, :16].std(dim=(2, 3)).max() < noisy[:, :, :, :16].std(dim=(2, 3)).min()  # smoothed
    flat = pamr(torch.rand(1, 3, 1, 1).expand(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    torch.testing.assert_close(flat, torch.ones(1, 3, 8, 8))


def test_classifier_equals_transformers_computation(hf_small):
    from groupvit.classification import ZeroShotClassifier

    hf, path = hf_small
    model = groupvit.load_model(path)
    templates = ["a photo of a {}.", "art of the {}."]
    clf = ZeroShotClassifier(model, ["cat", "dog", "car"], templates=templates)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ids = groupvit.tokenize([t.format(c) for c in ["cat", "dog", "car"] for t in templates])
        text = F.normalize(hf.get_text_features(input_ids=ids).pooler_output.view(3, 2, -1).mean(1), dim=-1)
        image = F.normalize(hf.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    torch.testing.assert_close(clf.logits(pixels), image @ text.t(), atol=1e-5, rtol=1e-4)


def test_imagenet_names_classify_despite_duplicates(hf_small):
    from groupvit.evaluation.datasets import IMAGENET_CLASSES

    assert len(IMAGENET_CLASSES) == 1000 and IMAGENET_CLASSES.count("missile") == 2
    with pytest.raises(ValueError, match="duplicate"):
        check_class_names(IMAGENET_CLASSES, limit=1000)
    clf = groupvit.ZeroShotClassifier(groupvit.load_model(hf_small[1]), IMAGENET_CLASSES[:50], templates="simple")
    assert clf.logits(torch.randn(1, 3, 64, 64)).shape == (1, 50)
    assert check_class_names(["missile", "missile"], unique=False) == ["missile", "missile"]


def test_plain_vit_segments_by_patch_to_text_similarity():
    """A model without grouping stages (the SynthVOC baseline): each pixel takes its own patch's class scores."""
    from groupvit.config import GroupViTConfig
    from groupvit.model import GroupViT
    from tests.conftest import randomize

    config = GroupViTConfig.from_dict({
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "depths": [2], "num_heads": 2,
                   "num_group_tokens": [0], "num_output_groups": []},
        "text": {"width": 32, "layers": 1, "heads": 2}, "projection_dim": 16, "projection_hidden_dim": 32,
    })  # fmt: skip
    model = randomize(GroupViT(config), seed=3)
    pixels = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    text = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    logits, group_maps = segment_crops(model, pixels, text, None)
    with torch.no_grad():
        tokens, assignments = model.visual(pixels)  # [2, 24, 32]
        patches = model.visual_projection(tokens)  # [2, 24, 16]
        pooled = model.visual_projection(tokens.mean(dim=1))
    assert assignments == [] and tokens.shape[1] == 4 * 6
    affinity = group_class_affinity(patches, pooled, text, model.logit_scale_value())  # [2, 24, 5]
    expected = affinity.transpose(1, 2).reshape(2, 5, 4, 6).repeat_interleave(8, 2).repeat_interleave(8, 3)
    torch.testing.assert_close(logits, expected)
    expected_groups = torch.arange(24).reshape(4, 6).repeat_interleave(8, 0).repeat_interleave(8, 1)
    assert torch.equal(group_maps[-1][1], expected_groups)
