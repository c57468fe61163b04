"""The mosaic loss lever (MixReorg-style, simplified): 2x2 mosaics of the batch, each quadrant's region embedding from
the final groups' assignments, trained against its source image's caption and nouns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groupvit.config import GroupViTConfig
from groupvit.demo import DemoOptions, preset_sections, variant_model
from groupvit.losses import (
    groupvit_losses,
    image_text_contrastive_loss,
    mosaic,
    mosaic_region_embeddings,
    multi_label_contrastive_loss,
    sigmoid_image_text_loss,
)
from groupvit.model import GroupViT
from groupvit.tokenizer import tokenize
from groupvit.training.config import TrainConfig
from groupvit.training.loop import train_step
from tests.test_recipe_variants import tiny_model


def constant_images(values, size: int = 8) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()


def test_mosaic_tiles_consecutive_images_row_major():
    out = mosaic(constant_images([0, 1, 2, 3]))
    assert out.shape == (1, 3, 8, 8)
    quadrants = {(0, 0): 0.0, (0, 1): 1.0, (1, 0): 2.0, (1, 1): 3.0}  # (row, col) -> source image
    for (r, c), value in quadrants.items():
        assert torch.equal(out[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4], torch.full((3, 4, 4), value))
    # A fifth image has no partners: still one mosaic, the same one.
    assert torch.equal(mosaic(constant_images([0, 1, 2, 3, 9])), out)
    two = mosaic(constant_images([0, 1, 2, 3, 4, 5, 6, 7]))
    assert two.shape == (2, 3, 8, 8) and two[1, 0, 0, 0] == 4 and two[1, 0, 7, 7] == 7
    with pytest.raises(ValueError, match="at least 4 images"):
        mosaic(constant_images([0, 1, 2]))


def fake_visual(tokens: torch.Tensor, assignments: list[torch.Tensor]):
    return lambda pixels, return_patch_tokens=False: (tokens, assignments)


def test_region_embeddings_weigh_the_groups_by_their_share_of_each_quadrant(monkeypatch):
    model = tiny_model().eval()  # eval: the projection head's BatchNorm acts per row
    side = 8  # 64-pixel mosaics, 8-pixel patches
    tokens = torch.randn(1, 2, model.config.vision.width, generator=torch.Generator().manual_seed(0))
    # Stage 1: in the top half a patch joins column band col // 2 (groups 0-3); in the bottom half group 0 on the
    # left, group 3 on the right. Stage 2: group 0 -> final 0, group 1 -> half each, groups 2 and 3 -> final 1.
    first = torch.zeros(1, 4, side * side)
    for r in range(side):
        for c in range(side):
            first[0, (c // 2) if r < 4 else (0 if c < 4 else 3), r * side + c] = 1.0
    second = torch.tensor([[[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0]]])  # [1, S_out=2, N_in=4]
    monkeypatch.setattr(model.visual, "forward", fake_visual(tokens, [first, second]))
    regions = mosaic_region_embeddings(model, torch.zeros(1, 3, 64, 64))
    e0, e1 = F.normalize(model.visual_projection(tokens), dim=-1)[0]
    # Top-left: bands 0 and 1 in equal parts, so final group 0 weighs 1/2 + 1/2 * 1/2 = 3/4.
    expected = torch.stack([F.normalize(0.75 * e0 + 0.25 * e1, dim=0), e1, e0, e1])
    torch.testing.assert_close(regions, expected, rtol=1e-5, atol=1e-6)


def test_region_embeddings_of_a_plain_vit_are_its_quadrants_mean_patches():
    model_section, _, _ = preset_sections()
    vit = GroupViT(GroupViTConfig.from_dict(variant_model(model_section, DemoOptions(baseline="vit")))).eval()
    mosaics = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    regions = mosaic_region_embeddings(vit, mosaics)
    tokens, assignments = vit.visual(mosaics)
    assert assignments == [] and tokens.shape[1] == 64
    patches = F.normalize(vit.visual_projection(tokens), dim=-1)  # [2, 64, D]
    expected = []
    for m in range(2):
        for qr in range(2):
            for qc in range(2):
                inside = [r * 8 + c for r in range(4 * qr, 4 * qr + 4) for c in range(4 * qc, 4 * qc + 4)]
                expected.append(F.normalize(patches[m, inside].mean(dim=0), dim=0))
    torch.testing.assert_close(regions, torch.stack(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="patch grid divisible by 2"):
        mosaic_region_embeddings(vit, torch.zeros(1, 3, 24, 24))  # 3x3 patches


CAPTIONS = ["a dog on grass", "a cat", "a red car", "a bird in the sky", "a chair"]
NOUNS = [["dog", "grass"], ["cat", "cat"], ["car", "car"], ["bird", "sky"], ["chair", "chair"]]
KEYS = torch.tensor([[1, 2, 1, 2], [3, 3, 3, -2], [4, 4, 4, -2], [5, 6, 5, 6], [7, 7, 7, 1]])  # K = 2, then M = 2


def batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    texts = torch.stack([tokenize([c] + [f"a photo of a {w}." for w in NOUNS[i]]) for i, c in enumerate(CAPTIONS[:n])])
    return images, texts  # [n, 3, H, W], [n, 1 + K, 77]


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_mosaic_weight_adds_both_losses_on_the_quadrants(loss):
    sigmoid = loss == "sigmoid"
    model = tiny_model(logit_bias=sigmoid)  # training mode: Gumbel noise on, fixed by the seeds
    images, texts = batch()
    keys = KEYS if sigmoid else None
    torch.manual_seed(3)
    itc0, ml0 = groupvit_losses(model, images, texts, keys=keys, loss=loss)
    # The mosaic pass comes after the main terms inside groupvit_losses, so it draws the same noise here.
    regions = mosaic_region_embeddings(model, mosaic(images))
    torch.manual_seed(3)
    itc1, ml1 = groupvit_losses(model, images, texts, keys=keys, loss=loss, mosaic_weight=0.5)
    assert regions.shape[0] == 4  # the fifth image sits it out
    text = F.normalize(model.encode_text(texts.reshape(15, -1)), dim=-1).view(5, 3, -1)[:4]  # sources 0-3
    scale, ml_scale = model.logit_scale_value(), model.multi_label_logit_scale.exp().clamp(max=100)
    if sigmoid:
        extra_itc = sigmoid_image_text_loss(regions, text[:, 0], scale, model.logit_bias)
        extra_ml = multi_label_contrastive_loss(regions, text[:, 1:], ml_scale, KEYS[:4], model.multi_label_logit_bias)
    else:
        extra_itc = image_text_contrastive_loss(regions, text[:, 0], scale)
        extra_ml = multi_label_contrastive_loss(regions, text[:, 1:], ml_scale)
    assert itc1.item() == pytest.approx(itc0.item() + 0.5 * extra_itc.item(), rel=1e-5)
    assert ml1.item() == pytest.approx(ml0.item() + 0.5 * extra_ml.item(), rel=1e-5)
    (extra_itc + extra_ml).backward()  # the quadrant terms alone reach the assignment logits
    assert model.visual.stages[0].grouping.assign.q_proj.weight.grad.abs().sum() > 0


def test_mosaic_weight_is_off_under_four_images():
    model = tiny_model()
    images, texts = batch(3)
    torch.manual_seed(4)
    plain = groupvit_losses(model, images, texts)
    torch.manual_seed(4)
    assert [t.item() for t in groupvit_losses(model, images, texts, mosaic_weight=1.0)] == [t.item() for t in plain]


def test_training_config_and_demo_carry_the_mosaic_loss():
    with pytest.raises(ValueError, match="mosaic_loss must be >= 0"):
        TrainConfig(mosaic_loss=-0.5)
    with pytest.raises(ValueError, match="batch_size 2 is under 4"):
        TrainConfig(mosaic_loss=1.0, batch_size=2)
    with pytest.raises(ValueError, match="even patch grid"):
        TrainConfig(model="synthvoc", image_size=72, mosaic_loss=1.0).model_config()  # 9x9 patches of 8
    assert TrainConfig.from_dict({}, ["mosaic_loss=0.25"]).mosaic_loss == 0.25
    # The loop's step passes the weight through.
    cfg = TrainConfig(model="synthvoc", mosaic_loss=0.5)
    model = tiny_model()
    images, texts = batch(4)
    seeds = torch.arange(4)
    stepped = train_step(model, [(images, texts, KEYS[:4], seeds)], cfg)
    direct = groupvit_losses(model, images, texts, mosaic_weight=0.5, seeds=seeds)
    assert [t.item() for t in stepped] == [t.item() for t in direct]
    assert DemoOptions(mosaic_loss=0.5).departures()["mosaic_loss"] == 0.5
    assert DemoOptions().mosaic_loss == DemoOptions(recipe="paper").mosaic_loss == 0.0
    assert "mosaic_loss" not in DemoOptions(recipe="paper").departures()
    from groupvit.cli import build_parser

    assert build_parser().parse_args(["demo", "--mosaic-loss", "0.5"]).mosaic_loss == 0.5
    assert build_parser().parse_args(["demo"]).mosaic_loss is None
