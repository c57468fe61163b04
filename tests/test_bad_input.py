"""Bad input to every subcommand, as a new user gives it: one line naming the input and what to do, exit code 2 for
usage errors and 1 for bad data (README "Limits and errors"), no traceback, nothing written under a final name, the
inputs unchanged, and bounded memory for a small file that describes a huge image.

Most cases call `groupvit.cli.main` in process; those marked `real=True` run the installed command, to check the
real exit code and stderr."""

from __future__ import annotations

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
    "segment/folder-as-image": Case(SEG.replace("ok.png", "folder.png"), U, r"image not found: .*folder\.png"),
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
    "train/out-holds-a-run": Case(TRN, U, r"already holds checkpoint\.pt and 2 more; pass --resume",
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
