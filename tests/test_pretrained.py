"""Released weights by name (groupvit.pretrained), with no network: a hand-built Hugging Face cache, a local HTTP
server standing in for the NVlabs release, and the CLI's messages when neither can be reached."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import inspect
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import groupvit
from groupvit import pretrained
from groupvit.checkpoint import CheckpointError
from groupvit.cli import main
from groupvit.config import GroupViTConfig, model_config
from groupvit.pretrained import PRETRAINED, DownloadError, Source
from tests.conftest import randomize

YFCC_REVISION = PRETRAINED["gcc_yfcc"].sources[0].revision
REDCAPS_REVISION = PRETRAINED["gcc_redcaps"].sources[0].revision


def embed(model: groupvit.GroupViT) -> torch.Tensor:
    """Image and text embeddings of a fixed input (also run in the subprocesses below, from this source)."""
    size = model.config.vision.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    ids = groupvit.tokenize(["a photo of a bird", "a red car parked outside"])
    with torch.no_grad():
        return torch.cat([model.encode_image(pixels), model.encode_text(ids)])


def groupvit_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupvit", *args], capture_output=True, text=True, env=env)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- a hand-built Hugging Face cache


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, hf_small) -> Path:
    """HF_HUB_CACHE with gcc_yfcc (save_pretrained: config.json + model.safetensors) and gcc_redcaps (config.json +
    pytorch_model.bin only, as on the yfcc repo's main branch) at the pinned commits, refs/main naming them."""
    hf, folder = hf_small
    root = tmp_path_factory.mktemp("hf_hub")
    for repo, revision in (("groupvit-gcc-yfcc", YFCC_REVISION), ("groupvit-gcc-redcaps", REDCAPS_REVISION)):
        base = root / f"models--nvidia--{repo}"
        snapshot = base / "snapshots" / revision
        if repo.endswith("yfcc"):
            hf.save_pretrained(snapshot)
        else:
            snapshot.mkdir(parents=True)
            (snapshot / "config.json").write_text((folder / "config.json").read_text())
            torch.save(hf.state_dict(), snapshot / "pytorch_model.bin")
        (base / "refs").mkdir()
        (base / "refs" / "main").write_text(revision)
    return root


def offline_env(hf_cache: Path, groupvit_cache: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache), "GROUPVIT_CACHE": str(groupvit_cache),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_released_names_load_from_the_hub_cache_through_the_python_api(hf_cache, hf_small, tmp_path):
    reference = embed(groupvit.load_model(hf_small[1]))
    out = tmp_path / "embeddings.pt"
    specs = ["gcc_yfcc", "gcc_redcaps", "gcc_yfcc@hf", f"hf-hub:nvidia/groupvit-gcc-yfcc@{YFCC_REVISION}",
             "hf-hub:nvidia/groupvit-gcc-redcaps"]  # fmt: skip
    script = f"import sys, torch, groupvit\n{inspect.getsource(embed)}\n"
    script += "torch.save({s: embed(groupvit.load_model(s)) for s in sys.argv[2:]}, sys.argv[1])"
    run = subprocess.run([sys.executable, "-c", script, str(out), *specs], capture_output=True, text=True,
                         env=offline_env(hf_cache, tmp_path / "empty"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded = torch.load(out, weights_only=True)
    assert list(loaded) == specs
    for spec, value in loaded.items():
        assert (value - reference).abs().max() < 1e-6, spec
    assert not (tmp_path / "empty").exists()  # the NVlabs source was never needed


def test_released_names_through_the_cli(hf_cache, hf_small, tmp_path):
    env = offline_env(hf_cache, tmp_path / "cache")
    run = groupvit_cli("convert", "gcc_yfcc", str(tmp_path / "yfcc.safetensors"), env=env)
    assert run.returncode == 0, run.stderr
    delta = embed(groupvit.load_model(tmp_path / "yfcc.safetensors")) - embed(groupvit.load_model(hf_small[1]))
    assert delta.abs().max() < 1e-6
    listing = groupvit_cli("list", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {tuple(line.split()[:2]): line for line in listing.stdout.splitlines()[1:5]}
    assert str(hf_cache / "models--nvidia--groupvit-gcc-yfcc" / "snapshots" / YFCC_REVISION) in rows["gcc_yfcc", "hf"]
    assert rows["gcc_yfcc", "nvlabs"].split()[-1] == "no" and "223 MB" in rows["gcc_redcaps", "hf"]
    assert listing.stdout.count("non-commercial") == 2


def test_empty_cache_offline_is_one_line_and_exit_2(tmp_path):
    run = groupvit_cli("info", "--checkpoint", "gcc_yfcc", env=offline_env(tmp_path / "hf", tmp_path / "gv"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    line = run.stderr.strip()
    assert line.startswith("groupvit info: error: cannot get the gcc_yfcc weights")
    assert "hf (nvidia/groupvit-gcc-yfcc@751f6d9): offline" in line and "nvlabs (group_vit_gcc_yfcc_30e-" in line
    assert "`groupvit download gcc_yfcc`" in line and "pass its path" in line


def test_unreachable_release_server_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GROUPVIT_NVLABS_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("GROUPVIT_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["download", "gcc_redcaps", "--source", "nvlabs"]) == 2
    line = capsys.readouterr().err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("groupvit download: error: cannot get the gcc_redcaps")
    assert "Connection refused" in line and "`groupvit download gcc_redcaps`" in line
    assert not list((tmp_path / "pretrained").glob("*.pth*"))


@pytest.mark.parametrize("command", ["segment", "classify", "download", "app", "info"])
def test_no_network_fails_at_once_in_one_line_without_hub_retries(command, tmp_path, monkeypatch, capfd):
    """The hub endpoint and the release server on closed local ports, empty caches: huggingface_hub would retry
    five times, logging each retry; the command says what failed in our one line only."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("GROUPVIT_NVLABS_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("GROUPVIT_CACHE", str(tmp_path / "gv"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    image = [str(tmp_path / "a.png")]
    argv = {"segment": [*image, "--classes", "cat", "--out", str(tmp_path / "out"), "--checkpoint", "gcc_yfcc"],
            "classify": [*image, "--classes", "cat,dog", "--checkpoint", "gcc_yfcc"], "download": ["gcc_yfcc"],
            "app": ["--checkpoint", "gcc_yfcc"], "info": ["--checkpoint", "gcc_yfcc"]}[command]  # fmt: skip
    assert main([command, *argv]) == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"groupvit {command}: error: cannot get the gcc_yfcc weights; tried hf (nvidia/")
    assert "unreachable (Connection refused) and the files are not in the Hugging Face cache" in err
    assert "Retry" not in err and "thrown while requesting" not in err
    with pytest.raises(DownloadError, match="unreachable") as error:
        groupvit.load_model("gcc_yfcc")
    assert "\n" not in str(error.value) and capfd.readouterr().err == ""


# ----------------------------------------------------------------------------- the NVlabs source, served locally


class ReleaseServer(http.server.ThreadingHTTPServer):
    """Serves `files` (name -> bytes), honouring Range when `ranges`; `cut_next` makes the next GET stop half way."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReleaseHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ranges, self.cut_next = True, False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/release"


class ReleaseHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: ReleaseServer = self.server  # type: ignore[assignment]
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path.removeprefix("/release/"))
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
        start = start if server.ranges else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if server.cut_next:
            server.cut_next = False
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def release(tmp_path, monkeypatch):
    """A random NVlabs-layout .pth (64-wide heads, multi-label temperature) served as gcc_yfcc's NVlabs file."""
    cfg = GroupViTConfig.from_dict({"vision": {"image_size": 32, "patch_size": 8, "width": 64, "depths": [1, 1],
                                               "num_heads": 1, "num_group_tokens": [4, 0], "num_output_groups": [2]},
                                    "text": {"width": 64, "layers": 1, "heads": 1}, "projection_dim": 32,
                                    "projection_hidden_dim": 64, "multi_label_logit_scale": True})  # fmt: skip
    torch.manual_seed(0)
    model = randomize(groupvit.GroupViT(cfg))
    groupvit.save_model(model, tmp_path / "release.pth", layout="nvlabs")
    data = (tmp_path / "release.pth").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server = ReleaseServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GROUPVIT_NVLABS_URL", server.url)
    monkeypatch.setenv("GROUPVIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def serve_as(name: str) -> None:
        server.files[name] = data
        entry = PRETRAINED["gcc_yfcc"]
        sources = tuple(dataclasses.replace(s, location=name) if s.kind == "nvlabs" else s for s in entry.sources)
        monkeypatch.setitem(PRETRAINED, "gcc_yfcc", dataclasses.replace(entry, sources=sources))

    yield model, digest, server, serve_as
    server.shutdown()
    server.server_close()
    thread.join()


def test_nvlabs_file_is_downloaded_once_verified_and_cached(release, tmp_path):
    model, digest, server, serve_as = release
    name = f"group_vit_test-{digest[:8]}.pth"
    serve_as(name)
    loaded = groupvit.load_model("gcc_yfcc@nvlabs")
    assert (embed(loaded) - embed(model)).abs().max() < 1e-6
    assert loaded.multi_label_logit_scale.item() == model.multi_label_logit_scale.item()  # the NVlabs file keeps it
    assert server.requests == [(f"/release/{name}", None)]
    assert sorted(p.name for p in (tmp_path / "cache" / "pretrained").glob("*.pth*")) == [name]
    again = groupvit.load_model("gcc_yfcc", source="nvlabs")
    assert len(server.requests) == 1  # read from the cache: no request
    pairs = zip(loaded.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert pretrained.cached(PRETRAINED["gcc_yfcc"].sources[1]) == tmp_path / "cache" / "pretrained" / name


def test_wrong_checksum_prefix_is_refused_and_nothing_is_kept(release, tmp_path):
    _, digest, _, serve_as = release
    wrong = "%08x" % (int(digest[:8], 16) ^ 0xFFFFFFFF)
    serve_as(f"group_vit_test-{wrong}.pth")
    with pytest.raises(CheckpointError, match=f"SHA-256 is {digest}, expected one starting with {wrong}"):
        groupvit.load_model("gcc_yfcc@nvlabs")
    assert not list((tmp_path / "cache" / "pretrained").glob("*.pth*"))


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_interrupted_download_leaves_no_file_and_the_next_call_completes_it(release, tmp_path, ranges):
    model, digest, server, serve_as = release
    name = f"group_vit_test-{digest[:8]}.pth"
    serve_as(name)
    server.ranges, server.cut_next = ranges, True
    with pytest.raises(DownloadError, match="connection closed before the end of the file"):
        pretrained.download("gcc_yfcc", source="nvlabs")
    cache = tmp_path / "cache" / "pretrained"
    assert not (cache / name).exists()
    kept = (cache / f"{name}.part").stat().st_size
    assert 0 < kept < len(server.files[name])
    assert pretrained.download("gcc_yfcc@nvlabs") == cache / name
    assert server.requests[1] == (f"/release/{name}", f"bytes={kept}-")
    assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == digest and not (cache / f"{name}.part").exists()
    assert (embed(groupvit.load_model(cache / name)) - embed(model)).abs().max() < 1e-6


def test_the_app_names_released_weights_and_their_licence(release):
    model, digest, _, serve_as = release
    serve_as(f"group_vit_test-{digest[:8]}.pth")
    pretrained.download("gcc_yfcc@nvlabs")  # as `groupvit app` does before importing the app (it goes offline)
    from groupvit.app import load_app_model

    loaded, description, warning = load_app_model("gcc_yfcc@nvlabs", "cpu")
    assert warning is None and (embed(loaded) - embed(model)).abs().max() < 1e-6
    entry = PRETRAINED["gcc_yfcc"]
    assert description == f"`gcc_yfcc@nvlabs`, {entry.description}. Licence: {pretrained.NVIDIA_NC}"


def test_without_huggingface_hub_the_next_source_is_tried(release, monkeypatch):
    model, digest, _, serve_as = release
    serve_as(f"group_vit_test-{digest[:8]}.pth")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(DownloadError, match=r"huggingface_hub is not installed \(pip install 'groupvit\[hub\]'\)"):
        pretrained.fetch(PRETRAINED["gcc_yfcc"].sources[0])
    assert (embed(groupvit.load_model("gcc_yfcc")) - embed(model)).abs().max() < 1e-6  # hf, then nvlabs


# ----------------------------------------------------------------------------- names, presets and random weights


def test_a_preset_name_is_not_a_checkpoint(small_checkpoint, capsys):
    assert groupvit.list_pretrained() == ["gcc_yfcc", "gcc_redcaps", "synthvoc"]
    assert main(["info", "--checkpoint", "small"]) == 2
    err = capsys.readouterr().err
    assert "'small' is a model preset without released weights" in err and "--random-init small" in err
    with pytest.raises(CheckpointError, match=r"checkpoint not found: no/such\.pth"):
        groupvit.load_model("no/such.pth")
    with pytest.raises(ValueError, match="has no source 'mirror'"):
        pretrained.resolve("gcc_yfcc@mirror")
    with pytest.raises(ValueError, match="names source 'hf' but --source is 'nvlabs'"):
        pretrained.resolve("gcc_yfcc@hf", source="nvlabs")
    with pytest.raises(ValueError, match="--source applies to released names"):
        pretrained.resolve(small_checkpoint, source="nvlabs")
    with pytest.raises(ValueError, match="expected hf-hub:ORG/REPO"):
        pretrained.resolve("hf-hub:no-slash")


def test_random_init_gives_the_preset_architecture_untrained():
    with torch.device("meta"):  # the architecture only: 55 M parameters are slow to initialise
        model = pretrained.random_init("gcc_yfcc", device="meta")
    assert model.config == model_config("gcc_yfcc") and not model.training
    assert sum(p.numel() for p in model.parameters()) == 55_726_610  # the released model, multi-label temperature too
    small = pretrained.random_init("small")  # the same seed, the same weights; another seed, others
    assert torch.equal(small.visual.pos_embed, pretrained.random_init("small").visual.pos_embed)
    assert not torch.equal(small.visual.pos_embed, pretrained.random_init("small", seed=1).visual.pos_embed)


def test_random_init_cli(tmp_path, capsys):
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "grey.png"), "--classes", "cat", "--random-init", "small", "--mode",
                 "whole", "--out", str(out)]) == 0  # fmt: skip
    assert "untrained random weights (small architecture)" in capsys.readouterr().err
    assert json.loads((out / "grey.json").read_text())["checkpoint"] == "random-init small"
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "x.png", "--classes", "cat", "--random-init", "small", "--checkpoint", "gcc_yfcc"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_package_source_is_a_file_in_the_installed_package(monkeypatch):
    source = Source("package", "configs/small.yaml")
    shipped = pretrained.Pretrained("shipped", "a file in the wheel", "Apache-2.0", (source,))
    monkeypatch.setitem(PRETRAINED, "shipped", shipped)
    assert pretrained.resolve("shipped") == Path(groupvit.__file__).parent / "configs" / "small.yaml"
    monkeypatch.setitem(PRETRAINED, "shipped", dataclasses.replace(shipped, sources=(Source("package", "no.bin"),)))
    with pytest.raises(DownloadError, match=r"no\.bin is missing from the installed package"):
        pretrained.resolve("shipped")


# ----------------------------------------------------------------------------- benchmarks/check_released.py


def test_check_released_matches_transformers_logits(hf_small, capsys):
    from benchmarks.check_released import EXPECTED, clip_pixels, image_text_logits
    from benchmarks.check_released import main as check_released

    assert EXPECTED == {"gcc_yfcc": (13.3523, 6.3629), "gcc_redcaps": (16.1873, 8.6230)}  # transformers' script
    grey = clip_pixels(Image.fromarray(np.full((48, 64, 3), 51, np.uint8)), size=32)
    assert grey.shape == (1, 3, 32, 32)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = (51 / 255 - mean) / std  # CLIP's statistics, as transformers' CLIPImageProcessor
    torch.testing.assert_close(grey[0, :, 5, 7], expected)
    hf, path = hf_small
    pixels = clip_pixels(Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), np.uint8)), 64)
    ours = image_text_logits(groupvit.load_model(path), pixels)
    with torch.no_grad():
        theirs = hf(input_ids=groupvit.tokenize(["a photo of a cat", "a photo of a dog"]), pixel_values=pixels)
    torch.testing.assert_close(ours, theirs.logits_per_image, atol=1e-4, rtol=1e-5)
    with pytest.raises(SystemExit) as exit_:
        check_released(["--help"])
    assert exit_.value.code == 0 and "--atol" in capsys.readouterr().out
