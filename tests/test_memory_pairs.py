"""The in-memory training path (`in_memory: true`) against the PIL path on the same pairs: same samples, same
draws, the same crops and flips, pixels equal up to the resampling filters' rounding."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from groupvit.data.augment import LIGHT_CROP_SCALE, TensorLightAugment, train_transform
from groupvit.training.data import CaptionTable, CaptionTexts, MemoryPairs, collate, step_batches

CAPTIONS = ["a red dog", "two cats on grass", "a bus", "a chair and a sofa", "a bird in the sky", "a tv"]


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The same six pairs as a webdataset shard (plus one undecodable image) and as a CSV of PNG files."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 96)
    rows = []
    with tarfile.open(root / "shard-000000.tar", "w") as tar:
        add(tar, "broken.png", b"not an image")
        add(tar, "broken.txt", b"a broken sample")
        for i, caption in enumerate(CAPTIONS):
            image = np.stack([ramp[None, :].repeat(96, 0), ramp[:, None].repeat(96, 1), np.full((96, 96), 40 * i)], -1)
            image = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            (root / f"{i}.png").write_bytes(buffer.getvalue())
            add(tar, f"dir/{i:04d}.png", buffer.getvalue())
            add(tar, f"dir/{i:04d}.txt", caption.encode())
            add(tar, f"dir/{i:04d}.nouns.json", json.dumps(caption.split()[1:]).encode())
            rows.append(f"{i}.png,{caption}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root


def test_memory_pairs_hold_every_readable_pair(pairs):
    texts = CaptionTexts(2)
    memory = MemoryPairs(str(pairs / "shard-{000000..000000}.tar"), TensorLightAugment(64), texts)
    assert len(memory) == 6 and memory.skipped == {"image": 1}
    assert memory.captions == CAPTIONS
    for i in range(6):
        expected = np.array(Image.open(pairs / f"{i}.png").convert("RGB"))
        assert torch.equal(memory.image(i), torch.from_numpy(expected).permute(2, 0, 1))
    assert memory.nouns(1) == ["cats", "on", "grass"]  # read from nouns.json, not tagged again


@pytest.mark.parametrize(("preset", "scale"), [("light", (0.5, 1.0)), ("light", (0.2, 0.3)), ("flip", None)])
def test_memory_batches_match_the_pil_path(pairs, preset, scale):
    """Same seed: the same permutation, crop boxes and flips as CaptionTable with the PIL transform."""
    texts = CaptionTexts(0)
    memory = MemoryPairs(str(pairs / "shard-{000000..000000}.tar"), TensorLightAugment(64, scale), texts, seed=3)
    table = CaptionTable(pairs / "pairs.csv", train_transform(64, preset, scale or LIGHT_CROP_SCALE), texts, seed=3)
    flips = 0
    for batch in step_batches(0, 4, 5, 1, 0, 1):  # 20 positions: more than three epochs of 6 pairs
        mem_images, mem_ids, _, _ = collate([memory[q] for q in batch])
        pil_images, pil_ids, _, _ = collate([table[q] for q in batch])
        assert torch.equal(mem_ids, pil_ids)
        diff = (mem_images - pil_images).abs()  # normalised units: 1/255 of a channel is about 0.017
        assert diff.mean() < 0.01 and diff.max() < 0.15
        # A flip mismatch would show as a large difference on the horizontal ramp: check flips are exercised.
        flips += int((mem_images[:, 0, :, 0] > mem_images[:, 0, :, -1]).float().mean(dim=1).gt(0.5).sum())
    assert 0 < flips < 20


def test_a_sample_is_a_function_of_its_position_and_leaves_the_callers_rng_alone(pairs):
    """The data path seeds torch's CPU generator per sample: the same position gives the same pixels whatever the
    training process drew before, and the training process's own random stream goes on as if nothing was drawn."""
    memory = MemoryPairs(str(pairs / "shard-{000000..000000}.tar"), TensorLightAugment(64), CaptionTexts(2), seed=5)
    torch.manual_seed(0)
    first = memory[7]
    after = torch.rand(4)
    torch.manual_seed(123)
    torch.rand(1000)  # the caller's stream somewhere else
    again = memory[7]
    torch.manual_seed(0)
    expected_after = torch.rand(4)
    assert all(torch.equal(a, b) for a, b in zip(first[:3], again[:3], strict=True))
    assert torch.equal(after, expected_after)
    assert not torch.equal(memory[8][0], first[0])


def test_memory_pairs_name_the_data_when_nothing_is_readable(tmp_path):
    with tarfile.open(tmp_path / "bad-0.tar", "w") as tar:
        add(tar, "a.png", b"nope")
        add(tar, "a.txt", b"caption")
    with pytest.raises(ValueError, match=r"bad-0\.tar"):
        MemoryPairs(str(tmp_path / "bad-0.tar"), TensorLightAugment(64), CaptionTexts(0))


@pytest.mark.parametrize("in_memory", [True, False])
def test_the_loader_crops_at_the_configured_scale(pairs, in_memory):
    from groupvit.training.config import TrainConfig
    from groupvit.training.loop import build_loader

    data = str(pairs / "shard-{000000..000000}.tar") if in_memory else str(pairs / "pairs.csv")
    cfg = TrainConfig(data=data, in_memory=in_memory, augment="light", crop_scale=[0.2, 0.3], batch_size=2,
                      image_size=32, multi_label=0, workers=0, steps=1)  # fmt: skip
    transform = build_loader(cfg, 0, 1, 0).dataset.transform
    crop = transform if in_memory else transform.transforms[1]
    assert crop.scale == (0.2, 0.3)
    if in_memory:  # "flip": no crop at all
        cfg = TrainConfig(data=data, in_memory=True, augment="flip", batch_size=2, multi_label=0, steps=1)
        assert build_loader(cfg, 0, 1, 0).dataset.transform.scale is None
    with pytest.raises(ValueError, match="in_memory data is augmented with light or flip, got augment: groupvit"):
        TrainConfig(data=data, in_memory=True, augment="groupvit")
    with pytest.raises(ValueError, match=r"crop_scale must be \[low, high\] with 0 < low <= high <= 1, got 0.5"):
        TrainConfig.from_dict({}, ["crop_scale=0.5"])
