"""The training loop (spec section 4), top to bottom: setup, data, optimiser, steps, checkpoints.

Run one process per device with torchrun; gloo on CPU, nccl on GPU. Each step's gradients are those of the whole
global batch (batch_size x processes x accum_steps, `train_step`), averaged over ranks by one all-reduce.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..checkpoint import save_model
from ..distributed import setup_distributed as setup_distributed  # its old home
from ..io import atomic_write
from ..losses import EncoderFeatures, concat_features, encode_features, losses_from_features
from ..model import GroupViT
from ..sample_noise import row_seeds
from .config import TrainConfig
from .data import (
    CaptionTable,
    CaptionTexts,
    MemoryPairs,
    batch_positions,
    check_training_data,
    collate,
    shard_loader,
    step_batches,
)
from .finetune import (
    differences,
    freeze,
    model_from_checkpoint,
    model_from_init,
    parameter_groups,
    pretrained_names,
    set_learning_rate,
)
from .sync_batchnorm import synchronise_batchnorm

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the one before, kept to fall back on if the newest is damaged
RUN_FILES = (CHECKPOINT, PREVIOUS_CHECKPOINT, "model.safetensors", "train_config.json")  # what a run writes


def learning_rate(step: float, cfg: TrainConfig, scale: float) -> float:
    """Linear warmup from warmup_lr, then cosine to min_lr over the whole run (timm's per-step scheduler:
    the cosine spans all steps and warmup overrides its start). All rates scaled by global batch / reference batch.
    With a time budget `step` is fractional: the elapsed share of the budget times cfg.steps."""
    lr, warmup_lr, min_lr = cfg.lr * scale, cfg.warmup_lr * scale, cfg.min_lr * scale
    if step < cfg.warmup_steps:
        return warmup_lr + step * (lr - warmup_lr) / cfg.warmup_steps
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / cfg.steps))


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate((3, tuple(states["python"]), states["python_pos"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_checkpoint(path: Path, model: GroupViT, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    world: int, train_seconds: float = 0.0) -> None:  # fmt: skip
    """Everything needed to continue exactly: weights, optimiser, step, config, every rank's RNG state."""
    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, rng_states())
    else:
        states = [rng_states()]
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "train_seconds": train_seconds,
        "train_config": cfg.to_dict(),
        "model_config": model.config.to_dict(),
        "rng": states,
        # a fine-tuning run's test settings (with its `init`) and the optimiser groups of the loaded weights
        "test_settings": model.test_settings.to_dict(),
        "pretrained_parameters": pretrained_names(model, optimizer),
    }
    keep_previous(path)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def keep_previous(path: Path) -> None:
    """Keep the checkpoint at `path` as checkpoint.prev.pt, through a hard link (a copy where the file system has
    none) renamed into place, so that there is never a moment without `path`."""
    if not path.is_file():
        return
    tmp = path.with_name(f".{PREVIOUS_CHECKPOINT}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, path.with_name(PREVIOUS_CHECKPOINT))


def read_training_state(out: Path, device: torch.device, verbose: bool = True) -> tuple[dict, Path] | None:
    """The newest readable training checkpoint in `out` and its path: checkpoint.pt, or checkpoint.prev.pt (saying
    so) when that one is missing or damaged; None when there is neither; ValueError when all there are damaged."""
    damaged = []
    for path in (out / CHECKPOINT, out / PREVIOUS_CHECKPOINT):
        if not path.is_file():
            continue
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(state, dict) or not {"model", "optimizer", "step", "rng"} <= state.keys():
                raise ValueError("not a checkpoint of groupvit train")
        except Exception as e:  # truncated, damaged, or another kind of file
            damaged.append(f"{path} is unreadable ({(str(e).splitlines() or [type(e).__name__])[0]})")
            continue
        if verbose and path.name != CHECKPOINT:
            why = damaged[0] if damaged else f"{out / CHECKPOINT} is missing"
            print(f"groupvit train: {why}; resuming from {path} (step {state['step']}) instead", flush=True)
        return state, path
    if damaged:
        raise ValueError(f"cannot resume: {'; '.join(damaged)}; start again with --overwrite or use another --out")
    return None


def restore_training_state(state: dict, path: Path, model: GroupViT, optimizer: torch.optim.Optimizer) -> None:
    """Load a training checkpoint's weights and optimiser state; one line naming the difference when it was
    written for another model."""
    saved = state.get("model_config")
    changed = differences(saved, model.config.to_dict(), "in the checkpoint", "now") if isinstance(saved, dict) else []
    if changed:
        settings = path.parent / "train_config.json"
        raise ValueError(f"{path} holds a model with another config ({'; '.join(changed[:3])}); resume with the "
                         f"run's own settings (see {settings}) or use another --out")  # fmt: skip
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path} does not fit this model and optimiser ({reason}); use another --out") from None


def build_loader(cfg: TrainConfig, rank: int, world: int, start_step: int):
    from ..data.augment import tensor_transform, train_transform

    texts = CaptionTexts(cfg.multi_label, cfg.tagger, cfg.noun_stopwords, cfg.noun_templates)
    if cfg.in_memory or cfg.data.lower().endswith((".csv", ".tsv")):
        if cfg.in_memory:  # augmented in this process: no loader process competes with the step for the cores
            transform = tensor_transform(cfg.image_size, cfg.augment, cfg.crop_scale)
            table, workers = MemoryPairs(cfg.data, transform, texts, cfg.seed), 0
        else:
            transform = train_transform(cfg.image_size, cfg.augment, cfg.crop_scale)
            table, workers = CaptionTable(cfg.data, transform, texts, cfg.seed), cfg.workers
        # A time budget runs an unknown number of steps: positions then go on for ever instead of repeating.
        steps = None if cfg.minutes else cfg.steps
        batches = step_batches(start_step, steps, cfg.batch_size, cfg.accum_steps, rank, world)
        return torch.utils.data.DataLoader(table, batch_sampler=batches, collate_fn=collate, num_workers=workers)
    transform = train_transform(cfg.image_size, cfg.augment, cfg.crop_scale)
    # Streams are reseeded from the step, so a resumed run does not replay the samples it has seen.
    seed = cfg.seed + 1000 * rank + 7 * start_step
    return shard_loader(
        cfg.data, transform, texts, cfg.batch_size, cfg.workers, seed, cfg.shuffle_buffer, resampled=cfg.resampled
    )


def forever(loader):
    """Start a new pass over the data whenever one ends (epoch-based shards)."""
    while True:
        yield from loader


def evaluate(model: GroupViT, cfg: TrainConfig) -> dict:
    """The zero-shot segmentation hook: mIoU and recognition on `eval_root`, images split across ranks."""
    from ..evaluation.datasets import load_dataset
    from ..evaluation.metrics import prompt_similarity
    from ..evaluation.run import DATASET_DEFAULT, evaluate_segmentation
    from ..segmentation import class_text_embeddings

    dataset = load_dataset(cfg.eval_dataset, cfg.eval_root, cfg.eval_split)
    threshold = DATASET_DEFAULT if cfg.eval_threshold < 0 else cfg.eval_threshold
    model.eval()
    # Recognition comes from the segmentation pass (the whole image at eval_short_side).
    result = evaluate_segmentation(model, dataset, cfg.eval_mode, threshold, limit=cfg.eval_images or None,
                                   progress=False, short_side=cfg.eval_short_side, recognition=True)  # fmt: skip
    with torch.no_grad():
        classes = class_text_embeddings(model, dataset.class_names)  # [C, D]
    result["prompt_similarity"] = prompt_similarity(classes, dataset.class_names)
    model.train()
    return result


MicroBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # images, texts, noun keys, row seeds


def train_step(
    model: GroupViT,
    micro_batches: list[MicroBatch],
    cfg: TrainConfig,
    deep_noun_weight: float = 0.0,
    autocast: AbstractContextManager | None = None,
    check_loss: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Leave in the parameters' .grad the gradients of the losses of the whole batch of a step: this rank's
    micro-batches (each as `MicroBatch`, noise drawn per row from its seed) and every other rank's, averaged over
    ranks as one process with the whole batch would have them. Returns this rank's (image-text, multi-label) loss.

    With several micro-batches this is gradient caching (Gao et al., 2021, GradCache), so that the losses' negatives
    and the heads' BatchNorm see the whole batch while the encoders hold the activations of one micro-batch at a
    time: pass 1 runs the encoders over each micro-batch without autograd and keeps their features (before the
    heads); the heads and losses run once on all of them with autograd, which gives the heads' gradients and the
    features'; pass 2 runs each micro-batch's encoders again with autograd and back-propagates its features'
    gradients. The cost is the second forward pass of the encoders. One micro-batch: one pass, no cache.
    `check_loss` sees the loss before any backward (the non-finite stop).
    """
    autocast = autocast or nullcontext()
    patches, mosaics = bool(deep_noun_weight), cfg.mosaic_loss > 0

    def encode(batch: MicroBatch) -> EncoderFeatures:
        images, texts, _, seeds = batch
        with autocast:
            return encode_features(model, images, texts, patches, mosaics, seeds)

    if len(micro_batches) == 1:
        features = encode(micro_batches[0])
    else:
        with torch.no_grad():
            parts = [encode(batch) for batch in micro_batches]
        rows = [[0 if t is None else t.shape[0] for t in part] for part in parts]  # each feature's rows per batch
        cached, parts = concat_features(parts), None  # the cache holds one copy
        features = EncoderFeatures(*(t.requires_grad_() if t is not None and t.is_floating_point() else t
                                     for t in cached))  # fmt: skip
    keys = torch.cat([batch[2] for batch in micro_batches]) if cfg.noun_positives == "shared" else None
    with autocast:
        itc, ml = losses_from_features(model, features, cfg.noun_loss, keys, cfg.loss, deep_noun_weight,
                                       cfg.mosaic_loss)  # fmt: skip
    loss = itc + (ml if ml is not None else 0.0)
    if check_loss is not None:
        check_loss(loss.detach())
    loss.backward()
    if len(micro_batches) > 1:
        # Each cached feature's gradient, cut back into its micro-batches' rows.
        grads = [None if t is None or t.grad is None else t.grad.split([r[i] for r in rows])
                 for i, t in enumerate(features)]  # fmt: skip
        for j, batch in enumerate(micro_batches):
            again = encode(batch)
            pairs = [
                (f, g[j].to(f.dtype)) for f, g in zip(again, grads, strict=True) if g is not None and f.requires_grad
            ]
            torch.autograd.backward([f for f, _ in pairs], [g for _, g in pairs])
    average_gradients(model)
    return itc.detach(), None if ml is None else ml.detach()


def stop_if_not_finite(loss: torch.Tensor, step: int, checkpoint: Path) -> None:
    """Raise FloatingPointError on every rank together when any rank's loss is not finite."""
    finite = torch.isfinite(loss).float()
    if dist.is_initialized() and dist.get_world_size() > 1:  # every rank stops instead of waiting on one that stopped
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        saved = checkpoint.is_file()
        if not saved and (not dist.is_initialized() or dist.get_rank() == 0):
            # nothing trained: leave no settings of a run that does not exist
            (checkpoint.parent / "train_config.json").unlink(missing_ok=True)
        kept = (f"The last good checkpoint ({checkpoint}) is kept; resume from it with --resume, perhaps with a "
                "lower lr" if saved else "No checkpoint was written; start again with a lower lr")  # fmt: skip
        raise FloatingPointError(f"non-finite loss at step {step} (this rank: {loss.item()}); stopped. {kept}")


def average_gradients(model: nn.Module) -> None:
    """Every rank's gradients replaced by their mean over ranks, in one all-reduce (what DistributedDataParallel did:
    the heads' backward runs outside any DDP forward here). Ranks run the same code, so the same parameters have
    gradients on each."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(mean.view_as(g))


def build_model(cfg: TrainConfig, state: dict | None, verbose: bool = True) -> tuple[GroupViT, set[str] | None]:
    """The model a run starts with and, for a fine-tuning run, the names of the parameters loaded from `init`
    (None otherwise): from random weights, from `cfg.init`, or, resuming a fine-tuning run (`state`, its
    checkpoint), the architecture and test settings its checkpoint records."""
    if state is not None and (cfg.init or state.get("train_config", {}).get("init")):
        if cfg.init and verbose:
            print(f"groupvit train: resuming a fine-tuning run from its checkpoint; init ({cfg.init}) is ignored",
                  flush=True)  # fmt: skip
        return model_from_checkpoint(state), set(state.get("pretrained_parameters", []))
    if cfg.init:
        return model_from_init(cfg, verbose)
    model = GroupViT(cfg.model_config())
    # Run later at the size the hook evaluates it at (groupvit.settings; the protocol's 448 for 224-pixel models).
    model.test_settings = dataclasses.replace(model.test_settings, short_side=cfg.eval_short_side)
    return model, None


@dataclasses.dataclass
class Run:
    """A training run as `start_run` sets it up: where it is (step, training seconds) and what it steps with."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    model: GroupViT
    optimizer: torch.optim.Optimizer
    step: int
    train_seconds: float
    lr_scale: float  # global batch / reference batch
    autocast: AbstractContextManager
    writer: object | None  # TensorBoard's SummaryWriter, on rank 0 only

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_run(cfg: TrainConfig, out: Path, resume: bool) -> Run:
    """Check the config and data, set up the processes, the model (fresh, from `init`, or resumed), the optimiser,
    the run folder and TensorBoard."""
    if not cfg.data:
        raise ValueError("no training data: set data to webdataset shards (a/{000..009}.tar) or a CSV/TSV file")
    if cfg.eval_every and not cfg.eval_root:
        raise ValueError("eval_every is set but eval_root is empty: point it at e.g. VOCdevkit/VOC2012")
    check_training_data(cfg.data)
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    found = read_training_state(out, device, verbose=rank == 0) if resume else None
    model, pretrained = build_model(cfg, found[0] if found else None, verbose=rank == 0)
    model = model.to(device)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if world > 1:  # before the optimiser is built: the conversion makes new BatchNorm parameters
        model = synchronise_batchnorm(model, device)
        for tensor in model.state_dict().values():  # every rank starts from rank 0's weights
            dist.broadcast(tensor, 0)
    freeze(model, cfg.freeze)
    # The fused kernel (CUDA; CPU from torch 2.4) does one pass per parameter instead of about six: 3x faster on CPU.
    fused = device.type == "cuda" or tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    groups = parameter_groups(model, cfg.weight_decay, pretrained, cfg.pretrained_lr_scale)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    start_step, train_seconds = 0, 0.0
    if found:
        state, path = found
        restore_training_state(state, path, model, optimizer)
        start_step, train_seconds = state["step"], state.get("train_seconds", 0.0)
        set_rng_states(state["rng"][rank if rank < len(state["rng"]) else 0])
    elif resume and rank == 0:
        print(f"groupvit train: no {out / CHECKPOINT} to resume from; starting from step 0", flush=True)
    elif rank == 0:  # a new run: checkpoints of an earlier one in `out` must not become its fallback
        for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
            (out / name).unlink(missing_ok=True)
    global_batch = cfg.batch_size * world * cfg.accum_steps
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "train_config.json", lambda tmp: Path(tmp).write_text(json.dumps(cfg.to_dict(), indent=2)))
        writer = SummaryWriter(out / "tensorboard")
    return Run(cfg, out, rank, world, device, model, optimizer, start_step, train_seconds,
               global_batch / cfg.reference_batch, autocast, writer)  # fmt: skip


def next_micro_batches(run: Run, batches, skipped_by_worker: dict[int, int]) -> list[MicroBatch]:
    """This rank's micro-batches of the step, on the device, each row with its noise seed; the loader's counts of
    broken samples it skipped go into `skipped_by_worker`."""
    cfg, micro_batches = run.cfg, []
    for micro in range(cfg.accum_steps):
        images, texts, keys, skipped = next(batches)
        if isinstance(skipped, dict):  # webdataset workers report their running counts
            skipped_by_worker[skipped.pop("worker")] = sum(skipped.values())
        else:
            skipped_by_worker[0] = skipped_by_worker.get(0, 0) + skipped
        # Noise per sample from its position in the step's global batch: the same however the batch is split.
        positions = torch.tensor(batch_positions(run.step, micro, cfg.batch_size, cfg.accum_steps, run.rank, run.world))
        seeds = row_seeds(cfg.seed, run.step, positions[: images.shape[0]]).to(run.device)
        images, texts, keys = (t.to(run.device, non_blocking=True) for t in (images, texts, keys))
        micro_batches.append((images, texts, keys, seeds))
    return micro_batches


def optimizer_step(
    run: Run, micro_batches: list[MicroBatch], deep_noun_weight: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One step: the whole batch's gradients (`train_step`, stopping every rank on a non-finite loss), clipped,
    applied. Returns the (image-text, multi-label) losses and the gradient norm before clipping."""
    stop = functools.partial(stop_if_not_finite, step=run.step, checkpoint=run.out / CHECKPOINT)
    itc, ml = train_step(run.model, micro_batches, run.cfg, deep_noun_weight, run.autocast, stop)
    grad_norm = nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.clip_grad)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return itc, ml, grad_norm


def log_step(run: Run, itc: torch.Tensor, ml: torch.Tensor | None, lr: float, grad_norm: torch.Tensor, rate: float,
             skipped: int) -> str:  # fmt: skip
    """The step's losses and rates to TensorBoard; returns them for the progress bar."""
    loss = itc + (ml if ml is not None else 0.0)
    scalars = {
        "loss/total": loss.item(),
        "loss/image_text": itc.item(),
        "lr": lr,
        "grad_norm": grad_norm.item(),
        "logit_scale": run.model.logit_scale_value().item(),
        "images_per_second": rate,
        "skipped_samples": skipped,
    }
    if ml is not None:
        scalars["loss/multi_label"] = ml.item()
        scalars["multi_label_logit_scale"] = run.model.multi_label_logit_scale.exp().clamp(max=100).item()
    for key, value in scalars.items():
        run.writer.add_scalar(key, value, run.step)
    return f", loss {loss.item():.3f}, lr {lr:.2e}"


def eval_hook(run: Run, seen: int) -> dict:
    """`evaluate` at this step, logged to TensorBoard and the console by rank 0; returns the curve's point."""
    result = evaluate(run.model, run.cfg)
    recognition = result["recognition"]["pooled"]  # None when no eval image holds an object class
    similar = result["prompt_similarity"]
    done, minutes = run.step, run.train_seconds / 60
    if run.main:
        run.writer.add_scalar("eval/miou", result["miou"], done)
        run.writer.add_scalar("eval/groups_in_use", result["groups_in_use"], done)
        run.writer.add_scalar("eval/prompt_cosine_mean", similar["mean"], done)
        run.writer.add_scalar("eval/prompt_cosine_max", similar["max"], done)
        if recognition is not None:
            run.writer.add_scalar("eval/recognition", recognition, done)
        named = "n/a (no object class)" if recognition is None else f"{recognition:.1f} %"
        tqdm.write(f"step {done} ({minutes:.1f} min): {run.cfg.eval_dataset} mIoU {result['miou']:.2f}, groups in "
                   f"use {result['groups_in_use']:.2f}, recognition {named}")  # fmt: skip
    return {"step": done, "minutes": minutes, "images_seen": seen, "miou": result["miou"],
            "groups_in_use": result["groups_in_use"], "recognition": recognition,
            "prompt_cosine_mean": similar["mean"], "prompt_cosine_max": similar["max"]}  # fmt: skip


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Train GroupViT as `cfg` says, writing checkpoints, TensorBoard logs and the final weights to `out`."""
    run = start_run(cfg, Path(out), resume)
    batches = forever(build_loader(cfg, run.rank, run.world, run.step))
    skipped_by_worker: dict[int, int] = {}
    budget = cfg.minutes * 60
    # Under a time budget the bar fills with training seconds (evaluation pauses the clock), and its line says the
    # steps, images/s and training time left; under a step budget it counts steps.
    bar = tqdm(total=round(budget) if budget else cfg.steps, initial=min(round(run.train_seconds), round(budget))
               if budget else run.step, disable=not run.main, dynamic_ncols=True, desc="train", unit="step",
               bar_format="train {percentage:3.0f}%|{bar}| {desc}" if budget else None)  # fmt: skip
    logged = ""
    run.model.train()
    seen, history = 0, []
    while (run.train_seconds < budget) if budget else (run.step < cfg.steps):
        tic = time.perf_counter()
        progress = run.train_seconds / budget if budget else run.step / cfg.steps  # share of the run done
        lr = learning_rate(cfg.steps * progress, cfg, run.lr_scale)
        deep_weight = cfg.deep_noun_loss * ((1 - progress) if cfg.deep_noun_decay else 1.0)
        set_learning_rate(run.optimizer, lr)
        micro_batches = next_micro_batches(run, batches, skipped_by_worker)
        seen += sum(batch[0].shape[0] for batch in micro_batches) * run.world
        itc, ml, grad_norm = optimizer_step(run, micro_batches, deep_weight)
        elapsed = time.perf_counter() - tic
        if run.world > 1 and budget:  # every rank must agree on when the budget is spent
            elapsed_t = torch.tensor(elapsed, dtype=torch.float64)
            dist.all_reduce(elapsed_t, op=dist.ReduceOp.MAX)
            elapsed = elapsed_t.item()
        run.train_seconds += elapsed
        run.step = done = run.step + 1
        remaining = int(budget - run.train_seconds)
        left = f", {remaining // 60}:{remaining % 60:02d} left" if budget else ""
        counted = f"step {done}, " if budget else ""  # a step budget's bar counts the steps itself
        status = f"{counted}{seen / max(run.train_seconds, 1e-9):.0f} img/s{left}{logged}"
        (bar.set_description_str if budget else bar.set_postfix_str)(status, refresh=False)
        bar.update(min(round(run.train_seconds), bar.total) - bar.n if budget else 1)
        last = (run.train_seconds >= budget) if budget else (done == cfg.steps)
        if run.main and (done % cfg.log_every == 0 or last):
            rate = seen / max(run.train_seconds, 1e-9)
            logged = log_step(run, itc, ml, lr, grad_norm, rate, sum(skipped_by_worker.values()))
        if cfg.eval_every and (done % cfg.eval_every == 0 or last):
            history.append(eval_hook(run, seen))
        if done % cfg.save_every == 0 or last:
            save_checkpoint(run.out / CHECKPOINT, run.model, run.optimizer, done, cfg, run.world, run.train_seconds)
    bar.close()
    if run.main:
        save_model(run.model.eval(), run.out / "model.safetensors")
        run.writer.close()
    if run.world > 1:
        dist.destroy_process_group()
    return {"steps": run.step, "minutes": run.train_seconds / 60, "skipped_samples": sum(skipped_by_worker.values()),
            "images_seen": seen, "eval_history": history}  # fmt: skip


def train_from_config(config: str | Path | None, out: str | Path, overrides: Sequence[str] = (), resume: bool = False,
                      **options: object) -> dict:  # fmt: skip
    """What `groupvit train` runs: the training YAML `config` (else the defaults) under `overrides` (key=value) and
    then `options` not None (data, init, steps, batch_size, save_every: the command's own flags), trained into `out`
    (`train`), saying what it did."""
    overrides = [*overrides, *(f"{key}={value}" for key, value in options.items() if value is not None)]
    cfg = TrainConfig.from_yaml(config, overrides) if config else TrainConfig.from_dict({}, overrides)
    summary = train(cfg, out, resume=resume)
    print(f"trained {summary['steps']} steps; skipped {summary['skipped_samples']} broken samples; "
          f"weights in {Path(out) / 'model.safetensors'}")  # fmt: skip
    return summary
