"""Writing a file whole or not at all: a temporary file in the same folder, renamed into place."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from .checks import output_target
from .errors import DiskFull


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether `error`, raised while writing in `folder`, means the disk is full: ENOSPC or EDQUOT, or a library's
    own write error (torch.save raises RuntimeError "file write failed") while the file system has no space left."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, RuntimeError) and "write" in str(error):
        try:
            info = os.statvfs(folder)
        except OSError:
            return False
        return info.f_bavail * info.f_frsize < 1 << 20
    return False


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder and rename it into place; never over something that is not a
    regular file (a device, FIFO, socket or folder)."""
    output_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full(e, path.parent)  # asked before the temporary file frees its space
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise DiskFull(f"the disk is full: no space left to write {path}; nothing was written there (an earlier "
                           "file of that name is as it was); free some space and run again") from None  # fmt: skip
        raise
