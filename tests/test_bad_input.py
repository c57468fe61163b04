"""Bad input to every subcommand, as a new user gives it: one line naming the input and what to do, exit code 2 for
usage errors and 1 for bad data (README "Limits and errors"), no traceback, nothing written under a final name, the
inputs unchanged, and bounded memory for a small file that describes a huge image.

Most cases call `groupvit.cli.main` in process; those marked `real=True` run the installed command, to check the
real exit code and stderr."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

import groupvit
from groupvit.checks import EXIT_DATA, EXIT_USAGE
from groupvit.cli import main
from groupvit.config import model_config
from groupvit.model import GroupViT
from tests.conftest import write_tiny_voc

TINY_MODEL = {
    "model": {
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "depths": [1, 1, 1], "num_heads": 2,
                   "num_group_tokens": [4, 2, 0], "num_output_groups": [4, 2], "drop_path_rate": 0.0},
        "text": {"width": 32, "layers": 1, "heads": 2},
        "projection_dim": 16,
        "projection_hidden_dim": 32,
    }
}  # fmt: skip
TRAIN = ["image_size=32", "augment=light", "workers=0", "multi_label=0", "warmup_steps=1", "reference_batch=4",
         "log_every=1"]  # fmt: skip


def png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def evil_pickle() -> bytes:
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    return pickle.dumps({"model": Evil()})


def shard(path: Path, samples: list[tuple[bytes, bytes]]) -> None:
    import io

    with tarfile.open(path, "w") as tar:
        for i, (image, caption) in enumerate(samples):
            for ext, data in (("png", image), ("txt", caption)):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every bad (and a few good) input the cases use; the cases check that none of it changes."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    groupvit.save_model(GroupViT(model_config("small")).eval(), root / "model.safetensors")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY_MODEL))
    other = {"model": {**TINY_MODEL["model"], "vision": {**TINY_MODEL["model"]["vision"], "width": 64}}}
    (root / "other.yaml").write_text(yaml.safe_dump(other))
    # images
    ok = png(root / "ok.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    Image.new("RGB", (20_000, 1)).save(root / "wide.png")  # 20000x1: a side of 0 px after the protocol's resize
    Image.new("RGB", (40_000, 1)).save(root / "strip.png")  # 198 bytes that once cost 10.6 GB in classify
    Image.new("RGB", (1, 3000)).save(root / "tall.png")
    Image.new("1", (9000, 9000)).save(root / "huge.png")  # 81 megapixels, tiny on disk
    (root / "notes.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    big = png(root / "big.png", rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
    (root / "truncated.png").write_bytes(big.read_bytes()[:2000])
    (root / "folder.png").mkdir()
    # outputs that must not be clobbered
    (root / "existing.json").write_text("{}")
    (root / "results").mkdir()
    (root / "results" / "ok_overlay.png").write_bytes(ok.read_bytes())
    (root / "demo_done").mkdir()
    (root / "demo_done" / "results.json").write_text("{}")
    (root / "hf_done").mkdir()
    (root / "hf_done" / "config.json").write_text("{}")
    # checkpoints and configs
    (root / "random.pth").write_bytes(rng.integers(0, 255, 3000, dtype=np.uint8).tobytes())
    (root / "truncated.safetensors").write_bytes((root / "model.safetensors").read_bytes()[:5000])
    (root / "empty.safetensors").write_bytes(b"")
    (root / "evil.pth").write_bytes(evil_pickle())
    torch.save({"epoch": 3}, root / "nostate.pth")
    save_file({"weight": torch.zeros(2, 2)}, root / "notgroupvit.safetensors")
    (root / "no_config").mkdir()
    configs = {"hf_broken": '{"model_type": "groupvit", ', "hf_bert": '{"model_type": "bert"}',
               "hf_big": '{"model_type": "groupvit", "vision_config": {"hidden_size": "big"}}'}  # fmt: skip
    for name, config in configs.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(config)
        (root / name / "model.safetensors").write_bytes(b"")
    (root / "bad.yaml").write_text("model:\n  vision: {width: 64\n  text: {}\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown.yaml").write_text("model:\n  colour: blue\n")
    (root / "word.yaml").write_text("model:\n  vision:\n    width: big\n")
    (root / "zero.yaml").write_text("model:\n  vision:\n    depths: [0, 1, 1]\n")
    # training data
    for i in range(4):
        png(root / f"{i}.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    (root / "pairs.csv").write_text("image,caption\n" + "".join(f"{i}.png,a square number {i}\n" for i in range(4)))
    (root / "missing_images.csv").write_text("gone/a.png,a cat\ngone/b.png,a dog\n")
    (root / "empty_captions.csv").write_text("0.png,   \n1.png,\n")
    (root / "one_column.csv").write_text("0.png\n1.png\n")
    (root / "huge_field.csv").write_text("0.png,a cat\n1.png," + "a dog " * 30_000 + "\n")  # past csv's field limit
    (root / "headonly.csv").write_text("image,caption\n")
    shard(root / "broken-000000.tar", [(b"not an image", b"a cat"), ((root / "0.png").read_bytes(), b"  ")])
    # datasets
    write_tiny_voc(root / "voc")
    broken = write_tiny_voc(root / "voc_broken")
    (broken / "JPEGImages" / "2007_000032.jpg").write_bytes(b"this is not a jpeg")
    return root


@pytest.fixture(scope="module")
def run_dir(inputs, tmp_path_factory) -> Path:
    """A finished two-step run of the tiny model: checkpoint.pt (step 2) and checkpoint.prev.pt (step 1)."""
    out = tmp_path_factory.mktemp("run") / "run"
    code = main(["train", "--data", str(inputs / "pairs.csv"), "--out", str(out), "--steps", "2", "--batch-size", "4",
                 "--save-every", "1", f"model={inputs / 'tiny.yaml'}", *TRAIN])  # fmt: skip
    assert code == 0 and (out / "checkpoint.prev.pt").is_file()
    return out


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory) -> Path:
    """A folder nothing can be created in: read-only for an ordinary user; /sys for root, whom modes do not stop."""
    if os.geteuid() == 0:
        folder = Path("/sys")
    else:
        folder = tmp_path_factory.mktemp("readonly")
        folder.chmod(0o500)
    with pytest.raises(OSError):
        (folder / "probe").write_text("")
    return folder


def copy_run(damage: str = "") -> Callable[[Path, Path, Path], None]:
    """A case's preparation: the finished run copied to TMP/run, with `damage` ('latest' or 'both') truncated."""

    def prepare(tmp: Path, inputs: Path, run: Path) -> None:
        shutil.copytree(run, tmp / "run")
        for name in {"latest": ["checkpoint.pt"], "both": ["checkpoint.pt", "checkpoint.prev.pt"]}.get(damage, []):
            path = tmp / "run" / name
            path.write_bytes(path.read_bytes()[:1000])

    return prepare


@dataclass
class Case:
    argv: str  # placeholders: {in} inputs, {tmp} this case's empty folder, {ro} an unwritable folder
    code: int
    message: str  # regex searched in stderr
    real: bool = False  # run the installed command in a subprocess
    written: str = ""  # regex for files the command may write under {tmp} (the good images of a batch)
    prepare: Callable[[Path, Path, Path], None] | None = None


U, D = EXIT_USAGE, EXIT_DATA
M = "--checkpoint {in}/model.safetensors"
SEG = "segment {in}/ok.png --classes cat,dog --out {tmp}/out --mode whole " + M
CLS = "classify {in}/ok.png --classes cat,dog " + M
EVAL = "eval --dataset voc --root {in}/voc/VOCdevkit/VOC2012 --mode whole " + M
TRN = "train --data {in}/pairs.csv --out {tmp}/run model={in}/tiny.yaml " + " ".join(TRAIN)
DEMO = "demo --out {tmp}/demo --data {tmp}/synthvoc"
OUTPUTS = r"out/ok(_overlay|_labels|_groups)?\.(png|json)"
MANY = ",".join(f"c{i}" for i in range(256))

# fmt: off
CASES = {
    # segment: images
    "segment/missing-image": Case(SEG.replace("{in}/ok.png", "{in}/nope.png"), U, r"image not found: .*nope\.png"),
    "segment/folder-as-image": Case(SEG.replace("ok.png", "folder.png"), U, r"image .*folder\.png is a folder, not a"),
    "segment/strip-in-a-batch": Case(SEG.replace("{in}/ok.png", "{in}/wide.png {in}/ok.png"), D,
                                     r"skipped .*wide\.png: .*20000x1: one side is more than 50 times",
                                     written=OUTPUTS),
    "segment/tall-strip": Case(SEG.replace("ok.png", "tall.png"), D, r"tall\.png is 1x3000"),
    "segment/text-as-jpeg": Case(SEG.replace("{in}/ok.png", "{in}/notes.jpg {in}/ok.png"), D,
                                 r"skipped .*notes\.jpg: .*is not an image", written=OUTPUTS),
    "segment/empty-file": Case(SEG.replace("ok.png", "empty.png"), D, r"empty\.png is not an image"),
    "segment/truncated-png": Case(SEG.replace("ok.png", "truncated.png"), D, r"truncated\.png is damaged or truncated"),
    "segment/81-megapixels": Case(SEG.replace("ok.png", "huge.png"), D, r"81 megapixels, over the limit of 64"),
    # segment: classes and options
    "segment/no-class": Case(SEG.replace("cat,dog", '""'), U, r"empty class name"),
    "segment/stray-comma": Case(SEG.replace("cat,dog", "cat,,dog"), U, r"empty class name .*remove stray commas"),
    "segment/duplicate-class": Case(SEG.replace("cat,dog", "cat,Cat"), U, r"duplicate class name 'Cat'"),
    "segment/256-classes": Case(SEG.replace("cat,dog", MANY), U, r"256 class names given; at most 255"),
    "segment/batch-size-0": Case(SEG + " --batch-size 0", U, r"--batch-size: 0 is not a positive integer"),
    "segment/batch-size-word": Case(SEG + " --batch-size many", U, r"--batch-size: 'many' is not an integer"),
    "segment/threshold-1.5": Case(SEG + " --background-threshold 1.5", U, r"1.5 is not between 0 and 1"),
    "segment/threshold-nan": Case(SEG + " --background-threshold nan", U, r"'nan' is not a finite number"),
    "segment/mode": Case(SEG.replace("whole", "fast"), U, r"invalid choice: 'fast'"),
    # segment: outputs and checkpoints
    "segment/out-is-a-file": Case(SEG.replace("{tmp}/out", "{in}/existing.json"), U, r"existing\.json is a file"),
    "segment/out-under-a-file": Case(SEG.replace("{tmp}/out", "{in}/ok.png/out"), U, r"ok\.png is a file, not a"),
    "segment/out-holds-results": Case(SEG.replace("{tmp}/out", "{in}/results"), U,
                                      r"already holds ok_overlay\.png; pass --overwrite"),
    "segment/out-unwritable": Case(SEG.replace("{tmp}/out", "{ro}/out"), U, r"cannot write in .*choose a writable"),
    "segment/no-checkpoint": Case(SEG.replace(M, ""), U, r"no --checkpoint given"),
    "segment/missing-checkpoint": Case(SEG.replace("model.safetensors", "gone.safetensors"), U, r"not found"),
    # classify
    "classify/top-minus-1": Case(CLS + " --top -1", U, r"--top: -1 is not a positive integer", real=True),
    "classify/top-0": Case(CLS + " --top 0", U, r"--top: 0 is not a positive integer"),
    "classify/top-fraction": Case(CLS + " --top 2.5", U, r"--top: '2.5' is not an integer"),
    "classify/1001-classes": Case(CLS.replace("cat,dog", ",".join(f"c{i}" for i in range(1001))), U, r"at most 1000"),
    "classify/blank-classes": Case(CLS.replace("cat,dog", '" , "'), U, r"empty class name"),
    "classify/strip": Case(CLS.replace("{in}/ok.png", "{in}/strip.png {in}/ok.png"), D,
                           r"skipped .*strip\.png: .*40000x1: one side is more than 50"),
    "classify/missing-image": Case(CLS.replace("ok.png", "nope.png"), U, r"image not found: .*nope\.png"),
    "classify/templates": Case(CLS + " --templates fancy", U, r"invalid choice: 'fancy'"),
    "classify/random-bytes-checkpoint": Case(CLS.replace("model.safetensors", "random.pth"), U,
                                             r"random\.pth: truncated or not a PyTorch checkpoint \(\w+"),
    # eval
    "eval/limit-minus-3": Case(EVAL + " --limit -3", U, r"--limit: -3 is not a positive integer"),
    "eval/limit-0": Case(EVAL + " --limit 0", U, r"--limit: 0 is not a positive integer"),
    "eval/batch-size-0": Case(EVAL + " --batch-size 0", U, r"--batch-size: 0 is not a positive integer"),
    "eval/calibrate-0": Case(EVAL + " --calibrate-background 0", U, r"--calibrate-background: 0 is not a positive"),
    "eval/threshold-2": Case(EVAL + " --background-threshold 2", U, r"2 is not between 0 and 1"),
    "eval/out-is-a-folder": Case(EVAL + " --out {in}/results", U, r"results is a folder; give a file name"),
    "eval/out-exists": Case(EVAL + " --out {in}/existing.json", U, r"existing\.json exists; pass --overwrite"),
    "eval/out-unwritable": Case(EVAL + " --out {ro}/voc.json", U, r"cannot write in"),
    "eval/root-missing": Case(EVAL.replace("{in}/voc/", "{in}/nowhere/"), U, r"dataset root folder"),
    "eval/unknown-dataset": Case(EVAL.replace("voc ", "pascal "), U, r"invalid choice: 'pascal'"),
    "eval/broken-image": Case(EVAL.replace("{in}/voc/", "{in}/voc_broken/"), D, r"cannot read image .*2007_000032"),
    # convert
    # export
    "export/src-missing": Case("export {in}/gone.pth --out {tmp}/onnx", U, r"checkpoint not found"),
    "export/src-evil-pickle": Case("export {in}/evil.pth --out {tmp}/onnx", U, r"would call .*system.*refusing"),
    "export/out-is-a-file": Case("export {in}/model.safetensors --out {in}/existing.json", U, r"is a file"),
    "export/out-unwritable": Case("export {in}/model.safetensors --out {ro}/onnx", U, r"cannot write in"),
    "export/unknown-format": Case("export {in}/model.safetensors --format tflite --out {tmp}/onnx", U,
                                  r"invalid choice: 'tflite'"),
    "export/opset-too-old": Case("export {in}/model.safetensors --opset 9 --out {tmp}/onnx", U, r"opset|9"),
    "convert/dst-exists": Case("convert {in}/model.safetensors {in}/model.safetensors", U,
                               r"DST .*model\.safetensors exists; pass --overwrite"),
    "convert/ours-as-pth": Case("convert {in}/model.safetensors {tmp}/m.pth", U, r"read back from a \.safetensors"),
    "convert/nvlabs-as-safetensors": Case("convert {in}/model.safetensors {tmp}/m.safetensors --to nvlabs", U,
                                          r"read back from a \.pth file"),
    "convert/hf-into-a-file": Case("convert {in}/model.safetensors {in}/existing.json --to hf", U, r"is a file"),
    "convert/hf-over-a-folder": Case("convert {in}/model.safetensors {in}/hf_done --to hf", U,
                                     r"already holds config\.json"),
    "convert/dst-unwritable": Case("convert {in}/model.safetensors {ro}/m.safetensors", U, r"cannot write in"),
    "convert/src-missing": Case("convert {in}/gone.pth {tmp}/m.safetensors", U, r"checkpoint not found"),
    "convert/src-truncated": Case("convert {in}/truncated.safetensors {tmp}/m.safetensors", U, r"may be truncated"),
    "convert/src-empty": Case("convert {in}/empty.safetensors {tmp}/m.safetensors", U, r"as safetensors"),
    "convert/src-evil-pickle": Case("convert {in}/evil.pth {tmp}/m.safetensors", U, r"would call .*system.*refusing"),
    "convert/src-no-state-dict": Case("convert {in}/nostate.pth {tmp}/m.safetensors", U, r"holds no state dict"),
    "convert/src-not-groupvit": Case("convert {in}/notgroupvit.safetensors {tmp}/m.safetensors", U,
                                     r"not a GroupViT checkpoint"),
    "convert/src-folder-without-config": Case("convert {in}/no_config {tmp}/m.safetensors", U, r"without config"),
    "convert/hf-broken-json": Case("convert {in}/hf_broken {tmp}/m.safetensors", U,
                                   r"config\.json, line 1: not valid JSON"),
    "convert/hf-word-size": Case("convert {in}/hf_big {tmp}/m.safetensors", U,
                                 r"config\.json is not a usable .*hidden_size is 'big'"),
    "convert/hf-other-model": Case("convert {in}/hf_bert {tmp}/m.safetensors", U, r"model_type 'bert'"),
    # info
    "info/bad-yaml": Case("info {in}/bad.yaml", U, r"bad\.yaml, line \d+: not valid YAML", real=True),
    "info/yaml-list": Case("info {in}/list.yaml", U, r"list\.yaml: expected key: value settings"),
    "info/yaml-unknown-key": Case("info {in}/unknown.yaml", U, r"unknown model config keys: \['colour'\]"),
    "info/yaml-word-size": Case("info {in}/word.yaml", U, r"vision\.width: 'big' is not an integer"),
    "info/yaml-zero-depth": Case("info {in}/zero.yaml", U, r"vision\.depths must be positive"),
    "info/missing": Case("info {in}/gone.pth", U, r"checkpoint not found"),
    # train
    "train/steps-0": Case(TRN + " --steps 0", U, r"--steps: 0 is not a positive integer"),
    "train/batch-size-minus-1": Case(TRN + " --batch-size -1", U, r"--batch-size: -1 is not a positive"),
    "train/data-missing": Case(TRN.replace("pairs.csv", "gone.csv"), U, r"training data .*gone\.csv not found"),
    "train/all-images-missing": Case(TRN.replace("pairs.csv", "missing_images.csv"), D,
                                     r"missing_images\.csv: no usable image-caption pair in 2 rows: 2 unreadable "
                                     r"images \(e\.g\. .*gone/a\.png is missing\)", real=True),
    "train/all-captions-empty": Case(TRN.replace("pairs.csv", "empty_captions.csv"), D,
                                     r"empty_captions\.csv: no usable .* 2 empty or non-UTF-8 captions"),
    "train/one-column": Case(TRN.replace("pairs.csv", "one_column.csv"), D, r"one_column\.csv, line 1: expected two"),
    "train/huge-field": Case(TRN.replace("pairs.csv", "huge_field.csv"), D,
                             r"huge_field\.csv, line 2: not a readable CSV/TSV \(field larger than field limit"),
    "train/header-only": Case(TRN.replace("pairs.csv", "headonly.csv"), D, r"headonly\.csv holds no rows"),
    "train/broken-shards": Case(TRN.replace("pairs.csv", "broken-{000000..000000}.tar"), D,
                                r"broken-.*: no usable image-caption pair in the first 2 samples"),
    "train/missing-shards": Case(TRN.replace("pairs.csv", "gone-{000000..000001}.tar"), U, r"2 of 2 shards not"),
    "train/bad-yaml": Case(TRN + " --config {in}/bad.yaml", U, r"bad\.yaml, line \d+: not valid YAML"),
    "train/missing-config": Case(TRN + " --config {in}/gone.yaml", U, r"config file .*gone\.yaml not found"),
    "train/override-word": Case(TRN + " lr=fast", U, r"training config key 'lr': 'fast' is not a float"),
    "train/override-bad-yaml": Case(TRN + " betas=[0.9,", U, r"override 'betas=\[0.9,': not valid YAML"),
    "train/override-unknown": Case(TRN + " learning_rate=1", U, r"unknown keys in training config: \['learning_rate"),
    "train/workers-minus-1": Case(TRN + " workers=-1", U, r"workers >= 0"),
    "train/out-is-a-file": Case(TRN.replace("{tmp}/run", "{in}/existing.json"), U, r"existing\.json is a file"),
    "train/out-holds-a-run": Case(TRN, U, r"already holds checkpoint\.pt and 3 more; pass --resume",
                                  prepare=copy_run()),
    "train/resume-other-model": Case(TRN.replace("tiny.yaml", "other.yaml") + " --resume", U,
                                     r"checkpoint\.pt holds a model with another config \(vision\.width: 32 in the "
                                     r"checkpoint, 64 now\)", prepare=copy_run()),
    "train/resume-all-damaged": Case(TRN + " --resume", U, r"cannot resume: .*checkpoint\.pt is unreadable.*"
                                     r"checkpoint\.prev\.pt is unreadable", prepare=copy_run("both")),
    # demo
    "demo/minutes-0": Case(DEMO + " --minutes 0", U, r"--minutes: 0 is not positive"),
    "demo/minutes-negative": Case(DEMO + " --minutes -5", U, r"--minutes: -5 is not positive"),
    "demo/train-scenes-0": Case(DEMO + " --train-scenes 0", U, r"--train-scenes: 0 is not a positive"),
    "demo/workers-0": Case(DEMO + " --workers 0", U, r"--workers: 0 is not a positive"),
    "demo/out-is-a-file": Case(DEMO.replace("{tmp}/demo", "{in}/existing.json"), U, r"existing\.json is a file"),
    "demo/out-holds-results": Case(DEMO.replace("{tmp}/demo", "{in}/demo_done"), U, r"already holds results\.json"),
    "demo/bad-config": Case(DEMO + " --config {in}/bad.yaml", U, r"bad\.yaml, line \d+: not valid YAML"),
    "demo/bad-override": Case(DEMO + " lr=fast", U, r"'lr': 'fast' is not a float"),
    "demo/bad-scene": Case(DEMO + " --scene max_objects=[1,", U, r"not valid YAML"),
    # prepare-nouns, convert-coco-object, app
    "prepare-nouns/workers-0": Case("prepare-nouns {in}/x.tar --out {tmp}/n --workers 0", U, r"0 is not a positive"),
    "prepare-nouns/missing-shards": Case("prepare-nouns {in}/gone-{0..1}.tar --out {tmp}/n", U, r"shards not found"),
    "prepare-nouns/out-is-a-file": Case("prepare-nouns {in}/broken-000000.tar --out {in}/existing.json", U,
                                        r"existing\.json is a file"),
    "convert-coco-object/out-is-a-file": Case("convert-coco-object {in}/voc --out {in}/ok.png", U, r"is a file"),
    "convert-coco-object/missing-root": Case("convert-coco-object {in}/nowhere --out {tmp}/coco", U, r"not found"),
    "app/port-0": Case("app --port 0", U, r"--port: 0 is not a port number"),
    "app/port-70000": Case("app --port 70000", U, r"--port: 70000 is not a port number"),
    "app/max-classes-0": Case("app --max-classes 0", U, r"--max-classes: 0 is not a positive"),
    "app/max-pixels-negative": Case("app --max-pixels -1", U, r"--max-pixels: -1 is not a positive"),
    "download/unknown-name": Case("download nosuchmodel", U, r"unknown released weights 'nosuchmodel'"),
    "list/unknown-option": Case("list --bogus", U, r"unrecognized arguments: --bogus"),
    # the command line itself
    "cli/unknown-command": Case("segmnet {in}/ok.png", U, r"invalid choice: 'segmnet'"),
    "cli/unknown-option": Case(SEG + " --colour red", U, r"unrecognized arguments: --colour red"),
}
# fmt: on


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under `roots` -> its content's hash."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots if root.exists()
            for p in root.rglob("*") if p.is_file()}  # fmt: skip


def run(argv: list[str], real: bool, capsys) -> tuple[int, str, str]:
    if real:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GROUPVIT_DEBUG": "0"}
        result = subprocess.run([sys.executable, "-m", "groupvit", *argv], capture_output=True, text=True, env=env)
        return result.returncode, result.stdout, result.stderr
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, inputs, run_dir, unwritable, tmp_path, capsys, monkeypatch):
    case = CASES[name]
    monkeypatch.delenv("GROUPVIT_DEBUG", raising=False)
    if case.prepare:
        case.prepare(tmp_path, inputs, run_dir)
    before, before_tmp = snapshot(inputs), snapshot(tmp_path)
    text = case.argv.replace("{in}", str(inputs)).replace("{tmp}", str(tmp_path)).replace("{ro}", str(unwritable))
    code, out, err = run(shlex.split(text), case.real, capsys)
    assert code == case.code, err
    assert "Traceback" not in out + err
    assert re.search(case.message, err), err
    errors = [line for line in err.splitlines() if "error:" in line]
    if code == EXIT_USAGE:  # one line, the last (argparse prints its usage above it)
        assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    else:  # bad data: each skipped input on its own line, or one error line
        assert len(errors) <= 1 and all(len(line) < 1000 for line in err.splitlines()), err
    assert snapshot(inputs) == before, "an input changed"
    new = {p: h for p, h in snapshot(tmp_path).items() if before_tmp.get(p) != h}
    for path in new:
        assert re.fullmatch(case.written, Path(path).relative_to(tmp_path).as_posix()), f"{path} was written"


def test_at_least_sixty_cases_cover_every_subcommand():
    from groupvit.cli import build_parser

    commands = {name.split("/")[0] for name in CASES}
    subparsers = build_parser()._subparsers._group_actions[0].choices
    assert len(CASES) >= 60
    assert set(subparsers) <= commands


# ----------------------------------------------------------------------------- the classes behind the cases


def test_a_tiny_strip_is_refused_in_bounded_memory(inputs, tmp_path):
    """40000x1 and 20000x1 PNGs of a few hundred bytes, under a 2 GiB address space (they once took 10.6 GB):
    each is skipped with its reason and the good image of the same batch is still classified."""
    limit = 2 << 30

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    argv = ["classify", str(inputs / "strip.png"), str(inputs / "wide.png"), str(inputs / "ok.png"), "--classes",
            "cat,dog", "--checkpoint", str(inputs / "model.safetensors")]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "groupvit", *argv], capture_output=True, text=True,
                            preexec_fn=cap, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == EXIT_DATA, result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert len(re.findall(r"skipped .*(strip|wide)\.png: .*one side is more than 50 times", result.stderr)) == 2
    assert result.stdout.startswith(f"{inputs / 'ok.png'}: ")


def test_debug_lets_the_error_through(inputs, monkeypatch):
    """--debug (before or after the subcommand) or GROUPVIT_DEBUG=1: the exception, with its traceback."""
    bad = str(inputs / "bad.yaml")
    for argv in (["--debug", "info", bad], ["info", bad, "--debug"]):
        with pytest.raises(ValueError, match="not valid YAML"):
            main(argv)
    monkeypatch.setenv("GROUPVIT_DEBUG", "1")
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["info", bad])


def test_nvlabs_round_trip_keeps_the_config_and_inference_warns(inputs, tmp_path, capsys):
    """Our config travels in the .pth (the reference reads only 'model'); a file without it is read off shapes
    with a one-line warning, since shapes do not show the head count (the small preset's 4 heads become 2)."""
    original = groupvit.load_model(inputs / "model.safetensors")
    assert main(["convert", str(inputs / "model.safetensors"), str(tmp_path / "nv.pth"), "--to", "nvlabs"]) == 0
    assert main(["convert", str(tmp_path / "nv.pth"), str(tmp_path / "back.safetensors")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert groupvit.load_model(tmp_path / "back.safetensors").config == original.config
    state = torch.load(tmp_path / "nv.pth", weights_only=True)
    assert set(state) == {"model", "groupvit_config", "groupvit_test_settings"}
    torch.save({"model": state["model"]}, tmp_path / "reference.pth")  # as the reference writes it
    with pytest.warns(UserWarning, match=r"reference\.pth carries no model config: .* \(2 image, 2 text\)"):
        inferred = groupvit.load_model(tmp_path / "reference.pth")
    assert inferred.config.vision.num_heads == 2 != original.config.vision.num_heads


def test_hf_round_trip_keeps_what_transformers_cannot_hold(tmp_path):
    cfg = model_config("small")
    cfg.vision.hard_assignment, cfg.vision.drop_path_rate = False, 0.3
    with pytest.warns(UserWarning, match="always assigns tokens to groups hard"):
        groupvit.save_model(GroupViT(cfg).eval(), tmp_path / "hf", layout="hf")
    back = groupvit.load_model(tmp_path / "hf").config
    assert back.vision.hard_assignment is False and back.vision.drop_path_rate == 0.3 and back.vision == cfg.vision


def test_long_class_names_warn_and_keep_the_legend_bounded(inputs, tmp_path, capsys):
    name = "x" * 10_000
    code = main(["segment", str(inputs / "ok.png"), "--classes", f"{name},dog", "--no-background", "--mode", "whole",
                 "--checkpoint", str(inputs / "model.safetensors"), "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "1 class name(s) pass the text encoder's 77 tokens" in warnings[0]
    assert len(warnings[0]) < 300  # the name is shown shortened
    overlay = Image.open(tmp_path / "ok_overlay.png")
    assert overlay.width < 64 + 400  # the legend column; the name once made it 70,487 px wide


def test_latin1_caption_rows_are_skipped_and_counted(inputs, tmp_path, capsys):
    rows = (inputs / "pairs.csv").read_bytes() + "0.png,un caf\u00e9 cr\u00e8me\n".encode("latin-1")
    (tmp_path / "pairs.csv").write_bytes(rows)
    for i in range(4):
        shutil.copy(inputs / f"{i}.png", tmp_path)
    code = main(["train", "--data", str(tmp_path / "pairs.csv"), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--batch-size", "5", f"model={inputs / 'tiny.yaml'}", *TRAIN])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    skipped = int(re.search(r"skipped (\d+) broken samples", out).group(1))
    assert skipped == 3  # the Latin-1 row comes up once in each epoch of 5 rows


def test_resume_falls_back_to_the_previous_checkpoint(inputs, run_dir, tmp_path, capsys):
    copy_run("latest")(tmp_path, inputs, run_dir)
    code = main(["train", "--data", str(inputs / "pairs.csv"), "--out", str(tmp_path / "run"), "--steps", "3",
                 "--batch-size", "4", f"model={inputs / 'tiny.yaml'}", "--resume", *TRAIN])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"checkpoint\.pt is unreadable \(.*\); resuming from .*checkpoint\.prev\.pt \(step 1\)", out)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_the_app_logs_a_refused_request_as_one_line(inputs, tmp_path, capsys):
    import gradio as gr

    from groupvit.app import SegmentationApp

    app = SegmentationApp(groupvit.load_model(inputs / "model.safetensors"), "small", None, tmp_path)
    with pytest.raises(gr.Error) as refused:
        app.segment(None, "cat", 0.5, "whole")
    assert refused.value.print_exception is False  # gradio prints no traceback for it
    log = capsys.readouterr().out.splitlines()
    assert log == ["groupvit app: refused a request: Upload an image or pick an example first."]


# ----------------------------------------------------------------------------- issue 30: whole classes of bad input


@pytest.fixture(scope="module")
def specials(inputs, tmp_path_factory) -> Path:
    """Inputs that are not regular files: FIFOs under usual names (made with os.mkfifo; no device nodes are made),
    and CSVs whose rows point at /dev/zero or at a file that is not an image."""
    root = tmp_path_factory.mktemp("specials")
    for name in ("fifo.png", "fifo.safetensors", "fifo.pth", "fifo.csv", "fifo.yaml", "fifo.json", "fifo.txt",
                 "fifo-000000.tar"):  # fmt: skip
        os.mkfifo(root / name)
    (root / "zero.csv").write_text("/dev/zero,a cat\n")
    shutil.copy(inputs / "notes.jpg", root / "notes.jpg")
    (root / "notimage.csv").write_text("notes.jpg,a dog\n")
    image = write_tiny_voc(root / "voc") / "JPEGImages" / "2007_000032.jpg"
    image.unlink()
    os.mkfifo(image)
    return root


def argv_of(text: str, **places: Path) -> list[str]:
    for name, path in places.items():
        text = text.replace("{" + name + "}", str(path))
    return shlex.split(text)


def refused(argv: list[str], capsys, code: int = EXIT_USAGE) -> str:
    """Run `argv` in process: exit `code`, one error line and no traceback; return that line."""
    code_now, out, err = run(argv, False, capsys)
    assert code_now == code, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in out + err, err
    return errors[0]


# Where each subcommand writes, as (command with {target} its output, the output's name under {target}'s folder).
OUTPUT_TARGETS = {
    "segment": (SEG.replace("{tmp}/out", "{target}") + " --overwrite", "ok_overlay.png"),
    "eval": (EVAL + " --out {target}/voc.json --overwrite", "voc.json"),
    "convert": ("convert {in}/model.safetensors {target}/m.safetensors --overwrite", "m.safetensors"),
    "convert-hf": ("convert {in}/model.safetensors {target} --to hf --overwrite", "config.json"),
    "convert-nvlabs": ("convert {in}/model.safetensors {target}/m.pth --to nvlabs --overwrite", "m.pth"),
    "train": (TRN.replace("{tmp}/run", "{target}") + " --overwrite", "checkpoint.pt"),
    "train-resume": (TRN.replace("{tmp}/run", "{target}") + " --resume", "train_config.json"),
    "demo": ("demo --scenes-only 1 --out {target} --overwrite", "val_000000.jpg"),
    "prepare-nouns": ("prepare-nouns {in}/broken-000000.tar --out {target}", "broken-000000.tar"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fifo", "folder"])
@pytest.mark.parametrize("command", list(OUTPUT_TARGETS))
def test_outputs_onto_things_that_are_not_regular_files_are_refused(command, kind, inputs, tmp_path, capsys):
    """Class 1: an output that exists and is not a regular file (a FIFO here; as root a device node, which the atomic
    rename would swap out) is refused in one line, --overwrite or not, before any work, and is left as it was."""
    argv, name = OUTPUT_TARGETS[command]
    target = tmp_path / "target"
    target.mkdir()
    os.mkfifo(target / name) if kind == "fifo" else (target / name).mkdir()
    line = refused(argv_of(argv, target=target, **{"in": inputs}), capsys)
    what = "a FIFO (named pipe)" if kind == "fifo" else "a folder"
    assert re.search(rf"{re.escape(name)}.* is {re.escape(what)}", line), line
    assert (target / name).is_fifo() if kind == "fifo" else (target / name).is_dir()
    assert sorted(p.name for p in target.iterdir()) == [name]  # nothing else written


@pytest.mark.timeout(60)
def test_the_api_never_writes_over_a_special_file(tmp_path):
    """Class 1, the Python API: save_model (every layout) and atomic_write refuse a FIFO and leave it."""
    from groupvit.checkpoint import atomic_write

    model = GroupViT(model_config("small")).eval()
    for name, layout in (("m.safetensors", "groupvit"), ("m.pth", "nvlabs")):
        os.mkfifo(tmp_path / name)
        with pytest.raises(ValueError, match=rf"{name} is a FIFO \(named pipe\), not a regular file"):
            groupvit.save_model(model, tmp_path / name, layout=layout)
    (tmp_path / "hf").mkdir()
    os.mkfifo(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors is a FIFO"):
        groupvit.save_model(model, tmp_path / "hf", layout="hf")
    with pytest.raises(ValueError, match="is a folder, not a regular file"):
        atomic_write(tmp_path / "hf", lambda tmp: Path(tmp).write_text("x"))
    assert all(p.is_fifo() for p in (tmp_path / "m.safetensors", tmp_path / "m.pth", tmp_path / "hf/model.safetensors"))
    assert not [p for p in tmp_path.rglob("*.tmp")]


# Every kind of input path a subcommand reads, given as a FIFO (or a CSV naming a device or a non-image).
SPECIAL_INPUTS = {
    "segment/image": (
        SEG.replace("{in}/ok.png", "{sp}/fifo.png"),
        U,
        r"image .*fifo\.png is a FIFO \(named pipe\), "
        r"not a file",
    ),
    "segment/checkpoint": (
        SEG.replace("{in}/model.safetensors", "{sp}/fifo.safetensors"),
        U,
        r"checkpoint .*fifo\.safetensors is a FIFO",
    ),
    "segment/background-words": (SEG + " --background-words {sp}/fifo.txt", U, r"background words file .* is a FIFO"),
    "segment/thresholds": (SEG + " --background-thresholds {sp}/fifo.json", U, r"thresholds file .* is a FIFO"),
    "classify/image": (CLS.replace("{in}/ok.png", "{sp}/fifo.png"), U, r"image .*fifo\.png is a FIFO"),
    "classify/checkpoint": (CLS.replace("{in}/model.safetensors", "{sp}/fifo.pth"), U, r"fifo\.pth is a FIFO"),
    "eval/checkpoint": (EVAL.replace("{in}/model.safetensors", "{sp}/fifo.pth"), U, r"fifo\.pth is a FIFO"),
    "eval/dataset-image": (EVAL.replace("{in}/voc/", "{sp}/voc/"), U, r"image .*2007_000032\.jpg is a FIFO"),
    "info/checkpoint": ("info --checkpoint {sp}/fifo.pth", U, r"fifo\.pth is a FIFO"),
    "info/config": ("info {sp}/fifo.yaml", U, r"config file .*fifo\.yaml is a FIFO"),
    "convert/src": ("convert {sp}/fifo.pth {tmp}/m.safetensors", U, r"fifo\.pth is a FIFO"),
    "train/csv": (TRN.replace("{in}/pairs.csv", "{sp}/fifo.csv"), U, r"training data .*fifo\.csv is a FIFO"),
    "train/config": (TRN + " --config {sp}/fifo.yaml", U, r"config file .*fifo\.yaml is a FIFO"),
    "train/shard": (
        TRN.replace("{in}/pairs.csv", "{sp}/fifo-{000000..000000}.tar"),
        U,
        r"shard .*fifo-000000\.tar is "
        r"a FIFO",
    ),
    "train/row-dev-zero": (TRN.replace("{in}/pairs.csv", "{sp}/zero.csv"), D, r"/dev/zero is a character device"),
    "train/row-not-an-image": (TRN.replace("{in}/pairs.csv", "{sp}/notimage.csv"), D, r"notes\.jpg is not an image"),
    "demo/config": (DEMO + " --config {sp}/fifo.yaml", U, r"fifo\.yaml is a FIFO"),
    "prepare-nouns/shard": ("prepare-nouns {sp}/fifo-{000000..000000}.tar --out {tmp}/n", U, r"is a FIFO"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(SPECIAL_INPUTS))
def test_special_files_as_inputs_are_named_for_what_they_are(name, inputs, specials, tmp_path, capsys):
    """Class 2: every input path is checked with stat before it is opened: a FIFO does not hang the command, a CSV
    row naming /dev/zero is not read without end, and an existing file that is not an image is called that."""
    argv, code, message = SPECIAL_INPUTS[name]
    line = refused(argv_of(argv, sp=specials, tmp=tmp_path, **{"in": inputs}), capsys, code)
    assert re.search(message, line), line


@pytest.mark.timeout(60)
def test_the_api_and_the_app_check_special_inputs(specials, inputs, tmp_path):
    """Class 2 in the Python API (load_model, load_image, a training table) and the app (its model and uploads)."""
    import gradio as gr

    from groupvit.app import SegmentationApp, load_app_model
    from groupvit.checkpoint import CheckpointError
    from groupvit.image import load_image
    from groupvit.training.data import CaptionTable, read_image_file

    with pytest.raises(CheckpointError, match=r"fifo\.pth is a FIFO"):
        groupvit.load_model(specials / "fifo.pth")
    with pytest.raises(ValueError, match=r"fifo\.png is a FIFO"):
        load_image(specials / "fifo.png")
    with pytest.raises(ValueError, match=r"/dev/zero is a character device"):
        read_image_file(Path("/dev/zero"))
    table = CaptionTable(specials / "zero.csv", lambda image: image, lambda *a: (), seed=0)
    with pytest.raises(RuntimeError, match="no readable sample"):
        table[0]
    assert table.skipped == {"image": 1}
    with pytest.raises(CheckpointError, match=r"fifo\.safetensors is a FIFO"):
        load_app_model(str(specials / "fifo.safetensors"), "cpu")
    app = SegmentationApp(groupvit.load_model(inputs / "model.safetensors"), "small", None, tmp_path)
    os.mkfifo(tmp_path / "upload.png")
    with pytest.raises(gr.Error, match=r"upload\.png is a FIFO"):
        app.read_image(str(tmp_path / "upload.png"))


M16 = "model:\n  projection_dim: 16\n"
# Settings files that say something else than what would run: (content, what every reader must say).
STRICT_CONFIGS = {
    "unknown-section": (M16 + "train:\n  steps: 2\ntrian:\n  batch_size: 4\n",
                        r"unknown section 'trian' \(.*\.yaml, line 5\)"),
    "duplicate-key": (M16 + "train:\n  lr: 1.0e-3\n  steps: 2\n  lr: 1.0\n", r"\.yaml, line 6: duplicate key 'lr' "
                      r"\(also on line 4\)"),
    "infinite-number": (M16 + "train:\n  lr: .inf\n  steps: 2\n", r"\.yaml, line 4: \.inf is not a finite number"),
    "deep": (M16 + "train:\n  extra: " + "[" * 5000 + "]" * 5000 + "\n",
             r"\.yaml, line 4: nested deeper than 32 levels"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(STRICT_CONFIGS))
def test_info_train_and_demo_read_a_config_alike_and_strictly(name, inputs, tmp_path, capsys):
    """Class 4: one strict reader for every YAML: a misspelt section, a duplicate key, a non-finite number and deep
    nesting are refused with the file and line, by `info` and `train` (and `demo` and the API) alike, where `train`
    once trained the defaults of a file with a misspelt section."""
    from groupvit.config import GroupViTConfig
    from groupvit.training.config import TrainConfig

    text, message = STRICT_CONFIGS[name]
    config = tmp_path / f"{name}.yaml"
    config.write_text(text)
    lines = {}
    for command in ("info {cfg}", "train --config {cfg} --data {in}/pairs.csv --out {tmp}/run", "demo --config {cfg} "
                    "--out {tmp}/demo --data {tmp}/synthvoc"):  # fmt: skip
        line = refused(argv_of(command, cfg=config, tmp=tmp_path, **{"in": inputs}), capsys)
        assert re.search(message, line), line
        lines[command.split()[0]] = line.split("error: ", 1)[1]
    assert lines["info"] == lines["train"], lines
    for read in (GroupViTConfig.from_yaml, TrainConfig.from_yaml):
        with pytest.raises(ValueError, match=message):
            read(config)
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()


@pytest.mark.parametrize("override", ["lr=inf", "lr=nan", "lr=.nan", "warmup_lr=-.inf", "betas=[0.9,inf]"])
def test_non_finite_overrides_are_refused(override, inputs, tmp_path, capsys):
    line = refused([*argv_of(TRN, tmp=tmp_path, **{"in": inputs}), override], capsys)
    assert re.search(r"(is not a finite number|betas must be)", line), line
    assert not (tmp_path / "run").exists()


def test_train_uses_the_model_section_of_its_config(inputs, tmp_path, capsys):
    """A training config with a model section trains that model (as `info FILE` shows it), not the default."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_MODEL, "train": {"steps": 1, "batch_size": 4, "extra": {"a": {"b": 1}}}}))
    assert main(["train", "--config", str(config), "--data", str(inputs / "pairs.csv"), "--out", str(tmp_path / "run"),
                 *TRAIN]) == 0  # fmt: skip
    assert main(["info", str(config)]) == 0
    assert '"width": 32' in capsys.readouterr().out
    from groupvit.config import GroupViTConfig

    assert groupvit.load_model(tmp_path / "run" / "model.safetensors").config == GroupViTConfig.from_yaml(config)
    # the strict reader's mappings are plain dicts in the checkpoint, which then loads with weights_only
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["train_config"]["extra"] == {"a": {"b": 1}}


STRICT_JSON = {
    "duplicate-key": ('{"cat": 0.5, "cat": 0.9}', r"duplicate key 'cat'"),
    "nan": ('{"cat": NaN}', r"NaN is not a finite number"),
    "overflow": ('{"cat": 1e999}', r"1e999 is not a finite number"),
    "deep": ("[" * 100_000 + "]" * 100_000, r"nested deeper than 32 levels"),
}


@pytest.mark.parametrize("name", list(STRICT_JSON))
def test_every_json_the_package_reads_is_read_strictly(name, inputs, tmp_path, capsys):
    """Class 4, JSON: per-class thresholds (segment, eval) and a transformers config.json (every checkpoint reader)."""
    text, message = STRICT_JSON[name]
    (tmp_path / "thresholds.json").write_text(text)
    line = refused(argv_of(SEG + " --background-thresholds {tmp}/thresholds.json", tmp=tmp_path,
                           **{"in": inputs}), capsys)  # fmt: skip
    assert re.search(rf"thresholds\.json: {message}", line), line
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(text.replace('"cat"', '"model_type"'))
    (hf / "model.safetensors").write_bytes(b"")
    line = refused(["convert", str(hf), str(tmp_path / "m.safetensors")], capsys)
    assert re.search(r"config\.json: " + message.replace("'cat'", "'model_type'"), line), line


@pytest.fixture(scope="module")
def nonsense(tmp_path_factory) -> Path:
    """A checkpoint whose weights hold NaN, and a float TIFF of NaN pixels."""
    root = tmp_path_factory.mktemp("nonsense")
    model = GroupViT(model_config("small")).eval()
    with torch.no_grad():
        model.visual.pos_embed[0, 0, 0] = float("nan")
    groupvit.save_model(model, root / "nan.safetensors")
    Image.fromarray(np.full((48, 64), np.nan, dtype=np.float32), mode="F").save(root / "nan.tiff")
    return root


# (command, exit code, message) for each kind of nonsense, given to each command that takes it.
NONSENSE = {
    "segment/invisible-class": (SEG.replace("cat,dog", "cat,\u200b\u2060"), U, r"class name '.*' is invisible"),
    "segment/class-with-newline": (SEG.replace("cat,dog", "'cat\ndog,bird'"), U, r"holds a line break"),
    "segment/background-word-invisible": (SEG + " --background-words sky,\u200b", U, r"is invisible"),
    "segment/nan-weights": (SEG.replace("{in}/model.safetensors", "{ns}/nan.safetensors"), U,
                            r"nan\.safetensors: 1 tensors hold NaN or infinite values, e\.g\. visual\.pos_embed"),
    "segment/nan-image": (SEG.replace("{in}/ok.png", "{ns}/nan.tiff"), D, r"nan\.tiff holds 3,072 NaN"),
    "classify/invisible-class": (CLS.replace("cat,dog", "cat,\ufeff"), U, r"is invisible"),
    "classify/class-with-newline": (CLS.replace("cat,dog", "'cat,do\rg'"), U, r"holds a line break"),
    "classify/nan-weights": (CLS.replace("{in}/model.safetensors", "{ns}/nan.safetensors"), U, r"hold NaN"),
    "classify/nan-image": (CLS.replace("{in}/ok.png", "{ns}/nan.tiff"), D, r"nan\.tiff holds 3,072 NaN"),
    "eval/nan-weights": (EVAL.replace("{in}/model.safetensors", "{ns}/nan.safetensors"), U, r"hold NaN"),
    "info/nan-weights": ("info --checkpoint {ns}/nan.safetensors", U, r"hold NaN"),
    "convert/nan-weights": ("convert {ns}/nan.safetensors {tmp}/m.safetensors", U, r"hold NaN"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NONSENSE))
def test_nonsense_is_refused_before_the_model_runs(name, inputs, nonsense, tmp_path, capsys):
    """Class 5: invisible class names, names with line breaks, weights holding NaN and all-NaN images are refused
    with what is wrong (a bad image of a batch is skipped with it, exit 1), never segmented or classified."""
    argv, code, message = NONSENSE[name]
    if code == EXIT_USAGE:
        line = refused(argv_of(argv, ns=nonsense, tmp=tmp_path, **{"in": inputs}), capsys)
    else:
        code_now, out, line = run(argv_of(argv, ns=nonsense, tmp=tmp_path, **{"in": inputs}), False, capsys)
        assert code_now == code and "Traceback" not in out + line and "%" not in out, line  # no image answered
    assert re.search(message, line), line
    assert not list(tmp_path.rglob("*.*"))


def test_nonsense_in_the_api_and_the_app(inputs, nonsense, tmp_path, capsys):
    """Class 5 in the Python API and the app; a visible name with zero-width characters inside is cleaned, with a
    warning, and then means the same as the name without them."""
    import gradio as gr

    from groupvit.app import SegmentationApp
    from groupvit.checkpoint import CheckpointError
    from groupvit.classification import ZeroShotClassifier
    from groupvit.image import load_image
    from groupvit.segmentation import ZeroShotSegmenter, check_class_names

    model = groupvit.load_model(inputs / "model.safetensors")
    with pytest.warns(UserWarning, match=r"removed zero-width or format characters from 1 class name"):
        assert check_class_names("c\u200bat, dog") == ["cat", "dog"]
    for make in (ZeroShotSegmenter, ZeroShotClassifier):
        with pytest.raises(ValueError, match="is invisible"):
            make(model, ["cat", "\u200b"])
        with pytest.raises(ValueError, match="line break"):
            make(model, ["cat\ndog"])
    with pytest.raises(ValueError, match=r"the image holds 12 NaN or infinite values of 12"):
        load_image(np.full((2, 2, 3), np.nan, dtype=np.float32))
    one_inf = np.full((3, 3, 3), 0.5)
    one_inf[1, 2, 0] = np.inf
    with pytest.raises(ValueError, match=r"holds 1 NaN or infinite values of 27"):
        load_image(one_inf)
    with pytest.raises(CheckpointError, match="hold NaN"):
        groupvit.load_model(nonsense / "nan.safetensors")
    app = SegmentationApp(model, "small", None, tmp_path)
    shutil.copy(nonsense / "nan.tiff", tmp_path / "nan.tiff")
    shutil.copy(inputs / "ok.png", tmp_path / "ok.png")
    for path, classes, message in ((tmp_path / "ok.png", "cat,\u200b", "is invisible"),
                                   (tmp_path / "ok.png", "cat\ndog", "line break"),
                                   (tmp_path / "nan.tiff", "cat,dog", r"nan\.tiff holds 3,072 NaN")):  # fmt: skip
        with pytest.raises(gr.Error, match=message):
            app.segment(str(path), classes, 0.5, "whole")
    log = capsys.readouterr().out.splitlines()
    assert len(log) == 3 and all(line.startswith("groupvit app: refused a request: ") for line in log), log


def bounded_options(command: str) -> list[argparse.Action]:
    from groupvit.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return [a for a in sub._actions if a.option_strings and a.type is not None]


@pytest.mark.parametrize("command", ["demo", "segment", "train", "prepare-nouns", "eval", "classify", "app"])
def test_every_size_option_is_bounded_and_says_its_bound(command, capsys):  # the others take no numbers
    """Class 3: every numeric option of every subcommand has an upper bound, says it in --help, and refuses a value
    past it in one line before any work (classify --short-side 200000 once allocated 22 GB)."""
    from groupvit.checks import port, share, unit_float

    options = bounded_options(command)
    assert options
    for action in options:
        if action.type in (port, share, unit_float) or action.choices:  # bounded by their own range
            continue
        assert hasattr(action.type, "limit"), action.option_strings
        limit = action.type.limit
        assert f"at most {limit:,}" in action.help, action.help
        value = ",".join(["0.5"] * (limit + 1)) if "," in (action.metavar or "") else str(limit + 1)  # a list
        code, _, err = run([command, action.option_strings[0], value], False, capsys)
        assert code == EXIT_USAGE and f"over the limit of {limit:,}" in err, err


@pytest.mark.parametrize("override", ["batch_size=100000", "image_size=100000", "workers=10000", "minutes=1e9"])
def test_training_sizes_from_a_config_are_bounded(override, inputs, tmp_path, capsys):
    line = refused([*argv_of(TRN, tmp=tmp_path, **{"in": inputs}), override], capsys)
    assert f"{override.split('=')[0]}=" in line and "is over the limit of" in line, line


def test_work_is_checked_against_memory_before_it_starts(inputs, tmp_path, capsys, monkeypatch):
    """Class 3: the memory a request implies (classify's resize, segment's per-pixel results) is compared with what
    the machine has before the work starts, in the API and the CLI."""
    from groupvit.classification import ZeroShotClassifier

    monkeypatch.setattr("groupvit.checks.available_memory", lambda: 100_000)
    classifier = ZeroShotClassifier(groupvit.load_model(inputs / "model.safetensors"), ["cat", "dog"], short_side=2048)
    # ok.png is 64x48: resized to a 2048 short side, 2731x2048 RGB (and Pillow's copy) = 33.6 MB.
    with pytest.raises(ValueError, match=r"a 64x48 image resized to a short side of 2048 needs about 33\.6 MB of "
                       r"memory, more than the 100,000 bytes available"):  # fmt: skip
        classifier(inputs / "ok.png")
    code, _, err = run(shlex.split(SEG.replace("{in}", str(inputs)).replace("{tmp}", str(tmp_path))), False, capsys)
    # its per-pixel results: 3072 pixels x (8 bytes x 3 channels + 32) = 172,032 bytes
    assert code == EXIT_DATA and "ok.png: a 64x48 image with 2 classes needs about 172,032 bytes of memory" in err, err


def forged_zip(path: Path, declared: int) -> None:
    """Make the last record of the zip at `path` declare `declared` uncompressed bytes (its directory entry)."""
    import struct

    data = bytearray(path.read_bytes())
    entry = data.rfind(b"PK\x01\x02")
    data[entry + 24 : entry + 28] = struct.pack("<I", declared)
    path.write_bytes(bytes(data))


def test_a_zip_bomb_checkpoint_is_refused_from_its_directory(inputs, tmp_path, capsys, monkeypatch):
    """Class 3: a .pth whose records declare 4 GB is refused from the zip directory before any record is read."""
    import zipfile

    torch.save({"model": {"w": torch.zeros(4)}}, tmp_path / "bomb.pth")
    forged_zip(tmp_path / "bomb.pth", 4_000_000_000)
    declared = sum(i.file_size for i in zipfile.ZipFile(tmp_path / "bomb.pth").infolist())
    assert declared > 4_000_000_000
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: opened.append(a) or pytest.fail("a record was read"))
    for argv in (["convert", str(tmp_path / "bomb.pth"), str(tmp_path / "m.safetensors")],
                 ["info", "--checkpoint", str(tmp_path / "bomb.pth")]):  # fmt: skip
        line = refused(argv, capsys)
        assert re.search(r"bomb\.pth declares 4 GB of records in a [\d,]+ bytes file \(a zip bomb\?\)", line), line
    assert not opened


def fill_the_disk(monkeypatch, error: BaseException) -> None:
    """Every checkpoint writer (torch.save, safetensors' save_file) writes part of its file, then fails as on a full
    disk."""
    import groupvit.checkpoint

    def half(original):
        def write(obj, path, *args, **kwargs):
            Path(path).write_bytes(b"half a file")
            raise error

        return write

    monkeypatch.setattr(torch, "save", half(torch.save))
    monkeypatch.setattr(groupvit.checkpoint, "save_file", half(groupvit.checkpoint.save_file))


DISK_FULL = {
    "convert": ("convert {in}/model.safetensors {tmp}/m.safetensors", "m.safetensors"),
    "convert-nvlabs": ("convert {in}/model.safetensors {tmp}/m.pth --to nvlabs", "m.pth"),
    "convert-hf": ("convert {in}/model.safetensors {tmp}/hf --to hf", "model.safetensors"),
    "train": (TRN + " --steps 2 --save-every 1", "checkpoint.pt"),
}


@pytest.mark.parametrize("error", ["ENOSPC", "torch-write-failed"])
@pytest.mark.parametrize("command", list(DISK_FULL))
def test_a_full_disk_is_said_in_one_line_and_leaves_nothing_half_written(command, error, inputs, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    """Class 6: a disk that fills during convert or train's checkpoint save: one line saying so and which file, exit
    1, no temporary or half-written file left. torch.save reports a full disk as a RuntimeError: that is recognised
    from the file system's free space."""
    import errno

    if error == "ENOSPC":
        fill_the_disk(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    else:
        fill_the_disk(monkeypatch, RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"))
        monkeypatch.setattr(os, "statvfs", lambda folder: os.statvfs_result((4096,) * 2 + (0,) * 8))
    argv, name = DISK_FULL[command]
    line = refused(argv_of(argv, tmp=tmp_path, **{"in": inputs}), capsys, EXIT_DATA)
    assert re.search(rf"error: the disk is full: no space left to write .*{re.escape(name)}; nothing was written", line)
    left = [p.name for p in tmp_path.rglob("*") if p.is_file() and "tensorboard" not in p.parts]
    assert not [n for n in left if n.endswith(".tmp") or n in (name, "checkpoint.prev.pt")], left


def test_a_non_finite_loss_says_what_is_kept(inputs, tmp_path, capsys):
    """Class 6: a run that diverges stops saying whether a checkpoint was kept, and leaves no train_config.json when
    nothing was saved. An lr of 1e30 makes the loss non-finite at the step after the first update."""
    argv = argv_of(TRN + " --steps 4 lr=1e30 warmup_lr=1e30", tmp=tmp_path, **{"in": inputs})
    line = refused(argv, capsys, EXIT_DATA)
    assert re.search(r"non-finite loss at step 1 .*; stopped\. No checkpoint was written; start again", line), line
    assert "report it" not in line and not (tmp_path / "run" / "train_config.json").exists()
    line = refused([*argv, "--overwrite", "--save-every", "1"], capsys, EXIT_DATA)
    assert re.search(r"The last good checkpoint \(.*checkpoint\.pt\) is kept; resume from it", line), line
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 1 and (tmp_path / "run" / "train_config.json").is_file()


def test_int8_weights_and_nonsense_scene_options_are_named(inputs, tmp_path, capsys):
    """Class 6: weights of the right shapes but an integer dtype, and scene options out of range, get a message
    about what is wrong instead of load_state_dict's or numpy's."""
    from safetensors.torch import load_file

    weights = load_file(inputs / "model.safetensors")
    quantised = {k: v.to(torch.int8) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(quantised, tmp_path / "int8.safetensors")
    for argv in (["info", "--checkpoint", str(tmp_path / "int8.safetensors")],
                 ["convert", str(tmp_path / "int8.safetensors"), str(tmp_path / "m.safetensors")]):  # fmt: skip
        line = refused(argv, capsys)
        assert re.search(r"tensors have the right shapes but another kind of number, e\.g\. logit_scale is "
                         r"torch\.int8, .*; GroupViT's weights are floating point", line), line  # fmt: skip
    for scene, message in (("max_objects=-1", r"max_objects=-1 must be an integer from 1 to 20"),
                           ("size=0", r"size=0 must be an integer from 16"),
                           ("object_scale=[0.5,2]", r"object_scale=\[0\.5, 2\] must be \[low, high\]"),
                           ("same_class=1.5", r"same_class=1\.5 must be a probability")):  # fmt: skip
        line = refused(["demo", "--scenes-only", "1", "--out", str(tmp_path / "s"), "--scene", scene], capsys)
        assert re.search(rf"scene options: {message}", line), line
    assert not (tmp_path / "s").exists()


def test_sigterm_during_download_says_the_part_is_kept(tmp_path):
    """Class 6: SIGTERM while `download` fetches an NVlabs file (from a local server that stalls after 64 KiB) exits
    130 with a word that the .part file is kept to resume, and keeps it."""
    import http.server
    import signal
    import threading
    import time

    release = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 20))
            self.end_headers()
            self.wfile.write(b"\0" * (64 << 10))
            self.wfile.flush()
            release.wait(60)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(GROUPVIT_CACHE=str(tmp_path), GROUPVIT_NVLABS_URL=f"http://127.0.0.1:{server.server_port}",
               OMP_NUM_THREADS="1", GROUPVIT_DEBUG="0")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "groupvit", "download", "gcc_yfcc@nvlabs"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        part = tmp_path / "pretrained" / "group_vit_gcc_yfcc_30e-879422e0.pth.part"
        deadline = time.monotonic() + 120
        while not (part.is_file() and part.stat().st_size >= 64 << 10) and time.monotonic() < deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        release.set()
        server.shutdown()
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert re.search(r"groupvit download: interrupted; the partial download \(65,536 bytes, .*\.pth\.part\) is kept; "
                     r"run the same command again to resume it", err), err  # fmt: skip
    assert part.stat().st_size == 64 << 10


def test_the_app_logs_a_failed_request_as_one_line(inputs, tmp_path, capsys, monkeypatch):
    """Class 6: a request the model fails on (out of memory, an unexpected error) is one line in the server log and
    a message on the page, no traceback."""
    import gradio as gr

    from groupvit.app import SegmentationApp
    from groupvit.segmentation import ZeroShotSegmenter

    app = SegmentationApp(groupvit.load_model(inputs / "model.safetensors"), "small", None, tmp_path)
    shutil.copy(inputs / "ok.png", tmp_path / "ok.png")
    for error in (MemoryError(), RuntimeError("CUDA error: an illegal memory access was encountered")):

        def fail(self, image, error=error):
            raise error

        monkeypatch.setattr(ZeroShotSegmenter, "__call__", fail)
        with pytest.raises(gr.Error) as failed:
            app.segment(str(tmp_path / "ok.png"), "cat", 0.5, "whole")
        assert failed.value.print_exception is False
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "groupvit app: failed a request: out of memory; use smaller inputs (images, batch size, classes) or a machine "
        "with more memory",
        "groupvit app: failed a request: RuntimeError: CUDA error: an illegal memory access was encountered "
        "(unexpected; rerun with --debug for the traceback and report it)",
    ]
    assert "Traceback" not in err
