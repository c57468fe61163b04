"""Reading checkpoint files without running their code: pickles with unknown globals made inert, zip bombs
refused, safetensors and JSON read with one clear error."""

from __future__ import annotations

import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..checks import check_memory, file_size
from ..config import parse_json, read_json
from ..errors import CheckpointError

# Globals a pickle could use to run code. Anything else unknown becomes an inert placeholder.
_CODE_MODULES = {"os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "socket", "pty", "code"}
_CODE_BUILTINS = {"eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr", "breakpoint"}


def _inert_class(qualified_name: str) -> type:
    """A stand-in for a pickled class we will not import: it records its arguments and does nothing."""
    module, _, name = qualified_name.rpartition(".")

    def init(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def setstate(self, state: Any) -> None:
        self.state = state

    return type(name, (), {"__module__": module, "__init__": init, "__setstate__": setstate})


def _pickle_globals(path: Path) -> list[str]:
    """Names a plain (non-zip) pickle imports, read from its opcodes without running it."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name == "GLOBAL":
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle, or a damaged one: torch.load reports it below
        pass
    return names


def _check_declared_sizes(path: Path) -> None:
    """Refuse a zip checkpoint whose records declare far more bytes than the file holds (a zip bomb: torch.save
    stores records uncompressed) or than memory can take, from its directory, before any record is inflated."""
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({e})") from None
    on_disk = path.stat().st_size
    if declared > 4 * on_disk + (64 << 20):
        raise CheckpointError(f"{path} declares {file_size(declared)} of records in a {file_size(on_disk)} file (a "
                              "zip bomb?); refusing to inflate it")  # fmt: skip
    try:
        check_memory(declared, f"reading {path}", "use a machine with more memory")
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def safe_torch_load(path: str | Path) -> Any:
    """torch.load with `weights_only=True`; objects of unknown classes (e.g. an OmegaConf config in a
    training checkpoint) load as inert placeholders instead of running their code."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        _check_declared_sizes(path)
        try:
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as e:  # a damaged zip directory
            raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({e})") from None
    else:
        unknown = _pickle_globals(path)
    code = [g for g in unknown if g.split(".")[0] in _CODE_MODULES or g in {f"builtins.{b}" for b in _CODE_BUILTINS}]
    if code:
        raise CheckpointError(
            f"{path} would call {', '.join(code)} when unpickled; refusing to load it. "
            "Only load checkpoints from sources you trust, and prefer .safetensors files."
        )
    try:
        with torch.serialization.safe_globals([(_inert_class(g), g) for g in unknown]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = re.search(r"WeightsUnpickler error: (.*?)(?:\n\n|$)", str(e), re.S)
        reason = detail.group(1).strip() if detail else (str(e).strip().splitlines() or [""])[0]
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        raise CheckpointError(f"cannot read {path}: truncated or not a PyTorch checkpoint ({reason})") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path} as safetensors; it may be truncated ({e})") from None


def state_dict_from_pickle(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected {{'model': state_dict}} as NVlabs writes)")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_json_config(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, "config")
    except (OSError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a transformers config")
    return data


def json_metadata(text: str | None, path: Path, what: str = "the config") -> Any:
    try:
        return parse_json(text or "", f"{path}: {what} in its metadata")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
