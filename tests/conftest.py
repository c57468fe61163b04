"""Shared fixtures: random-weight transformers GroupViT checkpoints, the independent reference."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(2)

SMALL_HF = dict(
    projection_dim=32,
    projection_intermediate_dim=64,
    vision_config=dict(
        hidden_size=64,
        intermediate_size=128,
        depths=[2, 1, 1],
        num_hidden_layers=4,
        num_group_tokens=[16, 4, 0],
        num_output_groups=[16, 4, 4],
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
    ),
    text_config=dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, vocab_size=49408
    ),
)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every parameter and BatchNorm statistic non-trivial so parity cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 0:
                p.fill_(2.3)
            elif p.ndim == 1 and "weight" in name:  # LayerNorm / BatchNorm scales
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=g))
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * min(0.1, p.shape[-1] ** -0.5))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.empty(m.running_var.shape).uniform_(0.5, 2.0, generator=g))
    return model.eval()


def make_hf_model(small: bool, seed: int = 0):
    from transformers import GroupViTConfig, GroupViTModel

    torch.manual_seed(seed)
    config = GroupViTConfig(**SMALL_HF) if small else GroupViTConfig()
    return randomize(GroupViTModel(config), seed)


def save_hf_model(tmp_path_factory, small: bool) -> tuple[object, Path]:
    model = make_hf_model(small=small)
    path = tmp_path_factory.mktemp("hf_small" if small else "hf_default")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session")
def hf_small(tmp_path_factory) -> tuple[object, Path]:
    return save_hf_model(tmp_path_factory, small=True)


@pytest.fixture(scope="session")
def hf_default(tmp_path_factory) -> tuple[object, Path]:
    return save_hf_model(tmp_path_factory, small=False)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, hf_small) -> Path:
    """The small random model in our .safetensors format, for CLI tests."""
    import groupvit

    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    groupvit.save_model(groupvit.load_model(hf_small[1]), path)
    return path


def write_tiny_voc(folder: Path, count: int = 3) -> Path:
    """A PASCAL VOC 2012 layout with `count` random images: a cat/dog/person box and an ignored band each."""
    from groupvit.viz import label_image

    root = folder / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = ["2007_000032", "2007_000039", "2008_000123"][:count]
    for k, image_id in enumerate(ids):
        h, w = 40 + 8 * k, 56
        labels = np.zeros((h, w), np.uint8)
        labels[5:25, 10:40] = [8, 12, 15][k]  # cat, dog, person
        labels[25:30, 10:40] = 255  # the boundary band VOC ignores
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        label_image(labels).save(root / "SegmentationClass" / f"{image_id}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    (root / "ImageSets/Segmentation/train.txt").write_text(ids[0] + "\n")
    return root


def torchrun_two_processes() -> tuple[list[str], dict[str, str]]:
    """torchrun with 2 CPU processes on loopback and a port that is free now, with one thread each, and its env.
    A fixed port may be taken and gloo otherwise binds to whatever the host name resolves to: either can hang the
    rendezvous on a CI machine (a hang that remains fails at pytest-timeout's limit, set in pyproject.toml)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port)]  # fmt: skip
    return command, {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
