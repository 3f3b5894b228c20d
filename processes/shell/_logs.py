"""Per-process log files: opening and size-capped rotation (tail and follow are in the core).

A command writes its output straight into its log files (not through the daemon), so it keeps
running and logging while the daemon restarts, and the daemon never buffers output: its memory
does not grow with a command's output rate.

Rotation is therefore *copy-and-truncate*: the last ``max_bytes`` of the file are copied to
``<file>.1`` (older backups shift up) and the file is truncated; the command's descriptor is
opened with ``O_APPEND``, so it goes on writing at the new end. Output written between the copy
and the truncate (microseconds) is lost; output beyond the cap between two checks is dropped
from the backup, so each file stays within the cap. A target that is not a regular file (a
pipe, ``/dev/stdout``, a terminal) is never rotated: it has no size to cap and cannot be
truncated, and supervisord users know what trying does.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def open_log(path: Path) -> int:
    """A descriptor appending to ``path`` (created owner-only: output may hold secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def rotate_if_needed(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` when it is a regular file larger than ``max_bytes``; True if it did."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size <= max_bytes:
        return False
    if backups > 0:
        for index in range(backups - 1, 0, -1):
            older = Path(f"{path}.{index}")
            if older.exists():
                os.replace(older, f"{path}.{index + 1}")
        _copy_tail(path, Path(f"{path}.1"), info.st_size, max_bytes)
    with open(path, "r+b") as target:
        target.truncate(0)
    return True


def _copy_tail(source: Path, target: Path, size: int, max_bytes: int) -> None:
    start = max(0, size - max_bytes)
    with open(source, "rb") as src, open(target, "wb") as dst:
        os.chmod(target, 0o600)
        offset, left = start, size - start
        while left > 0:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), left, offset)
            if copied == 0:
                break
            offset += copied
            left -= copied
