"""Reading a process's log files: the last lines, and new lines as they come (``tail -F``).

Log files belong to process kinds (a shell command writes its own); handles and the control
API read them through :meth:`Machine.log_files`. Reading never holds more than the lines asked
for plus one block, however large the file.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path


def tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path`` (reads backwards, so memory is bounded by them)."""
    return _tail(path, lines, complete_only=False)[0]


def _tail(path: Path, lines: int, *, complete_only: bool, block: int = 8192) -> tuple[list[str], int | None]:
    """The last lines and the offset just after them (None: not a regular file)."""
    try:
        # A pipe or a terminal has no tail to read (and opening a FIFO would wait for a writer).
        if not stat.S_ISREG(os.stat(path).st_mode):
            return [], None
        with open(path, "rb") as source:
            end = source.seek(0, os.SEEK_END)
            data = b""
            position = end
            while lines > 0 and position > 0 and data.count(b"\n") <= lines:
                step = min(block, position)
                position -= step
                source.seek(position)
                data = source.read(step) + data
    except FileNotFoundError:
        return [], 0
    if complete_only and not data.endswith(b"\n"):
        # A line still being written: leave it to the follower, whole.
        cut = data.rfind(b"\n") + 1
        end -= len(data) - cut
        data = data[:cut]
    found = data.decode(errors="replace").splitlines()
    return (found[-lines:] if lines > 0 else []), end


async def follow_lines(path: Path, *, lines: int = 10, interval: float = 0.2) -> AsyncIterator[str]:
    """The last ``lines`` lines, then every new line as it is written (``tail -F``).

    A file that shrank was rotated: reading starts again at its beginning. A pipe or terminal
    has nothing to follow: the iteration ends at once.
    """
    async for line, _ in follow_positions(path, lines=lines, interval=interval):
        yield line


async def follow_positions(
    path: Path, *, lines: int = 10, interval: float = 0.2, start: int | None = None
) -> AsyncIterator[tuple[str, int]]:
    """As :func:`follow_lines`, each line with the file offset just after it, so a reader that
    was cut off resumes with ``start=`` that offset: nothing missed, nothing repeated (unless
    the file was rotated meanwhile: it then starts again at the new file's beginning). With
    ``start`` no last lines are sent first."""
    if start is None:
        first, found = _tail(path, lines, complete_only=True)
        if found is None:
            return
        offset = found
        for line in first:
            yield line, offset
    else:
        try:
            status = os.stat(path)
        except FileNotFoundError:
            offset = 0
        else:
            if not stat.S_ISREG(status.st_mode):
                return
            offset = start if 0 <= start <= status.st_size else 0
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
            end = offset - len(partial)  # where the first line of this read begins
            offset += len(chunk)
            *complete, partial = (partial + chunk).split(b"\n")
            for raw in complete:
                end += len(raw) + 1
                yield raw.decode(errors="replace"), end
            continue
        await asyncio.sleep(interval)


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as source:
        source.seek(offset)
        return source.read(size)
