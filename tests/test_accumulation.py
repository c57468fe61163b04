"""Gradient-cached accumulation: a step's update is that of the whole global batch however it is split into
micro-batches and processes, noise included (groupvit.sample_noise)."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess

import pytest
import torch
import yaml
from torch.utils.checkpoint import checkpoint

from groupvit.config import GroupViTConfig
from groupvit.layers import Block, DropPath
from groupvit.losses import groupvit_losses
from groupvit.model import GroupViT
from groupvit.sample_noise import (
    assign_noise_keys,
    checkpoint_contexts,
    row_seeds,
    sample_seeds,
    uniform,
    unit_interval,
)
from groupvit.tokenizer import tokenize
from groupvit.training.config import TrainConfig
from groupvit.training.loop import train, train_step
from tests.conftest import torchrun_two_processes
from tests.test_training import TINY_MODEL, dataset  # noqa: F401  (the CSV of coloured squares)

NOISY_MODEL = copy.deepcopy(TINY_MODEL)
NOISY_MODEL["model"]["vision"].update(gumbel=True, drop_path_rate=0.3)  # noise on, drop path in every block


def test_noise_is_a_function_of_the_row_seed_and_has_the_right_law():
    seeds = row_seeds(0, 3, torch.arange(4096))
    with sample_seeds(seeds):
        u = uniform(7, 4096, (2, 3), torch.device("cpu"))  # [4096, 2, 3]
        other = uniform(8, 4096, (2, 3), torch.device("cpu"))
    with sample_seeds(seeds[1000:1004]):  # the same rows in a batch of their own
        assert torch.equal(uniform(7, 4, (2, 3), torch.device("cpu")), u[1000:1004])
    assert 0 < u.min() and u.max() < 1
    assert not torch.equal(u, other)  # another module's key, another stream
    # Uniform on (0, 1): mean 1/2, variance 1/12; as Gumbel(0, 1): mean Euler's gamma, variance pi^2 / 6.
    assert u.mean().item() == pytest.approx(0.5, abs=0.01) and u.var().item() == pytest.approx(1 / 12, rel=0.03)
    gumbel = -torch.log(-torch.log(u.double()))
    assert gumbel.mean().item() == pytest.approx(0.5772, abs=0.03)
    assert gumbel.var().item() == pytest.approx(math.pi**2 / 6, rel=0.05)
    assert abs(torch.corrcoef(torch.stack([u[:, 0, 0], u[:, 0, 1]]))[0, 1].item()) < 0.05  # neighbours independent
    with pytest.raises(ValueError, match="4 seeds for a batch of 5"), sample_seeds(seeds[:4]):
        uniform(7, 5, (), torch.device("cpu"))


def test_drop_path_outside_the_context_draws_from_torch_as_before():
    drop = DropPath(0.5).train()
    x = torch.ones(64, 3)
    torch.manual_seed(1)
    expected = torch.empty(64, 1).bernoulli_(0.5) / 0.5
    torch.manual_seed(1)
    assert torch.equal(drop(x), x * expected)
    with pytest.raises(RuntimeError, match="assign_noise_keys"), sample_seeds(torch.arange(64)):
        drop(x)  # a module without a key must not silently share a stream


def test_training_noise_inside_the_context_follows_the_seeds():
    """Inside sample_seeds the encoder's Gumbel noise and drop path are on, the same for the same seeds, other for
    other seeds, and a row's output does not depend on the rows beside it."""
    model = noisy_model()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seeds = row_seeds(0, 1, torch.arange(4))
    with sample_seeds(seeds):
        a = model.visual(images)[0]
        b = model.visual(images)[0]
    with sample_seeds(row_seeds(0, 2, torch.arange(4))):
        other = model.visual(images)[0]
    with sample_seeds(seeds[2:]):
        half = model.visual(images[2:])[0]
    assert torch.equal(a, b) and not torch.allclose(a, other)
    torch.testing.assert_close(half, a[2:], rtol=1e-5, atol=1e-6)
    drop = model.visual.stages[2].blocks[0].drop_path2  # the last block's rate, 0.3 (rates rise from 0)
    with sample_seeds(row_seeds(0, 0, torch.arange(4000))):
        kept = (drop(torch.ones(4000, 1)) > 0).float().mean().item()
    assert kept == pytest.approx(1 - drop.p, abs=0.03)


def test_gradient_checkpointing_recomputes_the_same_drop_path_masks():
    block = Block(16, 2, drop_path=0.5).train()
    assign_noise_keys(block)
    x = torch.randn(8, 5, 16, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointed in (False, True):
        block.zero_grad()
        with sample_seeds(torch.arange(8)):
            if checkpointed:
                out = checkpoint(block, x, use_reentrant=False, context_fn=checkpoint_contexts)
            else:
                out = block(x)
        out.square().sum().backward()  # outside the context: the recomputation must restore the seeds itself
        grads.append([p.grad.clone() for p in block.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def noisy_model() -> GroupViT:
    """The tiny model of the training tests with Gumbel noise, drop path, the patch head and the multi-label
    temperature."""
    cfg = GroupViTConfig.from_dict({**NOISY_MODEL["model"], "multi_label_logit_scale": True, "patch_head": True})
    torch.manual_seed(0)
    return GroupViT(cfg).train()


def noisy_batch(n: int = 8):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(n, 3, 32, 32, generator=g)
    words = ["dog", "cat", "car", "bird", "chair", "sky", "grass", "boat"]
    texts = torch.stack([tokenize([f"a {words[i]} and a {words[i - 1]} outside", f"a photo of a {words[i]}.",
                                   f"a photo of a {words[i - 1]}."]) for i in range(n)])  # fmt: skip
    keys = torch.tensor([[i, (i - 1) % n, i, (i - 1) % n] for i in range(n)])  # K = 2 prompts, M = 2 caption nouns
    return images, texts, keys, row_seeds(0, 5, torch.arange(n))


@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_cached_gradients_equal_autograd_on_the_whole_batch(grad_checkpointing):
    """Every parameter's gradient, every loss and every BatchNorm statistic of train_step over 2 micro-batches of 4
    equals autograd on the 8 rows at once, with every term of the loss on: image-text, multi-label on the best token
    with shared-noun positives, the deep noun loss on patch tokens, the mosaic loss."""
    cfg = TrainConfig(noun_loss="max_token", noun_positives="shared", deep_noun_loss=0.5, mosaic_loss=0.5)
    whole = noisy_model().double()  # float64: float32 rounding would hide in gradients that nearly cancel
    split = copy.deepcopy(whole)
    split.set_grad_checkpointing(grad_checkpointing)
    images, texts, keys, seeds = noisy_batch()
    images = images.double()
    itc, ml = groupvit_losses(whole, images, texts, "max_token", keys, "softmax", 0.5, 0.5, seeds)
    (itc + ml).backward()
    halves = [(images[s], texts[s], keys[s], seeds[s]) for s in (slice(0, 4), slice(4, 8))]
    itc_split, ml_split = train_step(split, halves, cfg, deep_noun_weight=0.5)
    assert itc_split.item() == pytest.approx(itc.item(), rel=1e-12)
    assert ml_split.item() == pytest.approx(ml.item(), rel=1e-12)
    expected, got = dict(whole.named_parameters()), dict(split.named_parameters())
    for name, p in expected.items():
        assert (p.grad is None) == (got[name].grad is None), name
        if p.grad is not None:
            # atol: gradients that are zero in exact arithmetic (a bias before a LayerNorm) come out near 1e-12
            torch.testing.assert_close(got[name].grad, p.grad, rtol=1e-9, atol=1e-10, msg=name)
    assert expected["visual.stages.0.grouping.assign.q_proj.weight"].grad.abs().sum() > 0  # through the Gumbel step
    for name, buffer in whole.named_buffers():
        torch.testing.assert_close(dict(split.named_buffers())[name], buffer, rtol=1e-9, atol=1e-10, msg=name)


def overrides(data, out_yaml, *extra: str) -> list[str]:
    """One step on the CSV of coloured squares with noise, multi-label and shared-noun losses on. Adam's first update
    is about lr * sign(gradient), so float noise in a near-zero gradient would flip it: eps=1 makes the update about
    lr * gradient, so that comparing weights compares gradients (and a wrong split is far outside 1e-5)."""
    return [f"data={data / 'pairs.csv'}", f"model={out_yaml}", "image_size=32", "augment=light", "workers=0",
            "multi_label=2", "tagger=pattern", "noun_positives=shared", "steps=1", "warmup_steps=0", "lr=0.05",
            "eps=1.0", "reference_batch=8", "save_every=1", *extra]  # fmt: skip


def weights(out) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def noisy_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "noisy.yaml"
    path.write_text(yaml.safe_dump(NOISY_MODEL))
    return path


@pytest.fixture(scope="module")
def one_batch_of_8(dataset, noisy_yaml, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("whole")
    train(TrainConfig.from_dict({}, overrides(dataset, noisy_yaml, "batch_size=8")), out)
    return weights(out)


def test_one_step_is_the_same_however_the_batch_is_split(dataset, noisy_yaml, one_batch_of_8, tmp_path):  # noqa: F811
    """The whole state dict (weights, BatchNorm statistics and counts) after one step of 8 pairs equals that of
    4 x 2 and 2 x 4 micro-batches, the latter with gradient checkpointing (its recomputation redraws the noise)."""
    cfg = TrainConfig.from_dict({}, overrides(dataset, noisy_yaml))
    torch.manual_seed(cfg.seed)  # as start_run draws rank 0's model: the run's starting weights
    start = GroupViT(cfg.model_config()).state_dict()
    assert max_difference(one_batch_of_8, start) > 1e-3  # the step moved the weights
    for batch, accum, extra in (("4", "2", []), ("2", "4", ["grad_checkpointing=true"])):
        out = tmp_path / f"{batch}x{accum}"
        train(TrainConfig.from_dict({}, overrides(dataset, noisy_yaml, f"batch_size={batch}", f"accum_steps={accum}",
                                                  *extra)), out)  # fmt: skip
        assert max_difference(weights(out), one_batch_of_8) <= 1e-5, f"batch_size={batch} accum_steps={accum}"


@pytest.mark.slow
def test_two_gloo_processes_with_accumulation_equal_one_batch(dataset, noisy_yaml, one_batch_of_8, tmp_path):  # noqa: F811
    torchrun, env = torchrun_two_processes()
    cmd = ["-m", "groupvit", "train", "--out", str(tmp_path), *overrides(dataset, noisy_yaml, "batch_size=2",
                                                                         "accum_steps=2")]  # fmt: skip
    run = subprocess.run(torchrun + cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert max_difference(weights(tmp_path), one_batch_of_8) <= 1e-5


def test_resume_with_accumulation_equals_the_uninterrupted_run(dataset, noisy_yaml, tmp_path):  # noqa: F811
    """Four steps of 2 x 2 micro-batches; the run resumed from its own step-2 checkpoint ends on the same weights."""
    cfg = TrainConfig.from_dict({}, overrides(dataset, noisy_yaml, "batch_size=2", "accum_steps=2", "steps=4",
                                              "save_every=2", "warmup_steps=1"))  # fmt: skip
    train(cfg, tmp_path / "full")
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint.prev.pt", tmp_path / "resumed" / "checkpoint.pt")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert train(cfg, tmp_path / "resumed", resume=True)["steps"] == 4
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "resumed")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_time_budget_with_accumulation_stops_after_it_and_saves(dataset, noisy_yaml, tmp_path):  # noqa: F811
    cfg = TrainConfig.from_dict({}, overrides(dataset, noisy_yaml, "batch_size=2", "accum_steps=4", "steps=1000",
                                              "minutes=0.004", "save_every=1000"))  # fmt: skip
    summary = train(cfg, tmp_path)
    assert 1 <= summary["steps"] < 1000 and summary["minutes"] >= 0.004
    assert summary["images_seen"] == 8 * summary["steps"]  # 4 micro-batches of 2 per step
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == summary["steps"]  # saved at the end


def test_uniforms_stay_strictly_inside_the_unit_interval_at_both_ends():
    """The smallest and largest hashes give uniforms inside (0, 1) in float32, so Gumbel noise is finite: from 24 bits
    the largest rounded to 1.0 and a fine-tuning run stopped on a NaN loss at step 866."""
    bits = torch.tensor([0, 1, 2**31, 2**32 - 2, 2**32 - 1])
    u = unit_interval(bits)
    assert u.dtype == torch.float32 and bool((u > 0).all()) and bool((u < 1).all())
    assert u[-1].item() == 1 - 2**-24 and u[0].item() == 2**-24
    assert bool(torch.isfinite(-torch.log(-torch.log(u))).all())
