"""Losses against float64 computations written directly from the spec's formulas, on 1 and 2 ranks."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from groupvit.losses import image_text_contrastive_loss, multi_label_contrastive_loss


def ref_itc(image: np.ndarray, text: np.ndarray, scale: float, rows: range) -> float:
    """Spec 3.1 for the local rows `rows` of a global batch: 1/2 [CE(s I T^T) + CE(s T I^T)], positives i."""
    total = 0.0
    for i in rows:
        li = scale * text @ image[i]  # image i against all texts
        lt = scale * image @ text[i]
        total += -(li[i] - math.log(np.exp(li).sum())) - (lt[i] - math.log(np.exp(lt).sum()))
    return 0.5 * total / len(rows)


def ref_multi_label(image: np.ndarray, prompts: np.ndarray, scale: float, rows: range) -> float:
    """Spec 3.2: image -> all prompts with 1/K on its own K; each own prompt -> all images, one-hot owner."""
    N, K, _ = prompts.shape
    flat = prompts.reshape(N * K, -1)
    img_term, prompt_term = 0.0, 0.0
    for i in rows:
        logits = scale * flat @ image[i]
        logp = logits - math.log(np.exp(logits).sum())
        img_term += -sum(logp[i * K + k] / K for k in range(K))
        for k in range(K):
            pl = scale * image @ prompts[i, k]
            prompt_term += -(pl[i] - math.log(np.exp(pl).sum()))
    return 0.5 * (img_term / len(rows) + prompt_term / (len(rows) * K))


def random_batch(n: int = 8, k: int = 3, d: int = 16, pad: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    prompts = F.normalize(torch.randn(n, k, d, generator=g, dtype=torch.float64), dim=-1)
    if pad:  # captions with fewer nouns than K are padded with the caption itself
        prompts[0, 1:] = text[0]
        prompts[3, 2] = text[3]
    return image, text, prompts


@pytest.mark.parametrize("pad", [False, True])
def test_single_rank_losses_match_formulas(pad):
    image, text, prompts = random_batch(pad=pad)
    scale = torch.tensor(14.3, dtype=torch.float64)
    rows = range(image.shape[0])
    itc = image_text_contrastive_loss(image, text, scale)
    ml = multi_label_contrastive_loss(image, prompts, scale)
    assert itc.item() == pytest.approx(ref_itc(image.numpy(), text.numpy(), 14.3, rows), rel=1e-12)
    assert ml.item() == pytest.approx(ref_multi_label(image.numpy(), prompts.numpy(), 14.3, rows), rel=1e-12)


def _rank_main(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    image, text, prompts = random_batch(n=8, pad=True)
    local = slice(rank * 4, rank * 4 + 4)
    li, lt, lp = (x[local].clone().requires_grad_(True) for x in (image, text, prompts))
    scale = torch.tensor(14.3, dtype=torch.float64)
    itc = image_text_contrastive_loss(li, lt, scale)
    ml = multi_label_contrastive_loss(li, lp, scale)
    (itc + ml).backward()
    torch.save({"itc": itc.detach(), "ml": ml.detach(), "grads": [li.grad, lt.grad, lp.grad]},
               os.path.join(out_dir, f"rank{rank}.pt"))  # fmt: skip
    dist.destroy_process_group()


def test_two_ranks_match_formulas_and_single_process_gradients(tmp_path):
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    image, text, prompts = random_batch(n=8, pad=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, res in enumerate(ranks):
        rows = range(r * 4, r * 4 + 4)
        assert res["itc"].item() == pytest.approx(ref_itc(image.numpy(), text.numpy(), 14.3, rows), rel=1e-12)
        assert res["ml"].item() == pytest.approx(ref_multi_label(image.numpy(), prompts.numpy(), 14.3, rows), rel=1e-12)
    # The gathered gradients: each rank's features receive d(sum of all ranks' losses)/d(features), which is
    # 2x the gradient of one process's loss on the whole batch (whose loss is the mean of the ranks' losses).
    gi, gt, gp = (x.clone().requires_grad_(True) for x in (image, text, prompts))
    scale = torch.tensor(14.3, dtype=torch.float64)
    (image_text_contrastive_loss(gi, gt, scale) + multi_label_contrastive_loss(gi, gp, scale)).backward()
    for r, res in enumerate(ranks):
        local = slice(r * 4, r * 4 + 4)
        for got, full in zip(res["grads"], (gi.grad, gt.grad, gp.grad), strict=True):
            torch.testing.assert_close(got, 2 * full[local], rtol=1e-10, atol=1e-12)


def test_max_token_noun_loss_scores_each_prompt_by_its_best_token():
    """The variant equals the spec-3.2 formula with every image-prompt score replaced by the best token's,
    written here as explicit loops (and differs from the pooled loss)."""
    image, _, prompts = random_batch(n=5, k=2, d=8)
    g = torch.Generator().manual_seed(1)
    tokens = F.normalize(torch.randn(5, 4, 8, generator=g, dtype=torch.float64), dim=-1)  # [B, G, D]
    scale = 9.0
    N, K, _ = prompts.shape
    flat = prompts.reshape(N * K, -1).numpy()
    t = tokens.numpy()
    best = np.array([[max(t[i, g_] @ flat[p] for g_ in range(4)) for p in range(N * K)] for i in range(N)])  # [B, BK]
    img_term = prompt_term = 0.0
    for i in range(N):
        logp = scale * best[i] - math.log(np.exp(scale * best[i]).sum())
        img_term += -sum(logp[i * K + k] / K for k in range(K))
        for k in range(K):
            column = scale * best[:, i * K + k]
            prompt_term += -(column[i] - math.log(np.exp(column).sum()))
    expected = 0.5 * (img_term / N + prompt_term / (N * K))
    got = multi_label_contrastive_loss(tokens, prompts, torch.tensor(scale, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-10)
    pooled = multi_label_contrastive_loss(image, prompts, torch.tensor(scale, dtype=torch.float64))
    assert abs(got.item() - pooled.item()) > 1e-3
