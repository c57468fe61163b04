"""The training loop (spec section 4), top to bottom: setup, data, optimiser, steps, checkpoints.

Run one process per device with torchrun; gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..checkpoint import atomic_write, save_model
from ..checks import check_training_data
from ..losses import groupvit_losses
from ..model import GroupViT
from .config import TrainConfig
from .data import CaptionTable, CaptionTexts, MemoryPairs, collate, shard_loader, step_batches
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


class LossModule(nn.Module):
    """Wraps the model so DistributedDataParallel sees the whole loss computation as one forward."""

    def __init__(self, model: GroupViT, cfg: TrainConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor, keys: torch.Tensor, deep_noun_weight: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared = self.cfg.noun_positives == "shared"
        return groupvit_losses(self.model, images, texts, self.cfg.noun_loss, keys if shared else None,
                               self.cfg.loss, deep_noun_weight, self.cfg.mosaic_loss)  # fmt: skip


def setup_distributed() -> tuple[int, int, torch.device]:
    """Rank, world size and device from torchrun's environment (a single process without it)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


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


def train(cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict:
    """Train GroupViT as `cfg` says, writing checkpoints, TensorBoard logs and the final weights to `out`."""
    if not cfg.data:
        raise ValueError("no training data: set data to webdataset shards (a/{000..009}.tar) or a CSV/TSV file")
    if cfg.eval_every and not cfg.eval_root:
        raise ValueError("eval_every is set but eval_root is empty: point it at e.g. VOCdevkit/VOC2012")
    check_training_data(cfg.data)
    out = Path(out)
    rank, world, device = setup_distributed()
    torch.manual_seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    found = read_training_state(out, device, verbose=rank == 0) if resume else None
    model, pretrained = build_model(cfg, found[0] if found else None, verbose=rank == 0)
    model = model.to(device)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if world > 1:  # before the optimiser is built: the conversion makes new BatchNorm parameters
        model = synchronise_batchnorm(model, device)
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
    wrapped: nn.Module = LossModule(model, cfg)
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=device_ids, broadcast_buffers=False)
    global_batch = cfg.batch_size * world * cfg.accum_steps
    lr_scale = global_batch / cfg.reference_batch
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    main = rank == 0
    writer = None
    if main:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        writer = SummaryWriter(out / "tensorboard")
    batches = forever(build_loader(cfg, rank, world, start_step))
    skipped_by_worker: dict[int, int] = {}
    budget = cfg.minutes * 60
    if budget:
        bar = tqdm(total=round(budget), initial=round(train_seconds), disable=not main, unit="s", dynamic_ncols=True)
    else:
        bar = tqdm(total=cfg.steps, initial=start_step, disable=not main, unit="step", dynamic_ncols=True)
    model.train()
    seen, history = 0, []
    step = start_step
    while (train_seconds < budget) if budget else (step < cfg.steps):
        tic = time.perf_counter()
        progress = train_seconds / budget if budget else step / cfg.steps  # share of the run done
        lr = learning_rate(cfg.steps * progress, cfg, lr_scale)
        deep_weight = cfg.deep_noun_loss * ((1 - progress) if cfg.deep_noun_decay else 1.0)
        set_learning_rate(optimizer, lr)
        for micro in range(cfg.accum_steps):
            images, texts, keys, skipped = next(batches)
            if isinstance(skipped, dict):  # webdataset workers report their running counts
                skipped_by_worker[skipped.pop("worker")] = sum(skipped.values())
            else:
                skipped_by_worker[0] = skipped_by_worker.get(0, 0) + skipped
            sync = nullcontext() if world == 1 or micro == cfg.accum_steps - 1 else wrapped.no_sync()
            with sync:
                with autocast:
                    itc, ml = wrapped(images.to(device, non_blocking=True), texts.to(device, non_blocking=True),
                                      keys.to(device, non_blocking=True), deep_weight)  # fmt: skip
                loss = itc + (ml if ml is not None else 0.0)
                finite = torch.isfinite(loss.detach()).float()
                if world > 1:  # every rank stops together instead of waiting on one that stopped
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if not finite.item():
                    raise FloatingPointError(
                        f"non-finite loss at step {step} (this rank: {loss.item()}); stopped. The last good checkpoint "
                        f"({out / CHECKPOINT}) is kept; resume from it with --resume, perhaps with a lower lr"
                    )
                (loss / cfg.accum_steps).backward()
            seen += images.shape[0] * world
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - tic
        if world > 1 and budget:  # every rank must agree on when the budget is spent
            elapsed_t = torch.tensor(elapsed, dtype=torch.float64)
            dist.all_reduce(elapsed_t, op=dist.ReduceOp.MAX)
            elapsed = elapsed_t.item()
        train_seconds += elapsed
        bar.update(round(train_seconds) - bar.n if budget else 1)
        step = done = step + 1
        last = (train_seconds >= budget) if budget else (done == cfg.steps)
        if main and (done % cfg.log_every == 0 or last):
            rate = seen / max(train_seconds, 1e-9)
            scalars = {
                "loss/total": loss.item(),
                "loss/image_text": itc.item(),
                "lr": lr,
                "grad_norm": grad_norm.item(),
                "logit_scale": model.logit_scale_value().item(),
                "images_per_second": rate,
                "skipped_samples": sum(skipped_by_worker.values()),
            }
            if ml is not None:
                scalars["loss/multi_label"] = ml.item()
                scalars["multi_label_logit_scale"] = model.multi_label_logit_scale.exp().clamp(max=100).item()
            for key, value in scalars.items():
                writer.add_scalar(key, value, done)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", img_s=f"{rate:.0f}")
        if cfg.eval_every and (done % cfg.eval_every == 0 or last):
            result = evaluate(model, cfg)
            recognition = result["recognition"]["pooled"]  # None when no eval image holds an object class
            similar = result["prompt_similarity"]
            history.append({"step": done, "minutes": train_seconds / 60, "images_seen": seen, "miou": result["miou"],
                            "groups_in_use": result["groups_in_use"], "recognition": recognition,
                            "prompt_cosine_mean": similar["mean"], "prompt_cosine_max": similar["max"]})  # fmt: skip
            if main:
                writer.add_scalar("eval/miou", result["miou"], done)
                writer.add_scalar("eval/groups_in_use", result["groups_in_use"], done)
                writer.add_scalar("eval/prompt_cosine_mean", similar["mean"], done)
                writer.add_scalar("eval/prompt_cosine_max", similar["max"], done)
                if recognition is not None:
                    writer.add_scalar("eval/recognition", recognition, done)
                named = "n/a (no object class)" if recognition is None else f"{recognition:.1f} %"
                tqdm.write(f"step {done} ({train_seconds / 60:.1f} min): {cfg.eval_dataset} mIoU "
                           f"{result['miou']:.2f}, groups in use {result['groups_in_use']:.2f}, "
                           f"recognition {named}")  # fmt: skip
        if done % cfg.save_every == 0 or last:
            save_checkpoint(out / CHECKPOINT, model, optimizer, done, cfg, world, train_seconds)
    bar.close()
    if main:
        save_model(model.eval(), out / "model.safetensors")
        writer.close()
    if world > 1:
        dist.destroy_process_group()
    return {"steps": step, "minutes": train_seconds / 60, "skipped_samples": sum(skipped_by_worker.values()),
            "images_seen": seen, "eval_history": history}  # fmt: skip
