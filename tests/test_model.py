"""Model behaviour that parity alone does not pin down: counts, assignment maths, training mode, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

import groupvit
from groupvit.grouping import AssignAttention, assign_tokens_to_groups


@pytest.mark.parametrize(("preset", "count"), [("gcc_redcaps", 55_726_609), ("gcc_yfcc", 55_726_610)])
def test_released_parameter_counts(preset, count):
    model = groupvit.GroupViT(groupvit.model_config(preset))
    assert sum(p.numel() for p in model.parameters()) == count
    assert sum(p.numel() for p in model.visual.parameters()) == 28_837_136
    assert sum(p.numel() for p in model.text.parameters()) == 22_145_792


def test_group_token_init():
    model = groupvit.GroupViT(groupvit.model_config("small"))
    first, second = model.visual.stages[0].group_token, model.visual.stages[1].group_token
    assert first.std() > 0.01 and torch.count_nonzero(second) == 0  # stage 1 starts from its projector
    assert model.visual.stages[2].group_token is None
    assert model.logit_scale.item() == pytest.approx(2.6592600)


def test_grouping_init_fan_in_only_touches_grouping_layers():
    from groupvit.config import GroupViTConfig, VisionConfig

    def vision(init: str) -> groupvit.GroupViT:
        torch.manual_seed(0)
        cfg = VisionConfig(image_size=32, patch_size=8, width=64, depths=[2, 1, 1], num_heads=2,
                           num_group_tokens=[8, 4, 0], num_output_groups=[8, 4], grouping_init=init)  # fmt: skip
        return groupvit.GroupViT(GroupViTConfig(vision=cfg)).visual

    reference, fan_in = vision("reference"), vision("fan_in")
    # The grouping layers, found from the module tree: each stage's grouping block and group projector.
    grouping = {id(m) for stage in fan_in.stages for part in (stage.grouping, stage.group_projector) if part is not None
                for m in part.modules() if isinstance(m, torch.nn.Linear)}  # fmt: skip
    assert len(grouping) > 10
    for name, m in fan_in.named_modules():
        if isinstance(m, torch.nn.Linear):
            expected = m.in_features**-0.5 if id(m) in grouping else 0.02  # 0.02 is the reference's std everywhere
            assert m.weight.std().item() == pytest.approx(expected, rel=0.15), name
    assert reference.stages[0].grouping.assign.proj.weight.std().item() == pytest.approx(0.02, rel=0.15)
    # Blocks draw the same numbers either way: only the grouping layers are re-drawn afterwards.
    assert torch.equal(reference.stages[0].blocks[0].mlp.fc1.weight, fan_in.stages[0].blocks[0].mlp.fc1.weight)
    with pytest.raises(ValueError, match="grouping_init"):
        VisionConfig(grouping_init="xavier")


def test_hard_assignment_is_one_hot_with_soft_gradient():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [1.0, 3.0, -1.0]]], requires_grad=True)  # [B=1, S=2, N=3]
    hard = assign_tokens_to_groups(logits, hard=True, gumbel=False)
    assert hard.tolist() == [[[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]]  # each token (column) picks one group
    weights = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])
    (hard * weights).sum().backward()
    straight_through = logits.grad.clone()
    logits.grad = None
    (logits.softmax(dim=-2) * weights).sum().backward()
    torch.testing.assert_close(straight_through, logits.grad)


def test_gumbel_noise_only_when_asked():
    torch.manual_seed(0)
    logits = torch.zeros(1, 8, 1000)
    noisy = assign_tokens_to_groups(logits, hard=True, gumbel=True)
    counts = noisy.sum(dim=-1)[0]
    assert counts.sum() == 1000 and counts.min() > 60  # zero logits + noise: roughly uniform picks
    plain = assign_tokens_to_groups(logits, hard=True, gumbel=False)
    assert plain[0, 0].sum() == 1000  # ties go to the first group without noise


def test_assignment_averages_over_count_plus_one():
    """Identity projections: each group's output is the sum of its tokens / (count + 1)."""
    attn = AssignAttention(dim=2, hard=True, gumbel=False).eval()
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.proj):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    groups = torch.tensor([[[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]]])  # [1, 3, 2]
    tokens = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])  # tokens 0, 1 -> group 0; token 2 -> group 1
    out, soft = attn(groups, tokens)
    expected = torch.tensor([[[3.0 / 3, 0.0], [0.0, 3.0 / 2], [0.0, 0.0]]])  # group 2 is empty -> 0
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(1, 3))


def test_training_mode_is_stochastic_eval_is_not():
    torch.manual_seed(0)
    model = groupvit.GroupViT(groupvit.model_config("small"))
    pixels = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), model.encode_image(pixels), rtol=0, atol=0)
    model.train()
    a, b = model.visual(pixels)[0], model.visual(pixels)[0]
    assert not torch.allclose(a, b)  # Gumbel noise in the assignment


def test_any_multiple_of_patch_size_in_eval():
    model = groupvit.GroupViT(groupvit.model_config("small")).eval()
    with torch.no_grad():
        groups = model.encode_image_groups(torch.randn(1, 3, 48, 112))
    assert groups.assignments[0].shape == (1, 16, 6 * 14)
    assert groups.assignments[1].shape == (1, 8, 16)
    assert groups.group_embeds.shape == (1, 8, 128)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 65, 64), "not a positive multiple of the patch size 8"),
        ((1, 3, 4, 64), "not a positive multiple"),
        ((3, 64, 64), r"\[B, 3, H, W\]"),
        ((1, 1, 64, 64), r"\[B, 3, H, W\]"),
    ],
)
def test_bad_image_shapes(shape, message):
    model = groupvit.GroupViT(groupvit.model_config("small")).eval()
    with pytest.raises(ValueError, match=message):
        model.encode_image(torch.zeros(shape))


def test_bad_token_ids():
    model = groupvit.GroupViT(groupvit.model_config("small")).eval()
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match="tokenize"):
        model.encode_text(torch.zeros(77, dtype=torch.long))


def test_config_yaml_round_trip(tmp_path):
    cfg = groupvit.model_config("gcc_yfcc")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"model": cfg.to_dict()}))
    assert groupvit.model_config(tmp_path / "m.yaml") == cfg
    with pytest.raises(ValueError, match="unknown model preset"):
        groupvit.model_config("vit_b16")
    with pytest.raises(ValueError, match=r"unknown keys.*'heads_typo'"):
        groupvit.GroupViTConfig.from_dict({"text": {"heads_typo": 3}})


def test_info_cli():
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "info", "--preset", "gcc_yfcc"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "parameters: 55,726,610" in run.stdout
    assert "196 tokens into 64 groups -> 64 tokens into 8 groups" in run.stdout


def test_info_names_weights_and_presets_are_asked_for_as_presets(capsys):
    """`info synthvoc` is the shipped model, as `--checkpoint synthvoc` is; the untrained preset is `--preset`."""
    from groupvit.cli import main

    def parameters(model: groupvit.GroupViT) -> str:
        return f"parameters: {sum(p.numel() for p in model.parameters()):,}"

    shipped = groupvit.load_model("synthvoc")
    assert main(["info", "synthvoc"]) == 0
    out = capsys.readouterr().out
    assert parameters(shipped) in out and "test settings (recorded with the model)" in out
    assert f"about: {shipped.test_settings.about}" in out
    assert main(["info", "--preset", "synthvoc"]) == 0
    out = capsys.readouterr().out
    preset = parameters(groupvit.GroupViT(groupvit.model_config("synthvoc")))
    assert preset in out and preset != parameters(shipped)
    assert "the protocol's for its size" in out and "about:" not in out
    assert main(["info", "small"]) == 2  # a preset without weights: pointed to --preset
    assert "`groupvit info --preset small`" in capsys.readouterr().err


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = groupvit.model_config("small")
    cfg.vision.gumbel = False  # no noise, so both passes assign identically
    model = groupvit.GroupViT(cfg).train()
    pixels, ids = torch.randn(4, 3, 64, 64), groupvit.tokenize(["a cat", "a dog", "a car", "a tree"])

    def grads():
        model.zero_grad()
        image, text, scale = model(pixels, ids)
        (scale * image @ text.t()).logsumexp(-1).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b)
