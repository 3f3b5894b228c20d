"""Size-capped log rotation, and reading a log across its rotations.

A command writes its log file itself (the daemon is not in the output path, so the command
logs on while the daemon restarts, and the daemon never buffers output). Rotation is therefore
*copy-and-truncate*: the last ``max_bytes`` of the file are copied to ``<log>.1`` (older backups
shift up) and the file is truncated; the command's descriptor appends (``O_APPEND``), so it
goes on writing at the new end. Output written between the copy and the truncate
(microseconds) is lost, and output beyond the cap between two checks is dropped from the
backup, so each file stays within the cap. A target that is not a regular file (a pipe,
``/dev/stdout``, a terminal) is never rotated: it has no size to cap and cannot be truncated.

A follower names places in the log by *stream offset*: bytes since the log was first written,
counted across rotations, so an offset stays valid after the file is truncated. The rotation
record (``.<log>.rotation`` beside the log, JSON) says where in the stream the live file begins
and which stream range each backup holds; a follower that fell behind a rotation reads what it
had not read yet from the backups instead of losing it. The record works as a seqlock: its
generation is odd while a rotation is under way, and a reader that sees it change while reading
reads again.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

PATIENCE = 25  # polls a reader waits for a rotation under way (a rotator that died leaves it odd)
LINE_MAX = 8192
"""Readers hand longer lines out in pieces of at most this many bytes (the file keeps them
whole): a command that writes megabytes with no newline (a progress bar redrawn with ``\r``)
must not make a follower, a tail or a shell result hold or send it as one string."""


def line_cuts(data: bytes, begin: int, end: int) -> Iterator[int]:
    """Where to cut ``data[begin:end]`` into pieces of at most ``LINE_MAX`` bytes, each cut moved
    back off the middle of a UTF-8 character so that every piece decodes; the last piece, what
    is left after the last cut, is not cut off (a follower keeps it until more of it comes)."""
    while end - begin > LINE_MAX:
        cut = begin + LINE_MAX
        for back in range(4):  # a UTF-8 character is at most 4 bytes: a lead and 3 that continue it
            if data[cut - back] & 0xC0 != 0x80:
                cut -= back
                break
        yield cut
        begin = cut


@dataclass(frozen=True, slots=True)
class Rotation:
    """Where a rotated log's bytes are, in stream offsets."""

    generation: int = 0  # odd while a rotation is under way
    base: int = 0  # the stream offset of the live file's first byte
    backups: tuple[tuple[int, int], ...] = ()  # the stream range [start, end) of <log>.1, <log>.2, ...

    @property
    def under_way(self) -> bool:
        return self.generation % 2 == 1


def record_path(log: Path) -> Path:
    return log.with_name(f".{log.name}.rotation")


def read_rotation(log: Path) -> Rotation:
    """The log's rotation record; an empty one if it never rotated (or the record is unreadable:
    the reader then follows the live file alone, as if there were no backups)."""
    try:
        raw = json.loads(record_path(log).read_bytes())
        return Rotation(int(raw["generation"]), int(raw["base"]), tuple((int(s), int(e)) for s, e in raw["backups"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Rotation()


def _write_rotation(log: Path, rotation: Rotation) -> None:
    target = record_path(log)
    temporary = target.with_name(target.name + ".tmp")
    body = {"generation": rotation.generation, "base": rotation.base, "backups": [list(r) for r in rotation.backups]}
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(descriptor, "w") as out:
        json.dump(body, out)
    os.replace(temporary, target)  # readers see the old record or the new one, never half of one


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """Rotate ``path`` when it is a regular file larger than ``max_bytes``; True if it did."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size <= max_bytes:
        return False
    before = read_rotation(path)
    even = before.generation + before.generation % 2  # a rotator that died midway left it odd
    _write_rotation(path, replace(before, generation=even + 1))
    size = info.st_size
    kept: tuple[tuple[int, int], ...] = ()
    if backups > 0:
        for index in range(backups - 1, 0, -1):
            older = Path(f"{path}.{index}")
            if older.exists():
                os.replace(older, f"{path}.{index + 1}")
        start = max(0, size - max_bytes)
        _copy_range(path, Path(f"{path}.1"), start, size)
        kept = ((before.base + start, before.base + size), *before.backups[: backups - 1])
    with open(path, "r+b") as target:
        target.truncate(0)
    _write_rotation(path, Rotation(even + 2, before.base + size, kept))
    return True


def remove_log(path: Path) -> int:
    """Delete a log with its rotated backups (``<log>.1``, ``<log>.2``, … as long as they run on)
    and its rotation record; the number of files deleted. Missing files are not an error."""
    removed = 0
    candidates = [path, record_path(path)]
    index = 1
    while os.path.lexists(f"{path}.{index}"):
        candidates.append(Path(f"{path}.{index}"))
        index += 1
    for candidate in candidates:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(candidate)
            removed += 1
    return removed


def _copy_range(source: Path, target: Path, start: int, end: int) -> None:
    with open(source, "rb") as src, open(target, "wb") as dst:
        os.chmod(target, 0o600)  # output may hold secrets
        offset, left = start, end - start
        while left > 0:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), left, offset)
            if copied == 0:
                break
            offset += copied
            left -= copied


class LogStream:
    """Reads a log onwards from a stream offset, across rotations: complete lines, each with the
    stream offset just after it.

    Lines are whole or not at all: where bytes were lost before they were read (rotated out of
    every backup, or dropped by the cap), the broken line is skipped and reading goes on at the
    next one. A file that shrank with no rotation recorded was truncated by someone else:
    reading starts again at its beginning.
    """

    def __init__(self, path: Path, position: int) -> None:
        self.path = path
        self.position = position  # stream offset of the next byte to read
        self.lost = 0  # times bytes were lost (read too late)
        self._partial = b""
        self._skip_fragment = False
        self._waited = 0

    def poll(self, limit: int = 1 << 20) -> list[tuple[str, int]] | None:
        """The complete lines read now, or None when there was nothing to read (wait a while)."""
        rotation = read_rotation(self.path)
        if rotation.under_way and self._waited < PATIENCE:
            self._waited += 1
            return None
        self._waited = 0
        data, start, jump = self._fetch(rotation, limit)
        if read_rotation(self.path) != rotation:
            return None  # it rotated while we read: what was read may be the new file's bytes
        if jump is not _Jump.NONE:
            self._partial = b""
            self._skip_fragment = jump is _Jump.LOST  # the bytes go on mid-line
            if jump is _Jump.LOST:
                self.lost += 1
        self.position = start + len(data)
        if not data:
            return None
        base = start - len(self._partial)  # the stream offset of buffer[0]
        buffer = self._partial + data
        found: list[tuple[str, int]] = []
        begin = 0
        while True:
            newline = buffer.find(b"\n", begin)
            stop = len(buffer) if newline < 0 else newline
            for cut in line_cuts(buffer, begin, stop):  # a long line goes out in pieces, as it comes
                if not self._skip_fragment:
                    found.append((buffer[begin:cut].decode(errors="replace"), base + cut))
                begin = cut
            if newline < 0:
                break
            if self._skip_fragment:
                self._skip_fragment = False
            else:
                found.append((buffer[begin:newline].decode(errors="replace"), base + newline + 1))
            begin = newline + 1
        self._partial = buffer[begin:]
        return found

    def _fetch(self, rotation: Rotation, limit: int) -> tuple[bytes, int, _Jump]:
        """The next bytes, their stream offset, and how reading jumped to them."""
        position, jump = self.position, _Jump.NONE
        if position < rotation.base:
            for index in range(len(rotation.backups), 0, -1):  # oldest first
                start, end = rotation.backups[index - 1]
                if position >= end:
                    continue
                if position < start:
                    position, jump = start, _Jump.LOST
                data = _read(Path(f"{self.path}.{index}"), position - start, min(end - position, limit))
                if data:
                    return data, position, jump
                position, jump = end, _Jump.LOST  # the backup is shorter than recorded, or gone
            if position < rotation.base:
                position, jump = rotation.base, _Jump.LOST  # written between a copy and its truncate
        offset = position - rotation.base
        size = _size(self.path)
        if size < offset:  # shrank, and no rotation says why: someone else truncated it
            return _read(self.path, 0, min(size, limit)), rotation.base, _Jump.RESTART
        return _read(self.path, offset, min(size - offset, limit)), position, jump

    def __repr__(self) -> str:
        return f"<LogStream {self.path} at {self.position} partial={len(self._partial)} lost={self.lost}>"


class _Jump(Enum):
    NONE = "none"  # reading goes on where it was
    LOST = "lost"  # bytes before the data were lost before they were read: it may start mid-line
    RESTART = "restart"  # the file was truncated under us: reading starts again at its beginning


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _read(path: Path, offset: int, size: int) -> bytes:
    if size <= 0:
        return b""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as source:
        source.seek(offset)
        return source.read(size)
    return b""
