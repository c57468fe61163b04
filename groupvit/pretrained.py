"""Released GroupViT weights by name: a table of sources, verified downloads, a local cache.

`resolve("gcc_yfcc")` returns a local file or folder that `load_model` reads, fetching it on first use:

* from the Hugging Face Hub (transformers layout) at a pinned commit, through `huggingface_hub` and its cache
  (`HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_TOKEN`); the commit fixes each file's content;
* from the NVlabs release (`gcc_yfcc@nvlabs`): a `.pth` whose name ends in the first hex digits of its SHA-256,
  checked as torch.hub does, cached under `$GROUPVIT_CACHE/pretrained` (default ~/.cache/groupvit/pretrained);
* from a file shipped inside this package (kind "package").

`synthvoc` is a model this package trained on its own captioned scenes and ships inside itself: it loads offline.
`hf-hub:ORG/REPO[@REVISION]` names any transformers-layout GroupViT on the hub. Sources are tried in table order
until one works; when none does the error says which were tried and why, on one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .config import list_presets
from .errors import CheckpointError
from .errors import DownloadError as DownloadError
from .model import GroupViT

NVIDIA_NC = "NVIDIA Source Code License-NC: non-commercial use (research or evaluation) only"
# The release files of the authors' fork, tried in this order. The NVlabs README points to
# github.com/xvjiarui/GroupViT#benchmark-results for them; the yfcc file's URL was seen under the first base (the
# authors' demo app), the redcap file's under the second (PGSeg's README). GROUPVIT_NVLABS_URL replaces both.
NVLABS_MIRRORS = (
    "https://github.com/xvjiarui/GroupViT/releases/download/v1.0.0",
    "https://github.com/xvjiarui/GroupViT-1/releases/download/v1.0.0",
)
SOURCE_KINDS = ("hf", "nvlabs", "package")
CHUNK = 1 << 16
TIMEOUT = 60  # seconds without data before a download gives up (it resumes on the next call)
# Seconds to open a connection to a source before calling it unreachable. Without this check, huggingface_hub
# retries an unreachable hub five times over about 25 s, logging two lines each time.
CONNECT_TIMEOUT = 3


@dataclass(frozen=True)
class Source:
    """Where one copy of a model's weights lives.

    hf: `location` is ORG/REPO in the transformers layout, `revision` the pinned commit; model.safetensors is read
    where present, else pytorch_model.bin (with weights_only=True). nvlabs: `location` is the file name, ending in
    -<sha256 prefix>.pth. package: `location` is a path inside the installed `groupvit` package.
    """

    kind: str
    location: str
    revision: str = ""
    size_mb: int | None = None  # download size, for `groupvit list`

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf ({self.location}@{self.revision[:7]})"
        return f"{self.kind} ({self.location})"


@dataclass(frozen=True)
class Pretrained:
    name: str
    description: str
    licence: str
    sources: tuple[Source, ...]  # tried in this order


def _released(name: str, about: str, repo: str, revision: str, nvlabs_file: str) -> Pretrained:
    sources = (Source("hf", repo, revision, size_mb=223), Source("nvlabs", nvlabs_file))
    return Pretrained(name, about, NVIDIA_NC, sources)


# Ours, inside the package: trained by `groupvit demo` on SynthVOC captions (docs/models.md, its model card).
SYNTHVOC_FILE = "weights/synthvoc.safetensors"
SYNTHVOC_ABOUT = ("a small GroupViT this package trained on SynthVOC captions alone (docs/models.md): the 20 VOC "
                  "classes in emoji-like scenes, not photographs; offline, in the package")  # fmt: skip
# Commits read off the repositories' histories on huggingface.co: the head of main when this table was written
# (yfcc: "Add TF weights (#1)", only pytorch_model.bin; redcaps: "Adding `safetensors` variant (#1)").
PRETRAINED: dict[str, Pretrained] = {
    p.name: p
    for p in (
        _released("gcc_yfcc", "GCC3M+12M+YFCC14M, 30 epochs: VOC 52.3, Context 22.4, COCO 24.3 mIoU; IN-1k 43.7",
                  "nvidia/groupvit-gcc-yfcc", "751f6d9a37c9e9e42ba527cc99d3c21b137bd2a3",
                  "group_vit_gcc_yfcc_30e-879422e0.pth"),
        _released("gcc_redcaps", "GCC3M+12M+RedCaps12M, 30 epochs: VOC 50.8, Context 23.7, COCO 27.5 mIoU; IN-1k 51.6",
                  "nvidia/groupvit-gcc-redcaps", "681e10603ff58911e89d8c4cdfaa93499387c315",
                  "group_vit_gcc_redcap_30e-3dd09a76.pth"),
        Pretrained("synthvoc", SYNTHVOC_ABOUT, "Apache-2.0, as this package (its training scenes are drawn from "
                   "OpenMoji glyphs, CC BY-SA 4.0)", (Source("package", SYNTHVOC_FILE, size_mb=7),)),
    )
}  # fmt: skip


def list_pretrained() -> list[str]:
    """Names `load_model` and `--checkpoint` accept for released weights."""
    return list(PRETRAINED)


def cache_dir() -> Path:
    """Where NVlabs downloads go: $GROUPVIT_CACHE/pretrained, default ~/.cache/groupvit/pretrained."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groupvit"
    return Path(os.environ.get("GROUPVIT_CACHE") or default).expanduser() / "pretrained"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def unreachable(url: str) -> str | None:
    """Why `url`'s host (or the proxy the environment sets for it) cannot be reached, from one short TCP connection
    attempt, or None when it can."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as e:
        return f"{parts.hostname}:{port} unreachable ({getattr(e, 'strerror', None) or e or type(e).__name__})"


def parse(spec: str, source: str | None = None) -> tuple[Pretrained, list[Source]] | None:
    """`NAME`, `NAME@SOURCE` or `hf-hub:ORG/REPO[@REV]` -> (entry, sources to try in order); None for anything else."""
    if spec.startswith("hf-hub:"):
        repo, _, revision = spec.removeprefix("hf-hub:").partition("@")
        if source not in (None, "hf") or repo.count("/") != 1:
            raise ValueError(f"{spec!r}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION")
        hub = Source("hf", repo, revision or "main")
        return Pretrained(spec, "a GroupViT in the transformers layout on the Hugging Face Hub", "see its model card",
                          (hub,)), [hub]  # fmt: skip
    name, at, suffix = spec.partition("@")
    if name not in PRETRAINED:
        return None
    if at and source and suffix != source:
        raise ValueError(f"{spec!r} names source {suffix!r} but --source is {source!r}")
    entry, kind = PRETRAINED[name], suffix or source
    sources = [s for s in entry.sources if kind in (None, s.kind)]
    if not sources:
        kinds = ", ".join(s.kind for s in entry.sources)
        raise ValueError(f"{name} has no source {kind!r}; its sources are {kinds}")
    return entry, sources


def resolve(name_or_path: str | Path, source: str | None = None) -> Path:
    """A checkpoint path, released name (`gcc_yfcc`, `gcc_yfcc@nvlabs`) or `hf-hub:ORG/REPO[@REV]` -> a local
    path `read_checkpoint` takes (an existing path wins over a name). Released weights are fetched and verified on
    first use, then read from the cache. `source` ('hf' or 'nvlabs') picks one source of a released name."""
    spec = str(name_or_path)
    if Path(spec).expanduser().exists():
        if source:
            raise ValueError(f"--source applies to released names ({', '.join(PRETRAINED)}), not to the path {spec}")
        return Path(spec).expanduser()
    parsed = parse(spec, source)
    if parsed is not None:
        return _fetch_first(*parsed)
    if spec in list_presets():
        raise CheckpointError(
            f"{spec!r} is a model preset without released weights; for untrained random weights of that "
            f"architecture pass --random-init {spec} (`groupvit info --preset {spec}`; Python: "
            f"GroupViT(model_config({spec!r})))"
        )
    raise CheckpointError(
        f"checkpoint not found: {spec} (not a file or folder, nor a released name: {', '.join(PRETRAINED)}, "
        "NAME@nvlabs or hf-hub:ORG/REPO)"
    )


def download(name: str, source: str | None = None) -> Path:
    """Fetch released weights into the cache ahead of time (`groupvit download`); returns where they are."""
    parsed = parse(name, source)
    if parsed is None:
        raise ValueError(f"unknown released weights {name!r}; choose one of {', '.join(PRETRAINED)} or hf-hub:ORG/REPO")
    return _fetch_first(*parsed)


def download_report(name: str, source: str | None = None) -> str:
    """`download`, then the line `groupvit download` prints: where the weights are, with their licence."""
    path = download(name, source)
    entry = PRETRAINED.get(name.partition("@")[0])
    return f"{name}: {path}" + (f" (licence: {entry.licence})" if entry else "")


def _fetch_first(entry: Pretrained, sources: list[Source]) -> Path:
    failures = []
    for src in sources:
        try:
            return fetch(src)
        except DownloadError as e:
            failures.append(f"{src}: {e}")
    where = f"`groupvit download {entry.name}` where there is network"
    raise DownloadError(
        f"cannot get the {entry.name} weights; tried {'; '.join(failures)}. Either run {where} (then copy "
        f"{cache_dir()} or the Hugging Face cache over), or copy the weights file here and pass its path"
    )


def fetch(src: Source) -> Path:
    """One source -> a local path (the weights file, or the transformers folder holding config.json)."""
    if src.kind == "hf":
        return _fetch_hf(src)
    if src.kind == "nvlabs":
        return _fetch_nvlabs(src)
    if src.kind == "package":
        if (path := cached(src)) is None:
            raise DownloadError(f"{src.location} is missing from the installed package; reinstall groupvit")
        return path
    raise ValueError(f"unknown source kind {src.kind!r}; expected one of {SOURCE_KINDS}")


def cached(src: Source) -> Path | None:
    """The local copy of one source if it is already cached (nothing is downloaded), else None."""
    if src.kind == "nvlabs":
        path = cache_dir() / src.location
        return path if path.is_file() else None
    if src.kind == "package":
        path = Path(str(resources.files("groupvit") / src.location))
        return path if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None

    def find(filename: str) -> Path | None:
        found = try_to_load_from_cache(src.location, filename, revision=src.revision)
        return Path(found) if isinstance(found, str) else None  # None, or a marker for "known not to exist"

    weights = find("model.safetensors") or find("pytorch_model.bin")
    return weights.parent if weights and find("config.json") else None


def table() -> str:
    """`groupvit list`: every released model's sources, sizes and whether they are cached, then what each is."""
    rows = [("name", "source", "from", "size", "cached")]
    for entry in PRETRAINED.values():
        for src in entry.sources:
            local = cached(src)
            size_mb = local.stat().st_size / 1e6 if local and local.is_file() else src.size_mb
            where = f"{src.location}@{src.revision[:7]}" if src.kind == "hf" else src.location
            rows.append((entry.name, src.kind, where, f"{size_mb:.0f} MB" if size_mb else "?", str(local or "no")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("")
    lines += [f"{e.name}: {e.description}. Licence: {e.licence}." for e in PRETRAINED.values()]
    lines.append(f"Sources are tried in the order above; NAME@SOURCE or --source picks one. Cache: {cache_dir()} "
                 "(NVlabs files) and the Hugging Face cache (HF_HOME, HF_HUB_CACHE).")  # fmt: skip
    return "\n".join(lines)


def random_init(preset: str, device: str = "cpu", seed: int = 0) -> GroupViT:
    """Untrained weights of a preset architecture (`--random-init`), the same on every call with the same seed."""
    import torch

    from .config import model_config

    torch.manual_seed(seed)
    return GroupViT(model_config(preset)).to(device).eval()


# --------------------------------------------------------------------------- Hugging Face Hub


def _fetch_hf(src: Source) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise DownloadError("huggingface_hub is not installed (pip install 'groupvit[hub]')") from None
    if re.fullmatch(r"[0-9a-f]{40}", src.revision) and (local := cached(src)):
        return local  # a commit never changes: no request at all (the hub would ask for model.safetensors first)

    from huggingface_hub import constants

    # Offline or unreachable: the cache only (a moving revision such as main may be cached), no retries.
    why = "offline (HF_HUB_OFFLINE is set)" if _offline() else unreachable(constants.ENDPOINT)

    def get(filename: str) -> Path:
        return Path(hf_hub_download(src.location, filename, revision=src.revision, local_files_only=bool(why)))

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings; our error says what failed, in one line
    try:
        get("config.json")
        with contextlib.suppress(EntryNotFoundError):  # not in this repo at this revision (or not cached)
            return get("model.safetensors").parent
        return get("pytorch_model.bin").parent
    except KeyboardInterrupt:
        raise KeyboardInterrupt("the partial download is kept in the Hugging Face cache; run the same command again "
                                "to resume it") from None  # fmt: skip
    except LocalEntryNotFoundError:
        raise DownloadError(
            f"{why or 'the hub is unreachable'} and the files are not in the Hugging Face cache"
        ) from None
    except (EntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise DownloadError(str(e).strip().splitlines()[0]) from None
    finally:
        hub_log.setLevel(level)


# --------------------------------------------------------------------------- NVlabs release files


def _fetch_nvlabs(src: Source) -> Path:
    from filelock import FileLock

    final = cache_dir() / src.location
    if final.is_file():
        return final
    match = re.search(r"-([0-9a-f]{6,})\.", src.location)
    if match is None:
        raise ValueError(f"{src.location}: an NVlabs file name ends in -<sha256 prefix>.pth")
    if _offline():
        raise DownloadError(f"offline (HF_HUB_OFFLINE is set) and {final} is not there")
    base_urls = [os.environ["GROUPVIT_NVLABS_URL"]] if os.environ.get("GROUPVIT_NVLABS_URL") else NVLABS_MIRRORS
    (final.parent / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / ".locks" / f"{src.location}.lock"):  # one download per file across processes
        if final.is_file():  # another process finished it while this one waited
            return final
        failures = []
        for base in base_urls:
            url = f"{base.rstrip('/')}/{src.location}"
            if why := unreachable(url):  # fails in seconds where a silent network would hold urlopen for TIMEOUT
                failures.append(f"{url}: {why}")
                continue
            try:
                _download_verified(url, final, match.group(1))
                return final
            except DownloadError as e:
                failures.append(f"{url}: {e}")
        raise DownloadError("; ".join(failures))


def _download_verified(url: str, path: Path, sha256_prefix: str) -> None:
    """Download `url` to `path` through `path`.part (resumed where a previous attempt stopped), check that the
    file's SHA-256 starts with `sha256_prefix`, then rename it into place. A mismatch deletes the download."""
    part = path.with_name(path.name + ".part")
    if os.path.lexists(part) and not part.is_file():
        raise DownloadError(f"{part} is in the way and is not a file; remove it")
    try:
        _append_from(url, part)
    except (OSError, http.client.HTTPException) as e:
        kept = f"; {part.stat().st_size:,} bytes kept to resume" if part.is_file() and part.stat().st_size else ""
        raise DownloadError(f"{_reason(e)}{kept}") from None
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (groupvit.cli stops on it the same way)
        size = part.stat().st_size if part.is_file() else 0
        raise KeyboardInterrupt(f"the partial download ({size:,} bytes, {part}) is kept; run the same command again "
                                "to resume it") from None  # fmt: skip
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    actual = digest.hexdigest()
    if not actual.startswith(sha256_prefix):
        part.unlink()
        raise DownloadError(
            f"checksum mismatch: the file's SHA-256 is {actual}, expected one starting with {sha256_prefix}; "
            "the download was deleted"
        )
    os.replace(part, path)


def _append_from(url: str, part: Path) -> None:
    from tqdm import tqdm

    start = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "groupvit", **({"Range": f"bytes={start}-"} if start else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        part.unlink()  # the partial file does not fit this one: start over
        return _append_from(url, part)
    with response:
        if start and response.status != 206:  # the server sent the whole file: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length else None
        name = part.name.removesuffix(".part")
        with open(part, "ab" if start else "wb") as f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=name
        ) as bar:  # fmt: skip
            while chunk := response.read(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise http.client.IncompleteRead(b"", total - size)


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable ({e.reason})"
    if isinstance(e, http.client.IncompleteRead):
        return "the connection closed before the end of the file"
    return str(e) or type(e).__name__
