"""Numerical parity with transformers' GroupViTModel, an independent implementation of the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import groupvit

TOL = 1e-5


def hf_vision(hf, pixels: torch.Tensor):
    """transformers' image path with bicubic position-embedding resizing turned on (works at any size)."""
    vm = hf.vision_model
    hidden = vm.embeddings(pixels, interpolate_pos_encoding=True)
    out = vm.encoder(hidden, output_attentions=True, return_dict=True)
    tokens = vm.layernorm(out.last_hidden_state)  # [B, G, C]
    B, G, C = tokens.shape
    groups = hf.visual_projection(tokens.reshape(B * G, C)).reshape(B, G, -1)
    return hf.visual_projection(tokens.mean(dim=1)), groups, out.attentions


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, normalize: bool = True) -> None:
    if normalize:
        ours, theirs = F.normalize(ours, dim=-1), F.normalize(theirs, dim=-1)
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    assert err < TOL, f"max abs difference {err:.2e}"


@pytest.mark.parametrize("which", ["hf_small", "hf_default"])
def test_image_text_and_assignment_parity(which, request):
    hf, path = request.getfixturevalue(which)
    model = groupvit.load_model(path)
    assert not model.training
    size = hf.config.vision_config.image_size
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, size, size)
    captions = ["a photo of a dog.", "Two cats & a sofa, in the sun!", "x" * 400]
    ids = groupvit.tokenize(captions)
    with torch.no_grad():
        assert_close(model.encode_image(pixels), hf.get_image_features(pixel_values=pixels).pooler_output)
        assert_close(model.encode_text(ids), hf.get_text_features(input_ids=ids).pooler_output)
        ours = model.encode_image_groups(pixels)
        image, groups, maps = hf_vision(hf, pixels)
    assert_close(ours.image_embeds, image)
    assert_close(ours.group_embeds, groups)
    assert len(ours.assignments) == len(maps) == 2
    for mine, theirs in zip(ours.assignments, maps, strict=True):
        assert_close(mine, theirs, normalize=False)
        torch.testing.assert_close(mine.sum(dim=1), torch.ones_like(mine[:, 0]))  # softmax over groups


@pytest.mark.parametrize("which", ["hf_small", "hf_default"])
@pytest.mark.parametrize("scale", [(2, 2), (2, 1.5)])
def test_parity_at_other_sizes(which, scale, request):
    """448x448 (and a non-square size): the position embedding is resized bicubically by both."""
    hf, path = request.getfixturevalue(which)
    model = groupvit.load_model(path)
    size = hf.config.vision_config.image_size
    H, W = int(size * scale[0]), int(size * scale[1])
    pixels = torch.randn(1, 3, H, W)
    with torch.no_grad():
        ours = model.encode_image_groups(pixels)
        image, groups, maps = hf_vision(hf, pixels)
    assert_close(ours.image_embeds, image)
    assert_close(ours.group_embeds, groups)
    patch = hf.config.vision_config.patch_size
    assert ours.assignments[0].shape[-1] == (H // patch) * (W // patch)
    for mine, theirs in zip(ours.assignments, maps, strict=True):
        assert_close(mine, theirs, normalize=False)


def test_logit_scale_parity(hf_small):
    hf, path = hf_small
    model = groupvit.load_model(path)
    assert model.logit_scale.item() == pytest.approx(hf.logit_scale.item())
    with torch.no_grad():
        model.logit_scale.fill_(6.0)
    assert model.logit_scale_value().item() == 100.0  # exp(6) clamped
