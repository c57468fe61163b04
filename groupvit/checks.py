"""Checks of what a user asks for, run before any model is loaded or data is read.

Every subcommand validates its option values with the argparse types below and its output paths with
`output_file` / `output_dir`, so that a mistake is reported in one line before the long part, never after it.
The errors these raise, and their exit codes, are in `groupvit.errors` (re-exported here for older imports).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import EXIT_DATA as EXIT_DATA
from .errors import EXIT_USAGE as EXIT_USAGE
from .errors import DataError as DataError
from .errors import DiskFull as DiskFull
from .errors import describe as describe
from .errors import exit_code as exit_code

# Bounds of the size-like options: past them a request is refused before any work (each option's --help says its).
MAX_SHORT_SIDE = 2048  # the protocol's resize caps the long side at 2048 anyway (groupvit.image.rescale_size)
MAX_CROP_BATCH = 256  # crops per encoder batch
MAX_TRAIN_BATCH = 8192  # images per process and step
MAX_COUNT = 10_000_000  # steps, images, intervals
MAX_SCENES = 1_000_000  # SynthVOC scenes to generate
MAX_WORKERS = 256  # processes
MAX_MINUTES = 7 * 24 * 60  # a week
MAX_GRID = 101  # thresholds a calibration tries: 0 to 1 by 0.01


# --------------------------------------------------------------------------- option values (argparse types)


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} is not positive")
    return value


def at_most(limit: int, least: int = 1, kind: type = int):
    """argparse type: an integer from `least` (default 1) to `limit`, or with kind=float a number above 0 up to
    `limit`. The parser adds "(at most LIMIT)" to the option's help (`say_limits`), so every size a command takes
    has a bound it states."""

    def parse(text: str) -> int | float:
        value = positive_float(text) if kind is float else _number(text, int)
        if value < least and kind is int:
            raise argparse.ArgumentTypeError(f"{value} is not a positive integer (1 or more)" if least == 1 else
                                             f"{value} is under {least}")  # fmt: skip
        if value > limit:
            raise argparse.ArgumentTypeError(f"{value:,g} is over the limit of {limit:,}")
        return value

    parse.limit = limit
    return parse


def weight(text: str) -> float:
    """argparse type: a loss weight, a finite number from 0 to WEIGHT_LIMIT."""
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} is negative; a loss weight is 0 or more")
    if value > WEIGHT_LIMIT:
        raise argparse.ArgumentTypeError(f"{value:g} is over the limit of {WEIGHT_LIMIT:,}")
    return value


WEIGHT_LIMIT = 100
weight.limit = WEIGHT_LIMIT


def say_limits(parser: argparse.ArgumentParser) -> None:
    """Add "(at most LIMIT)" to the help of every option (of every subcommand) whose type has a limit."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                say_limits(sub)
        elif hasattr(action.type, "limit") and "at most" not in (action.help or ""):
            limit = f"at most {action.type.limit:,}"
            action.help = f"{action.help} ({limit})" if action.help else limit


def unit_float(text: str) -> float:
    """argparse type: a number in [0, 1] (background thresholds)."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def unit_floats(limit: int):
    """argparse type: comma-separated numbers in [0, 1] (thresholds to try), at most `limit` of them (stated in the
    option's help by `say_limits`)."""

    def parse(text: str) -> list[float]:
        values = [unit_float(t) for t in text.split(",")]
        if len(values) > limit:
            raise argparse.ArgumentTypeError(f"{len(values)} thresholds are over the limit of {limit}")
        return values

    parse.limit = limit
    return parse


def share(text: str) -> float:
    """argparse type: a share in [0, 1), such as the part of a batch given to something."""
    value = unit_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not a share below 1")
    return value


def port(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    value = _number(text, int)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


# --------------------------------------------------------------------------- memory


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def check_memory(need: int, what: str, hint: str) -> None:
    """Refuse, before the work starts, `what` when it needs more bytes than the machine has available."""
    free = available_memory()
    if free is not None and need > free:
        raise ValueError(f"{what} needs about {file_size(need)} of memory, more than the {file_size(free)} available; "
                         f"{hint}")  # fmt: skip


# --------------------------------------------------------------------------- files, checked with stat first


def file_kind(mode: int) -> str:
    """What a stat mode is, in words: 'a FIFO (named pipe)', 'a character device', ..."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def file_size(size: int) -> str:
    """A byte count in words: '812 bytes', '3.4 MB', '22 GB'."""
    return f"{size:,} bytes" if size < 10**6 else f"{size / 1e6:.3g} MB" if size < 10**9 else f"{size / 1e9:.3g} GB"


def input_file(path: str | Path, what: str = "file", max_bytes: int | None = None) -> Path:
    """Check, with stat before anything opens it, a file a command reads: it exists, it is a regular file (a FIFO
    blocks its reader and a device such as /dev/zero never ends) and it holds at most `max_bytes`."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} {path} ({e.strerror or e})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path} is {file_kind(info.st_mode)}, not a file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise ValueError(f"{what} {path} is {file_size(info.st_size)}, over the limit of {file_size(max_bytes)}")
    return path


def output_target(path: str | Path, option: str = "") -> None:
    """Refuse to write over an existing path that is not a regular file (a device, FIFO, socket or folder), with or
    without --overwrite: the rename that replaces a file would, as root, swap out a /dev node."""
    try:
        mode = os.stat(path).st_mode  # a link to a device is refused too
    except OSError:  # nothing there (or a dangling link, which the rename replaces)
        return
    if not stat.S_ISREG(mode):
        name = f"{option} {path}" if option else str(path)
        raise ValueError(f"{name} is {file_kind(mode)}, not a regular file; refusing to replace it, choose another "
                         "name")  # fmt: skip


# --------------------------------------------------------------------------- output paths


def _writable(folder: Path, option: str, target: Path) -> None:
    """`target` could be created under `folder`: its nearest existing ancestor is a folder we may write in.

    The test creates (and at once deletes) a temporary file: permission bits say nothing for root, read-only
    mounts or full disks."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {target}: {existing} is a file, not a folder; choose another place")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        raise ValueError(f"{option} {target}: cannot write in {existing} ({reason}); choose a writable place") from None


def output_file(path: str | Path, option: str = "--out", overwrite: bool = False) -> Path:
    """Check a file the command will write: not a folder, not an existing file unless `overwrite`, writable."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name, e.g. {path / 'results.json'}")
    output_target(path, option)
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {path} exists; pass --overwrite to replace it, or choose another name")
    _writable(path.parent, option, path)
    return path


def output_dir(
    path: str | Path,
    option: str = "--out",
    names: Iterable[str] = (),
    overwrite: bool = False,
    hint: str = "pass --overwrite to replace them, or choose another folder",
) -> Path:
    """Check a folder the command will write `names` into: not a file, writable, and (unless `overwrite`) holding
    none of `names` yet."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; choose a folder name")
    _writable(path, option, path)
    for name in names if path.is_dir() else ():
        output_target(path / name, option)
    taken = [n for n in names if (path / n).exists()] if not overwrite and path.is_dir() else []
    if taken:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise ValueError(f"{option} {path} already holds {taken[0]}{more}; {hint}")
    return path


def checkpoint_target(path: str | Path, layout: str, overwrite: bool = False) -> Path:
    """Check where `groupvit convert` writes: a folder for 'hf', else a file whose suffix `load_model` will read
    back as that layout (our .safetensors; a pickle such as .pth for 'nvlabs')."""
    path = Path(path)
    if layout == "hf":
        return output_dir(path, "DST", ("config.json", "model.safetensors"), overwrite)
    if (path.suffix == ".safetensors") != (layout == "groupvit"):
        suffix = ".safetensors" if layout == "groupvit" else ".pth"
        raise ValueError(f"DST {path}: the {layout} layout is read back from a {suffix} file; name it e.g. "
                         f"{path.with_suffix(suffix).name}")  # fmt: skip
    return output_file(path, "DST", overwrite)


def input_files(paths: Iterable[str | Path], what: str = "image", max_bytes: int | None = None) -> list[Path]:
    """Check that every input file exists (all missing ones are named in one message) and is a regular file."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{what} not found: {', '.join(missing[:3])}{more}")
    return [input_file(p, what, max_bytes) for p in paths]
