"""The optimised paths (torch.compile, bf16 autocast, final-stage-only segmentation maps) against the plain ones."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import groupvit
from groupvit.config import model_config
from groupvit.layers import Mlp
from groupvit.segmentation import ZeroShotSegmenter, class_text_embeddings, segment_crops

CAPTIONS = ["a photo of a dog.", "two cats on a sofa", "sky", "a red car parked on the road at night"]


@pytest.fixture(scope="module")
def small_model() -> groupvit.GroupViT:
    """The `small` preset with its own initialisation: realistic weight scales, unlike the randomised parity models."""
    torch.manual_seed(0)
    return groupvit.GroupViT(model_config("small")).eval()


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest per-row ||ours - reference|| / ||reference||."""
    return ((ours.float() - reference).norm(dim=-1) / reference.norm(dim=-1)).max().item()


@pytest.mark.slow
def test_compiled_encoders_match_eager(small_model):
    compiled = copy.deepcopy(small_model).compile_encoders()
    assert compiled.state_dict().keys() == small_model.state_dict().keys()  # checkpoints unaffected
    torch.manual_seed(1)
    pixels, ids = torch.randn(2, 3, 64, 64), groupvit.tokenize(CAPTIONS)
    with torch.no_grad():
        ours, theirs = compiled.encode_image_groups(pixels), small_model.encode_image_groups(pixels)
        torch.testing.assert_close(compiled.encode_text(ids), small_model.encode_text(ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.image_embeds, theirs.image_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.group_embeds, theirs.group_embeds, rtol=1e-5, atol=1e-5)
    for mine, reference in zip(ours.assignments, theirs.assignments, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_embeddings_close_to_fp32(small_model):
    """Text embeddings within 1e-2 relative. Image embeddings go through two hard (argmax) token-to-group
    assignments, where bf16 rounding moves near-tied tokens to another group, so they are held to cosine
    similarity >= 0.999 (3e-2 relative), and the soft assignment maps to 1e-2 absolute (they are probabilities)."""
    torch.manual_seed(1)
    pixels, ids = torch.randn(4, 3, 64, 64), groupvit.tokenize(CAPTIONS)
    with torch.inference_mode():
        image, text = small_model.encode_image_groups(pixels), small_model.encode_text(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            image_bf16, text_bf16 = small_model.encode_image_groups(pixels), small_model.encode_text(ids)
    assert text_bf16.dtype == torch.bfloat16  # the autocast path really ran
    assert relative_error(text_bf16, text) < 1e-2
    assert F.cosine_similarity(image_bf16.image_embeds.float(), image.image_embeds).min() > 0.999
    assert relative_error(image_bf16.image_embeds, image.image_embeds) < 3e-2
    for mine, reference in zip(image_bf16.assignments, image.assignments, strict=True):
        assert (mine.float() - reference).abs().max() < 1e-2


def test_bf16_segmentation_agrees_with_fp32(small_model):
    rgb = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    names = ["dog", "cat", "sky", "car", "grass"]
    options = dict(short_side=64, crop_size=64, stride=32, background_threshold=0.5)
    fp32 = ZeroShotSegmenter(small_model, names, **options)(rgb)
    bf16 = ZeroShotSegmenter(small_model, names, autocast_dtype=torch.bfloat16, **options)(rgb)
    assert (fp32.labels == bf16.labels).mean() > 0.99


def test_final_stage_only_maps_give_the_same_logits(small_model):
    torch.manual_seed(2)
    pixels = torch.randn(2, 3, 64, 96)
    text = class_text_embeddings(small_model, ["dog", "cat", "sky"])
    logits, maps = segment_crops(small_model, pixels, text, 0.5)
    fast, no_maps = segment_crops(small_model, pixels, text, 0.5, group_maps=False)
    assert len(maps) == 2 and no_maps == []
    torch.testing.assert_close(fast, logits, rtol=0, atol=0)


def test_inplace_gelu_without_autograd_matches_autograd_path():
    mlp = Mlp(16, 64)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        fast = mlp(x)
    torch.testing.assert_close(fast, mlp(x), rtol=0, atol=0)
