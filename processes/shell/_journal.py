"""The run monitor's journal: one append-only file recording every run the monitor claimed,
started and saw end, until the daemon says the result is durable and the run is forgotten.

It is the idempotency record. Claiming a run (appending ``claim``) happens before its command
starts, in the one monitor that serves the run directory, so an action executed again after a
crash finds the claim and attaches to the run, or reads how it ended, instead of starting the
command a second time. A monitor started later (the old one was killed) loads it back.

One file for all runs, not a file (or directory) per run: creating and deleting a file per run
cost more than the run itself on this machine's ext4, whose inode allocator scans past recently
deleted inodes (measured with perf: most of the monitor's time in ``recently_deleted``). The
journal is rewritten with the live runs only once it has grown past twice what it held after
the last rewrite (and past ``COMPACT_AT``).

Lines are JSON arrays, readable with ``jq``::

    ["claim", id]                                 before the spawn
    ["started", id, [pid, start ticks, wall]]     right after it
    ["ended", id, {"exit"|"signal"|"setup": ..., "user", "system", "ended"}]
    ["forget", id]                                the daemon has the result durably

A line without its newline (the monitor died while writing it) is dropped at load.
Standard library only: the monitor imports it as a script's sibling.

A second writer: the monitor's keeper (see :mod:`._keeper`) appends ``ended`` for commands
whose monitor died before them. Its appends, the monitor's load and its rewrite hold
``<journal>.lock`` (``flock``), so a rewrite never drops a keeper's line and a keeper never
writes into a file that a rewrite has just replaced; the monitor's own appends need no lock
(one ``O_APPEND`` write each). The monitor reads the keeper's lines when it is asked about a run
that it did not see end (:meth:`Journal.refresh`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

COMPACT_AT = 1 << 20


@dataclass(slots=True)
class RunEntry:
    started: list[Any] | None = None
    ended: dict[str, Any] | None = None


def marker(runs: str, action_id: str) -> str:
    """The value of the MARKER environment variable for a run: how a command whose start the
    monitor did not live to note is found again in ``/proc/<pid>/environ``."""
    return f"{action_id}@{runs}"


def ended_entry(status: int, usage: resource.struct_rusage) -> dict[str, Any]:
    """The ``ended`` entry (and exit event) of a command reaped with ``status`` and ``usage``."""
    code = os.waitstatus_to_exitcode(status)
    how = {"signal": -code} if code < 0 else {"exit": code}
    return how | {"user": usage.ru_utime, "system": usage.ru_stime, "ended": time.time()}


def stdin_path(runs: str, action_id: str) -> str:
    digest = hashlib.blake2b(action_id.encode(), digest_size=8).hexdigest()
    return os.path.join(runs, f".stdin-{digest}")


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold the journal's lock (``<journal>.lock``, shared by the monitor and keepers)."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _lines(data: bytes) -> Iterator[list[Any]]:
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a damaged line loses that one fact, never the others
        if isinstance(entry, list) and len(entry) >= 2 and isinstance(entry[0], str) and isinstance(entry[1], str):
            yield entry


def _apply(runs: dict[str, RunEntry], entry: list[Any]) -> None:
    op, action_id = entry[0], entry[1]
    if op == "forget":
        runs.pop(action_id, None)
        return
    run = runs.setdefault(action_id, RunEntry())
    if op == "started":
        run.started = list(entry[2])
    elif op == "ended":
        run.ended = dict(entry[2])


def _replay(runs: dict[str, RunEntry], data: bytes) -> None:
    """Apply the journal lines in ``data`` (whole lines only) to ``runs``."""
    for entry in _lines(data):
        with contextlib.suppress(TypeError, ValueError, KeyError, IndexError):
            _apply(runs, entry)


def started_runs(path: str) -> dict[str, list[Any]]:
    """Runs the journal at ``path`` has seen start and not end: action id -> [pid, ticks, wall]."""
    with _locked(path):
        try:
            with open(path, "rb") as journal:
                data = journal.read()
        except FileNotFoundError:
            return {}
    runs: dict[str, RunEntry] = {}
    _replay(runs, data[: data.rfind(b"\n") + 1])
    return {action_id: run.started for action_id, run in runs.items() if run.started is not None and run.ended is None}


def _encoded(entry: list[Any]) -> bytes:
    """One journal line: the entry as compact JSON, and its newline."""
    return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


def append_ended(path: str, action_id: str, ended: dict[str, Any]) -> None:
    """Append ``ended`` for a run, as a writer other than the monitor (its keeper)."""
    line = _encoded(["ended", action_id, ended])
    with _locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


class Journal:
    """The journal file and, in memory, what it says about every run not yet forgotten."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.runs: dict[str, RunEntry] = {}
        with _locked(path):
            self._read = self._load()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self._fd).st_size
        self._compacted = self.size

    def append(self, op: str, action_id: str, *value: Any) -> None:
        entry = [op, action_id, *value]
        line = _encoded(entry)
        os.write(self._fd, line)  # one write with O_APPEND: whole lines, in order
        self.size += len(line)
        _apply(self.runs, entry)
        if op == "forget" and self.size > max(COMPACT_AT, 2 * self._compacted):
            self._compact()

    def close(self) -> None:
        os.close(self._fd)

    def refresh(self) -> None:
        """Take in the ``ended`` lines another writer (a keeper) appended since the last read.

        Only those: every other line past the read offset is this monitor's own, already
        applied when it was written.
        """
        try:
            with open(self.path, "rb") as journal:
                journal.seek(self._read)
                data = journal.read()
        except FileNotFoundError:
            return
        complete = data.rfind(b"\n") + 1
        self._read += complete
        for entry in _lines(data[:complete]):
            run = self.runs.get(entry[1])
            if entry[0] == "ended" and run is not None and run.ended is None and len(entry) > 2:
                with contextlib.suppress(TypeError, ValueError):
                    run.ended = dict(entry[2])

    def _load(self) -> int:
        """Apply the file's complete lines; the offset just after them."""
        try:
            with open(self.path, "rb") as journal:
                data = journal.read()
        except FileNotFoundError:
            return 0
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            os.truncate(self.path, complete)  # the next line must not be glued to a torn one
        _replay(self.runs, data[:complete])
        return complete

    def _compact(self) -> None:
        with _locked(self.path):
            self.refresh()  # a keeper's line since the last read must survive the rewrite
            self._rewrite()

    def _rewrite(self) -> None:
        lines: list[list[Any]] = []
        for action_id, run in self.runs.items():
            lines.append(["claim", action_id])
            if run.started is not None:
                lines.append(["started", action_id, run.started])
            if run.ended is not None:
                lines.append(["ended", action_id, run.ended])
        fresh = self.path + ".new"
        with open(fresh, "wb") as out:
            out.writelines(_encoded(line) for line in lines)
        os.replace(fresh, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self.size = self._compacted = self._read = os.fstat(self._fd).st_size

    def __repr__(self) -> str:
        return f"<Journal {self.path} runs={len(self.runs)} bytes={self.size}>"
