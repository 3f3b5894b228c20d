"""Reading a process's log files: the last lines, and new lines as they come (``tail -F``).

Log files belong to process kinds (a shell command writes its own); handles and the control
API read them through :meth:`Machine.log_files`. Reading never holds more than the lines asked
for plus one block, however large the file: lines longer than ``LINE_MAX`` come in pieces.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

from .logrotation import LINE_MAX, PATIENCE, LogStream, Rotation, line_cuts, read_rotation
from .readers import ReaderThreads

# Callers' log reads (tails and follows, for handles and the control API) run on threads of
# their own (see ._readers).
READER_THREADS = 2
_readers = ReaderThreads(READER_THREADS, "statevisor-logs")


async def read_tail(path: str | os.PathLike[str], lines: int) -> list[str]:
    """:func:`tail_lines`, read on a log-reader thread."""
    return await _readers.run(tail_lines, path, lines)


def tail_lines(path: str | os.PathLike[str], lines: int, *, rotated: bool = True) -> list[str]:
    """The last ``lines`` lines of ``path`` (reads backwards, so memory is bounded by them),
    continued from its newest backup when the live file was just rotated.

    ``rotated=False`` says the caller knows the live file was not rotated while the lines it
    wants were written (a shell run's own result), so the backup is not looked for: a path
    lookup that, in a directory where files are being created, waits on its lock.
    """
    return _tail(path, lines, complete_only=False, rotated=rotated)[0]


def _tail(
    path: str | os.PathLike[str], lines: int, *, complete_only: bool, rotated: bool = True, block: int = 8192
) -> tuple[list[str], int | None]:
    """The last lines and the live file's offset just after them (None: not a regular file)."""
    found = _read_backwards(path, lines, block)
    if found is None:
        return [], None
    data, end = found
    if complete_only and not data.endswith(b"\n"):
        # A line still being written: leave it to the follower, whole.
        cut = data.rfind(b"\n") + 1
        end -= len(data) - cut
        data = data[:cut]
    if rotated and lines > 0 and data.count(b"\n") < lines and end == len(data):
        # The live file holds fewer lines than asked: it was rotated; the rest are in <log>.1
        # (its last line may go on in the live file: the bytes are joined, not the lines).
        older = _read_backwards(f"{path}.1", lines - data.count(b"\n"), block)
        if older is not None:
            data = older[0] + data
    if not data or lines <= 0:
        return [], end
    found_lines = [line for raw in data.split(b"\n") for line in _lines(raw)]
    if data.endswith(b"\n"):
        found_lines.pop()  # the empty "line" after the last newline
    return found_lines[-lines:], end


def _lines(raw: bytes) -> list[str]:
    """The text between two newlines as lines: split at ``\r`` too (a terminal's line ends, and
    a progress bar's redraws), and in pieces of at most ``LINE_MAX`` bytes."""
    if len(raw) <= LINE_MAX:  # nearly every line: no pieces to find
        return raw.decode(errors="replace").splitlines() or [""]
    edges = [0, *line_cuts(raw, 0, len(raw)), len(raw)]
    return [line for a, b in pairwise(edges) for line in raw[a:b].decode(errors="replace").splitlines() or [""]]


def _read_backwards(path: str | os.PathLike[str], lines: int, block: int) -> tuple[bytes, int] | None:
    """At least ``lines`` lines' worth of the end of ``path`` (or all of it) and its size;
    empty for a missing file, None for one that is not a regular file (a pipe or a terminal
    has no tail to read). Descriptor-level I/O: this runs for every shell result."""
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer; O_NOCTTY: a
        # terminal as log target must not become the daemon's controlling terminal.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):  # no such file, or a file where a directory should be
        return b"", 0
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        end = info.st_size
        data = b""
        position = end
        # Lines longer than LINE_MAX count as their pieces: that many bytes hold enough of them.
        enough = (lines + 1) * LINE_MAX
        while lines > 0 and position > 0 and data.count(b"\n") <= lines and len(data) < enough:
            step = min(block, position)
            position -= step
            data = os.pread(fd, step, position) + data
    finally:
        os.close(fd)
    return data, end


async def read_tail_position(path: str | os.PathLike[str], lines: int) -> tuple[list[str], int | None]:
    """The last ``lines`` complete lines and the stream offset just after them, to pass to
    :func:`follow_positions` as ``start`` to go on from there (None: not a regular file, nothing
    to follow). Read on a log-reader thread."""
    for _ in range(PATIENCE):
        rotation, first, found, steady = await _readers.run(_tail_between_rotations, Path(path), lines)
        if steady:
            break
        await asyncio.sleep(0.2)  # a rotation under way: the tail may be half of it
    return first, (None if found is None else rotation.base + found)


async def follow_lines(path: Path, *, lines: int = 10, interval: float = 0.2) -> AsyncIterator[str]:
    """The last ``lines`` lines, then every new line as it is written (``tail -F``), through
    rotations (see :mod:`._logrotation`). A pipe or terminal has nothing to follow: the iteration
    ends at once."""
    async for line, _ in follow_positions(path, lines=lines, interval=interval):
        yield line


async def follow_positions(
    path: Path, *, lines: int = 10, interval: float = 0.2, start: int | None = None
) -> AsyncIterator[tuple[str, int]]:
    """As :func:`follow_lines`, each line with the stream offset just after it (bytes since the
    log was first written, counted across rotations), so a reader that was cut off resumes
    with ``start=`` that offset: nothing missed, nothing repeated, even if the log was rotated
    meanwhile (as long as the bytes are still in a backup). With ``start`` no last lines are
    sent first."""
    if start is None:
        for _ in range(PATIENCE):
            rotation, first, found, steady = await _readers.run(_tail_between_rotations, path, lines)
            if steady:
                break
            await asyncio.sleep(interval)  # a rotation under way: the tail may be half of it
        if found is None:
            return
        position = rotation.base + found
        for line in first:
            yield line, position
    else:
        if not await _readers.run(_followable, path):
            return
        position = max(0, start)
    stream = LogStream(path, position)
    while True:
        found_lines = await _readers.run(stream.poll)
        if found_lines is None:
            await asyncio.sleep(interval)
            continue
        for line, end in found_lines:
            yield line, end


def _tail_between_rotations(path: Path, lines: int) -> tuple[Rotation, list[str], int | None, bool]:
    """The last complete lines, where they end, and whether no rotation was under way or
    happened while they were read (else they may be half of one)."""
    rotation = read_rotation(path)
    first, found = _tail(path, lines, complete_only=True)
    return rotation, first, found, not rotation.under_way and read_rotation(path) == rotation


def _followable(path: Path) -> bool:
    """A regular file, or none yet (a pipe or a terminal has nothing to follow)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
