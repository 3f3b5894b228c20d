"""An online backup of a checkpoint store: a consistent copy, made while a daemon writes to it.

Copying the file with ``cp`` while a daemon runs can give a torn copy (a write-ahead log half
applied, a page from before and one from after a commit). SQLite's backup API copies the pages
of one read transaction instead, which in WAL mode never blocks the daemon's writer. The copy
is checked (``integrity_check``, and its tables counted), made durable, and only then renamed
to its name: a backup that failed leaves no file that looks like a good one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .._errors import StoreError
from .._files.private import private_file
from .inspect import open_read_only


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What :func:`backup` copied."""

    source: str
    target: str
    live: int
    ended: int
    quarantined: int
    bytes: int
    seconds: float


def backup(source: str, target: str) -> BackupReport:
    """Copy the store at ``source`` to ``target`` (replaced if it exists), consistently, while
    a daemon may be writing to it. Raises :class:`StoreError` naming the file at fault."""
    started = time.perf_counter()
    if not Path(source).is_file():
        raise StoreError(source, "no such store file")
    directory = Path(target).resolve().parent
    if not directory.is_dir():
        raise StoreError(target, f"the directory {directory} does not exist")
    partial = f"{target}.partial-{os.getpid()}"
    try:
        live, ended, quarantined = _copy(source, partial)
        _sync(partial)
        os.replace(partial, target)
        _sync(str(directory))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    size = os.stat(target).st_size
    return BackupReport(source, target, live, ended, quarantined, size, time.perf_counter() - started)


def _copy(source: str, partial: str) -> tuple[int, int, int]:
    with contextlib.closing(open_read_only(source)) as reader:
        try:
            private_file(partial)  # a backup holds every process's state: owner-only from the start
            writer = sqlite3.connect(partial)
        except sqlite3.Error as exc:
            raise StoreError(partial, f"cannot create the backup: {exc}") from exc
        with contextlib.closing(writer):
            try:
                reader.backup(writer)  # one step: the pages of one read transaction
            except sqlite3.Error as exc:
                raise StoreError(source, f"backup failed: {exc}") from exc
            return _check(writer, partial)


def _check(copy: sqlite3.Connection, path: str) -> tuple[int, int, int]:
    """The copy passes SQLite's integrity check and holds a store's tables; their counts."""
    try:
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise StoreError(path, f"the copy fails its integrity check: {'; '.join(problems[:3])}")
        live, ended = copy.execute("SELECT COUNT(*) - COUNT(ended), COUNT(ended) FROM processes").fetchone()
        (quarantined,) = copy.execute("SELECT COUNT(*) FROM quarantine").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(path, f"the copy is not a checkpoint store: {exc}") from exc
    return int(live), int(ended), int(quarantined)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
