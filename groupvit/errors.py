"""The errors a user sees, and the exit code of each: the lowest floor of the package, importing nothing of it.

Exit codes: 0 success; 1 the data was bad (some inputs skipped, or none usable) or the run failed (a non-finite
loss, out of memory, an unexpected error); 2 a usage error (bad options, paths, configs, checkpoints, outputs).
"""

from __future__ import annotations

EXIT_DATA = 1
EXIT_USAGE = 2


class DataError(ValueError):
    """Input data (images, captions, label files, shards) that cannot be used: exit code 1, not 2."""


class DiskFull(OSError):
    """The disk filled while a file was written (its temporary file is removed): exit code 1."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, unsafe, or not a GroupViT of a known layout."""


class DownloadError(CheckpointError):
    """One source could not provide the weights (unreachable, offline and not cached, or a checksum mismatch)."""


def exit_code(error: BaseException) -> int:
    """The exit code for an error that ended a command (see the module docstring)."""
    if isinstance(error, DataError):
        return EXIT_DATA
    # ValueError covers CheckpointError and malformed configs; the OS errors are paths given on the command line.
    if isinstance(error, ValueError | FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError):
        return EXIT_USAGE
    return EXIT_DATA


def describe(error: BaseException) -> str:
    """An error as one line: its message, or for anything we did not raise ourselves its type too."""
    if isinstance(error, MemoryError):
        text = "out of memory; use smaller inputs (images, batch size, classes) or a machine with more memory"
    elif isinstance(error, ValueError | OSError | FloatingPointError):
        text = str(error) or type(error).__name__
    else:
        text = f"{type(error).__name__}: {error} (unexpected; rerun with --debug for the traceback and report it)"
    return " ".join(text.split())
