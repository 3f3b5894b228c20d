"""Per-process log files: opening, size-capped rotation, tail and follow.

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

import asyncio
import os
import stat
from collections.abc import AsyncIterator
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


def tail(path: Path, lines: int, *, block: int = 8192) -> list[str]:
    """The last ``lines`` lines of ``path`` (reads backwards, so memory is bounded by them)."""
    if lines <= 0:
        return []
    try:
        with open(path, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                return []
            end = source.seek(0, os.SEEK_END)
            data = b""
            position = end
            while position > 0 and data.count(b"\n") <= lines:
                step = min(block, position)
                position -= step
                source.seek(position)
                data = source.read(step) + data
    except FileNotFoundError:
        return []
    found = data.decode(errors="replace").splitlines()
    return found[-lines:]


async def follow(path: Path, *, lines: int = 10, interval: float = 0.2) -> AsyncIterator[str]:
    """The last ``lines`` lines, then every new line as it is written (``tail -F``).

    A file that shrank was rotated: reading starts again at its beginning.
    """
    for line in tail(path, lines):
        yield line
    try:
        offset = os.stat(path).st_size
    except FileNotFoundError:
        offset = 0
    partial = b""
    while True:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = 0
        if size < offset:
            offset, partial = 0, b""
        if size > offset:
            chunk = _read(path, offset, min(size - offset, 1 << 20))
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            for raw in complete:
                yield raw.decode(errors="replace")
            continue
        await asyncio.sleep(interval)


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as source:
        source.seek(offset)
        return source.read(size)
