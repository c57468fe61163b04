"""The small-batch recipe's variants (docs/research/synthvoc-rounds.md, eighth round) against hand-written float64
formulas: same-noun positives, SigLIP's sigmoid losses, the deep noun loss, max-pooled text, and what export does with
them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from groupvit.checkpoint import export_state_dict, load_model, save_model
from groupvit.config import model_config
from groupvit.losses import (
    groupvit_losses,
    multi_label_contrastive_loss,
    shared_noun_mask,
    sigmoid_image_text_loss,
)
from groupvit.model import GroupViT
from groupvit.templates import FULL
from groupvit.tokenizer import tokenize
from groupvit.training.config import TrainConfig
from groupvit.training.data import MAX_CAPTION_NOUNS, CaptionTexts, noun_key


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_shared_noun_mask_by_hand():
    # prompts: image 0 -> dog, cat; image 1 -> dog, (caption padding); image 2 -> car, car
    prompt_keys = torch.tensor([5, 7, 5, -1, 9, 9])
    owners = torch.tensor([0, 0, 1, 1, 2, 2])
    caption_keys = torch.tensor([[5, 7, -2], [5, 8, -2], [9, 7, -2]])  # captions: {dog, cat}, {dog, bus}, {car, cat}
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],  # image 0 has dog and cat: both dog prompts and its cat prompt
            [1, 0, 1, 1, 0, 0],  # image 1: the dog prompts and its own padding prompt, not image 0's cat
            [0, 1, 0, 0, 1, 1],  # image 2: image 0's cat prompt and its own car prompts; never another's padding
        ],
        dtype=torch.bool,
    )
    assert torch.equal(shared_noun_mask(prompt_keys, owners, caption_keys), expected)


def test_caption_texts_keys_name_each_prompts_noun():
    import random

    ids, keys = CaptionTexts(3)("a dog and a cat", random.Random(0), ["dog", "cat"])
    assert ids.shape == (4, 77) and keys.shape == (3 + MAX_CAPTION_NOUNS,)
    prompts = keys[:3].tolist()
    assert sorted(prompts[:2]) == sorted([noun_key("dog"), noun_key("cat")]) and prompts[2] == -1  # padded
    present = keys[3:].tolist()
    assert sorted(k for k in present if k >= 0) == sorted([noun_key("dog"), noun_key("cat")])
    assert present.count(-2) == MAX_CAPTION_NOUNS - 2
    assert noun_key("Dog") == noun_key("dog") != noun_key("dogs")


def test_noun_templates_choose_the_prompts_of_the_noun_prompts():
    import random

    words = ["dog", "cat", "sheep"]
    simple, _ = CaptionTexts(3, templates="simple")("a dog, a cat and a sheep", random.Random(1), words)
    assert sorted(map(tuple, simple[1:].tolist())) == sorted(
        map(tuple, tokenize([f"a photo of a {w}." for w in words]).tolist())
    )
    # The default draws from CLIP's 80 templates, as the paper: over many captions, far more than one prompt per noun.
    texts, rng = CaptionTexts(1), random.Random(0)
    drawn = {tuple(texts("a dog", rng, ["dog"])[0][1].tolist()) for _ in range(200)}
    assert len(drawn) > 40 and {tuple(t) for t in tokenize([t.format("dog") for t in FULL]).tolist()} >= drawn
    with pytest.raises(ValueError, match="noun_templates"):
        TrainConfig(noun_templates="one")


def random_unit(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def test_sigmoid_image_text_loss_by_hand():
    image, text = random_unit((4, 6), 0), random_unit((4, 6), 1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    expected = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            expected -= log_sigmoid(z * (10.0 * float(image[i] @ text[j]) - 3.0))
    assert sigmoid_image_text_loss(image, text, scale, bias).item() == pytest.approx(expected / 4, rel=1e-12)


KEYS = torch.tensor([[5, 7, 5, 7, -2], [5, -1, 5, 8, -2], [9, 9, 9, -2, -2]])  # K = 2 prompts, then caption nouns


def positives_by_hand(i: int, j: int, k: int) -> bool:
    """Is image i a positive for prompt k of image j (KEYS above)?"""
    key = int(KEYS[j, k])
    return i == j or (key >= 0 and key in KEYS[i, 2:].tolist())


def test_multi_label_sigmoid_with_shared_nouns_by_hand():
    image, prompts = random_unit((3, 6), 2), random_unit((3, 2, 6), 3)
    scale, bias = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    expected = 0.0
    for i in range(3):
        for j in range(3):
            for k in range(2):
                z = 1.0 if positives_by_hand(i, j, k) else -1.0
                expected -= log_sigmoid(z * (7.0 * float(image[i] @ prompts[j, k]) - 2.0))
    got = multi_label_contrastive_loss(image, prompts, scale, KEYS, bias)
    assert got.item() == pytest.approx(expected / (3 * 2), rel=1e-12)


def test_multi_label_softmax_with_shared_nouns_by_hand():
    """Targets spread evenly over the positives, in both directions."""
    image, prompts = random_unit((3, 6), 4), random_unit((3, 2, 6), 5)
    scale = torch.tensor(5.0, dtype=torch.float64)
    flat = prompts.reshape(6, 6).numpy()
    img = image.numpy()
    image_term = prompt_term = 0.0
    for i in range(3):
        logits = 5.0 * flat @ img[i]
        logp = logits - math.log(np.exp(logits).sum())
        pos = [(j, k) for j in range(3) for k in range(2) if positives_by_hand(i, j, k)]
        image_term -= sum(logp[j * 2 + k] for j, k in pos) / len(pos)
    for j in range(3):
        for k in range(2):
            logits = 5.0 * img @ prompts[j, k].numpy()
            logp = logits - math.log(np.exp(logits).sum())
            pos = [i for i in range(3) if positives_by_hand(i, j, k)]
            prompt_term -= sum(logp[i] for i in pos) / len(pos)
    expected = 0.5 * (image_term / 3 + prompt_term / 6)
    assert multi_label_contrastive_loss(image, prompts, scale, KEYS).item() == pytest.approx(expected, rel=1e-12)
    # Without shared nouns in any caption the variant is the paper's loss exactly.
    own = torch.tensor([[1, 2, -2, -2, -2], [3, 4, -2, -2, -2], [5, 6, -2, -2, -2]])
    paper = multi_label_contrastive_loss(image, prompts, scale)
    assert multi_label_contrastive_loss(image, prompts, scale, own).item() == pytest.approx(paper.item(), rel=1e-12)


def tiny_model(**model_changes) -> GroupViT:
    cfg = model_config("synthvoc")
    cfg.multi_label_logit_scale = True
    for key, value in model_changes.items():
        if key == "pool":
            cfg.text.pool = value
        else:
            setattr(cfg, key, value)
    torch.manual_seed(0)
    return GroupViT(cfg)


def test_deep_noun_loss_is_the_token_level_loss_on_the_tokens_entering_grouping():
    model = tiny_model(patch_head=True)
    seen = {}
    model.visual.stages[0].grouping.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
    images = torch.randn(4, 3, 64, 64)
    texts = torch.stack([tokenize(["a dog", "a photo of a dog.", "a photo of a cat."]) for _ in range(4)])
    torch.manual_seed(1)
    itc0, ml0 = groupvit_losses(model, images, texts, "max_token")
    torch.manual_seed(1)
    seen.clear()
    itc2, ml2 = groupvit_losses(model, images, texts, "max_token", deep_noun_weight=0.5)
    assert itc2.item() == pytest.approx(itc0.item(), rel=1e-6)
    # The extra term, recomputed from the hooked tokens entering the grouping block: max over patches per prompt.
    patches = F.normalize(model.patch_projection(model.visual.norm(seen["x"])), dim=-1)  # [B, N, D]
    prompts = F.normalize(model.encode_text(texts.reshape(12, -1)), dim=-1).view(4, 3, -1)[:, 1:]
    scale = model.multi_label_logit_scale.exp().clamp(max=100)
    extra = multi_label_contrastive_loss(patches, prompts, scale)
    assert ml2.item() == pytest.approx(ml0.item() + 0.5 * extra.item(), rel=1e-5)
    ml2.backward()
    assert model.patch_projection.fc1.weight.grad.abs().sum() > 0


def test_sigmoid_losses_start_at_the_configured_bias():
    # Orthogonal image and text embeddings (cosine 0): every pair's logit is the bias b, so a batch of B pairs
    # scores -(log sigmoid(b) + (B - 1) log sigmoid(-b)) per image, and the multi-label bias starts at b too.
    for bias in (-10.0, -3.0):
        model = tiny_model(logit_bias=True, logit_bias_init=bias)
        assert model.multi_label_logit_bias.item() == bias
        image, text = torch.eye(4)[:2], torch.eye(4)[2:]
        loss = sigmoid_image_text_loss(image, text, model.logit_scale_value(), model.logit_bias)
        assert loss.item() == pytest.approx(-(log_sigmoid(bias) + log_sigmoid(-bias)), rel=1e-5)


def test_variants_need_their_model_parts():
    images, texts = torch.randn(2, 3, 64, 64), torch.stack([tokenize(["a", "a photo of a dog."])] * 2)
    with pytest.raises(ValueError, match="logit_bias"):
        groupvit_losses(tiny_model(), images, texts, loss="sigmoid")
    with pytest.raises(ValueError, match="patch_head"):
        groupvit_losses(tiny_model(), images, texts, deep_noun_weight=1.0)


def test_max_pooled_text_by_hand():
    model = tiny_model(pool="max").eval()
    captured = {}
    model.text.ln_final.register_forward_hook(lambda m, args, out: captured.update(x=out))
    ids = tokenize(["a photo of a chair.", "dog"])
    pooled = model.text(ids)
    x = captured["x"]
    for row in range(2):
        eot = int(ids[row].argmax())
        expected = torch.stack([x[row, t] for t in range(1, eot + 1)]).max(dim=0).values
        assert torch.equal(pooled[row], expected)
    eot_model = tiny_model().eval()
    assert not torch.allclose(eot_model.text(ids), pooled)


def test_export_drops_training_only_parts_and_refuses_max_pool(tmp_path):
    model = tiny_model(logit_bias=True, patch_head=True).eval()
    for layout in ("hf", "nvlabs"):
        keys = export_state_dict(model, layout)
        assert not any("patch_projection" in k or k.endswith("logit_bias") for k in keys)
    path = save_model(model, tmp_path / "ours.safetensors")
    again = load_model(path)
    assert torch.equal(again.logit_bias, model.logit_bias)
    ids, pixels = tokenize(["a photo of a dog."]), torch.randn(1, 3, 64, 64)
    for layout, name in (("hf", "hf"), ("nvlabs", "nv.pth")):  # read back without the training-only parts
        again = load_model(save_model(model, tmp_path / name, layout=layout))
        assert again.logit_bias is None and again.patch_projection is None
        assert torch.allclose(again.encode_text(ids), model.encode_text(ids), atol=1e-6)
        assert torch.allclose(again.encode_image(pixels), model.encode_image(pixels), atol=1e-5)
    with pytest.raises(ValueError, match=r"text\.pool"):
        export_state_dict(tiny_model(pool="max"), "hf")
