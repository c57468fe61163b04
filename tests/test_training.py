"""Training end to end on tiny generated data: broken samples, exact resume after SIGKILL, 2 processes on gloo
(accumulation: tests/test_accumulation.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from groupvit.training.config import TrainConfig
from groupvit.training.loop import learning_rate, parameter_groups
from tests.conftest import torchrun_two_processes

TINY_MODEL = {
    "model": {
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "depths": [1, 1, 1], "num_heads": 2,
                   "num_group_tokens": [4, 2, 0], "num_output_groups": [4, 2], "drop_path_rate": 0.0,
                   "gumbel": False},  # no noise: runs on different process counts draw the same assignments
        "text": {"width": 32, "layers": 1, "heads": 2},
        "projection_dim": 16,
        "projection_hidden_dim": 32,
    }
}  # fmt: skip
COLOURS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """24 coloured squares with captions, one file that is not an image, one row with an empty caption."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rgb = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
    rows = ["image,caption"]
    for i in range(24):
        colour = COLOURS[i % 4]
        pixels = np.full((40, 40, 3), 128, np.uint8)
        pixels[8:32, 8:32] = rgb[colour]
        pixels = np.clip(pixels + rng.integers(-10, 10, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append(f"{i}.png,a {colour} square on a grey background")
    (root / "broken.png").write_bytes(b"this is not a png")
    rows += ["broken.png,a broken image", "0.png,   "]
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    return root


def train_cmd(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "groupvit", "train", "--data", str(dataset / "pairs.csv"), "--out", str(out),
            f"model={dataset / 'tiny.yaml'}", "image_size=32", "augment=light", "workers=0", "multi_label=0",
            "warmup_steps=2", "lr=5e-3", "reference_batch=8", "log_every=1", *extra]  # fmt: skip


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


def test_learning_rate_schedule_by_hand():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, warmup_lr=0.1, min_lr=0.0)
    assert learning_rate(0, cfg, 1.0) == pytest.approx(0.1)
    assert learning_rate(5, cfg, 1.0) == pytest.approx(0.55)
    assert learning_rate(50, cfg, 2.0) == pytest.approx(1.0)  # half-way down the cosine, doubled batch
    assert learning_rate(99, cfg, 1.0) < 0.01


def test_weight_decay_groups_follow_the_reference():
    import groupvit

    model = groupvit.GroupViT(groupvit.model_config("small"))
    decay, no_decay = parameter_groups(model, 0.05)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.logit_scale) in decayed and id(model.visual.pos_embed) in decayed  # 0-d and 3-d
    assert id(model.visual.stages[0].group_token) in decayed
    assert id(model.visual.norm.weight) not in decayed and id(model.visual_projection.fc1.bias) not in decayed
    assert no_decay["weight_decay"] == 0.0


@pytest.mark.slow
def test_broken_samples_are_skipped_and_counted(dataset, tmp_path):
    run = subprocess.run(train_cmd(dataset, tmp_path, "--steps", "4", "--batch-size", "13", "--save-every", "4"),
                         capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    # 4 steps x 13 = 52 positions over 26 rows: each broken row (an image, an empty caption) is met twice.
    assert "skipped 4 broken samples" in run.stdout
    assert (tmp_path / "model.safetensors").is_file()
    assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(dataset, tmp_path):
    steps = ["--steps", "14", "--batch-size", "8", "--save-every", "2", "multi_label=2", "tagger=pattern"]
    full = tmp_path / "full"
    run = subprocess.run(train_cmd(dataset, full, *steps), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(dataset, killed, *steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        ckpt = killed / "checkpoint.pt"
        if ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] >= 4:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed; make it longer"
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] < 14
    run = subprocess.run(train_cmd(dataset, killed, *steps, "--resume"), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    a, b = final_weights(full), final_weights(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(dataset, tmp_path):
    # Adam's early updates are about lr * sign(gradient): float noise in near-zero gradients would flip them.
    # A large eps makes the update proportional to the gradient, so the comparison checks the maths, not noise.
    common = ["--steps", "3", "--save-every", "3", "eps=1.0"]
    one = subprocess.run(train_cmd(dataset, tmp_path / "one", *common, "--batch-size", "8"), capture_output=True,
                         text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr
    torchrun, env = torchrun_two_processes()
    cmd = train_cmd(dataset, tmp_path / "two", *common, "--batch-size", "4")
    two = subprocess.run(torchrun + cmd[1:], capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for key in a:
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_webdataset_shard_with_broken_samples(dataset, tmp_path):
    """24 good samples and 4 broken ones (an undecodable image, a truncated PNG, an empty and a non-UTF-8
    caption) in one shard, read once in order: 3 batches of 8 train and exactly 4 samples are skipped."""
    import io
    import tarfile

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    good = (dataset / "0.png").read_bytes()
    broken = [(b"not an image", b"a red square"), (good[:40], b"a truncated png"), (good, b"   "),
              (good, "a caf\u00e9".encode("latin-1"))]  # fmt: skip
    with tarfile.open(tmp_path / "shard-000000.tar", "w") as tar:
        for i, (image, caption) in enumerate(broken):
            add(tar, f"bad{i}.png", image)
            add(tar, f"bad{i}.txt", caption)
        for i in range(24):
            add(tar, f"{i:04d}.png", (dataset / f"{i}.png").read_bytes())
            add(tar, f"{i:04d}.txt", f"a {COLOURS[i % 4]} square".encode())
    cmd = train_cmd(dataset, tmp_path / "run", "--steps", "3", "--batch-size", "8", "--save-every", "3",
                    "resampled=false", "shuffle_buffer=1")  # fmt: skip
    cmd[cmd.index("--data") + 1] = str(tmp_path / "shard-{000000..000000}.tar")
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "skipped 4 broken samples" in run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("accum_steps", ["1", "2"])
def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(dataset, tmp_path, accum_steps):
    run = subprocess.run(train_cmd(dataset, tmp_path, "--steps", "8", "--batch-size", "8", "--save-every", "1",
                                   "lr=1e30", "warmup_steps=0", f"accum_steps={accum_steps}"), capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr  # a failed run, not a usage error
    assert "at step" in run.stderr and "last good checkpoint" in run.stderr
    step = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert 1 <= step < 8
    weights = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow
def test_evaluation_hook_logs_miou(dataset, tmp_path):
    from tests.conftest import write_tiny_voc

    voc = write_tiny_voc(tmp_path / "voc", count=1)
    run = subprocess.run(train_cmd(dataset, tmp_path / "run", "--steps", "2", "--batch-size", "4", "accum_steps=2",
                                   "eval_every=2", f"eval_root={voc}"), capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr
    pattern = r"step 2 \(\d+\.\d min\): voc mIoU \d+\.\d\d, groups in use \d+\.\d\d, recognition \d+\.\d %"
    assert re.search(pattern, run.stdout), run.stdout


def test_missing_shards_fail_before_training(tmp_path):
    from groupvit.training.data import expand_shards

    (tmp_path / "000.tar").write_bytes(b"")
    assert expand_shards(f"{tmp_path}/{{000..000}}.tar") == [f"{tmp_path}/000.tar"]
    with pytest.raises(FileNotFoundError, match=r"2 of 3 shards not found: .*001.tar"):
        expand_shards(f"{tmp_path}/{{000..002}}.tar")
    assert expand_shards("pipe:cat a.tar::https://host/{0..1}.tar") == ["pipe:cat a.tar", "https://host/0.tar",
                                                                         "https://host/1.tar"]  # fmt: skip


def test_a_time_budget_bar_shows_steps_images_per_second_time_left_and_ends_at_100(dataset, tmp_path):
    run = subprocess.run(train_cmd(dataset, tmp_path, "--batch-size", "8", "minutes=0.05", "eval_every=0"),
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    steps = int(re.search(r"trained (\d+) steps", run.stdout).group(1))
    states = [s.strip() for s in re.split(r"[\r\n]", run.stderr) if s.strip().startswith("train ")]
    assert re.fullmatch(rf"train 100%\|[^|]+\| step {steps}, \d+ img/s, 0:00 left, loss \d+\.\d+, lr \S+", states[-1])
    assert not any(re.match(r"train +1\d\d%", s) and "100%" not in s for s in states)  # never past 100 %
