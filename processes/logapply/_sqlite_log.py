"""The embedded log: an append-only SQLite table with group commit.

Appends queue up while the previous transaction commits, then go in together: one transaction
(and with ``synchronous=FULL`` one fsync) per batch, however many proposals are in flight. The
entries just committed are also kept in memory for a while, so a replica that keeps up reads
them from there instead of selecting them back.

One writer per file: the file is locked (``flock``) while open, because indexes are assigned
by this process.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from supervisor.lowlevel import private_directory, private_file, tighten

from ._entry_log import Entry
from .errors import EntryLogError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, msg_id TEXT, data BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS entries_msg_id ON entries (msg_id) WHERE msg_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_TAIL_KEPT = 65_536
_READ_BATCH = 8_192
_CHUNK = 256  # rows per multi-row INSERT
# Write-ahead log bytes left on disk after a checkpoint: SQLite keeps the file at its high-water
# mark, so a burst of proposals would leave a log file the size of that burst for good.
WAL_SIZE_LIMIT = 64 << 20


def _inserts(columns: str, width: int) -> tuple[str, str]:
    """The INSERT of one row and of ``_CHUNK`` rows into ``columns``."""
    row = "(" + ", ".join("?" * width) + ")"
    head = f"INSERT INTO entries ({columns}) VALUES "
    return head + row, head + ", ".join([row] * _CHUNK)


_PLAIN = _inserts("idx, data", 2)
_WITH_IDS = _inserts("idx, msg_id, data", 3)


class SQLiteEntryLog:
    """A log in one SQLite file (WAL). ``synchronous``: FULL survives power loss, NORMAL a crash."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.synchronous = synchronous
        self.appended = 0
        self.commits = 0
        # Three parallel lists, not a list of tuples: at 50,000 appends/s the tuples and
        # unpacking them again were a tenth of the append path.
        self._datas: list[bytes] = []
        self._msg_ids: list[str | None] = []
        self._futures: list[asyncio.Future[int]] = []
        self._with_ids = 0  # appends in the pending batch that carry a message id
        self._wake = asyncio.Event()
        self._committed = asyncio.Event()
        self._tail: list[Entry] = []
        self._first = 1
        self._last = 0  # written by the writer thread
        self._visible = 0  # the last index followers may read: set on the loop after commit
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._lock: int | None = None
        self._closed = False
        # One thread at a time on the writer connection (appends and compaction).
        self._writing = asyncio.Lock()

    async def open(self) -> None:
        await asyncio.to_thread(self._open)
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(), name=f"log-flush {self.name}")

    def _open(self) -> None:
        private_directory(self.path.parent)
        lock = os.open(f"{self.path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise EntryLogError(self.name, "another process has this log open (one writer per log file)") from None
        self._lock = lock
        try:
            # The log holds every entry the machine applies: owner-only, whatever the umask.
            tighten([f"{self.path}{suffix}" for suffix in ("", "-wal", "-shm", ".lock")])
            private_file(self.path)
            writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            writer.execute("PRAGMA journal_mode=WAL")
            writer.execute(f"PRAGMA synchronous={self.synchronous}")
            writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            writer.executescript(_SCHEMA)
            row = writer.execute("SELECT MAX(idx), MIN(idx) FROM entries").fetchone()
            kept = writer.execute("SELECT value FROM meta WHERE key = 'first'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise EntryLogError(self.name, f"cannot open the log: {exc}") from None
        compacted_through = kept[0] - 1 if kept else 0
        self._last = row[0] if row[0] is not None else compacted_through
        self._first = row[1] if row[1] is not None else self._last + 1
        self._visible = self._last
        self._writer = writer
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    async def append(self, data: bytes, msg_id: str | None = None) -> int:
        if self._closed:
            raise EntryLogError(self.name, "the log is closed")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._datas.append(data)
        self._msg_ids.append(msg_id)
        self._futures.append(future)
        if msg_id is not None:
            self._with_ids += 1
        self._wake.set()
        return await future

    async def _flush_forever(self) -> None:
        # Runs until closed with nothing pending: a batch being written is never abandoned.
        while not (self._closed and not self._futures):
            await self._wake.wait()
            self._wake.clear()
            datas, msg_ids, futures, with_ids = self._datas, self._msg_ids, self._futures, self._with_ids
            if not futures:
                continue
            self._datas, self._msg_ids, self._futures, self._with_ids = [], [], [], 0
            try:
                async with self._writing:
                    if with_ids:
                        indexes, rows = await asyncio.to_thread(self._write_deduplicated, datas, msg_ids)
                    else:
                        indexes, rows = await asyncio.to_thread(self._write, datas)
            except Exception as exc:
                error = exc if isinstance(exc, EntryLogError) else EntryLogError(self.name, f"append failed: {exc}")
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
                continue
            self._remember(rows)
            for future, index in zip(futures, indexes, strict=True):
                if not future.done():
                    future.set_result(index)

    def _write(self, datas: list[bytes]) -> tuple[Sequence[int], list[Entry]]:
        """Appends without message ids: nothing to look up, each gets the next index."""
        first = self._last + 1
        indexes = range(first, first + len(datas))
        rows = list(zip(indexes, datas, strict=True))
        self._commit(_PLAIN, rows)
        return indexes, rows

    def _write_deduplicated(self, datas: list[bytes], msg_ids: list[str | None]) -> tuple[Sequence[int], list[Entry]]:
        """Appends some of which carry a message id: one already in the log (a retried append)
        answers with its index and is not written again, in this batch or an earlier one."""
        assert self._writer is not None
        db = self._writer
        known: dict[str, int] = {}
        ids = [m for m in msg_ids if m is not None]
        indexes: list[int] = []
        rows: list[tuple[int, str | None, bytes]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                known.update(db.execute(f"SELECT msg_id, idx FROM entries WHERE msg_id IN ({marks})", chunk))
            last = self._last
            for data, msg_id in zip(datas, msg_ids, strict=True):
                if msg_id is not None and msg_id in known:
                    indexes.append(known[msg_id])
                    continue
                last += 1
                rows.append((last, msg_id, data))
                indexes.append(last)
                if msg_id is not None:
                    known[msg_id] = last
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._commit(_WITH_IDS, rows, begun=True)
        return indexes, [(i, d) for i, _, d in rows]

    def _commit(self, inserts: tuple[str, str], rows: list[Any], *, begun: bool = False) -> None:
        assert self._writer is not None
        db = self._writer
        if not begun:
            db.execute("BEGIN IMMEDIATE")
        try:
            # Whole chunks as one statement each: executemany steps once per row and gives the
            # GIL back and takes it again each time (measured: ~2 µs per entry of CPU).
            one, chunk = inserts
            whole = len(rows) - len(rows) % _CHUNK
            for start in range(0, whole, _CHUNK):
                db.execute(chunk, list(chain.from_iterable(rows[start : start + _CHUNK])))
            db.executemany(one, rows[whole:])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if rows:
            self._last = rows[-1][0]
        self.appended += len(rows)
        self.commits += 1

    def _remember(self, rows: list[Entry]) -> None:
        if not rows:
            return
        self._tail.extend(rows)
        self._visible = rows[-1][0]
        if len(self._tail) > 2 * _TAIL_KEPT:
            del self._tail[:-_TAIL_KEPT]
        self._committed.set()
        self._committed = asyncio.Event()

    async def follow(self, after: int) -> AsyncIterator[list[Entry]]:
        while not self._closed:
            if after >= self._visible:
                await self._committed.wait()
                continue
            batch = self._from_tail(after) or await asyncio.to_thread(self._select, after)
            if batch:
                after = batch[-1][0]
                yield batch

    def _from_tail(self, after: int) -> list[Entry] | None:
        tail = self._tail
        if not tail or not tail[0][0] <= after + 1 <= tail[-1][0]:
            return None
        start = after + 1 - tail[0][0]
        return tail[start : start + _READ_BATCH]

    def _select(self, after: int) -> list[Entry]:
        assert self._reader is not None
        rows: list[Any] = self._reader.execute(
            "SELECT idx, data FROM entries WHERE idx > ? ORDER BY idx LIMIT ?", (after, _READ_BATCH)
        ).fetchall()
        return [(int(i), bytes(d)) for i, d in rows]

    async def bounds(self) -> tuple[int, int]:
        return self._first, self._visible

    async def compact(self, through: int) -> None:
        through = min(through, self._last)
        if through < self._first:
            return
        async with self._writing:
            await asyncio.to_thread(self._compact, through)
        self._first = through + 1
        self._tail = [e for e in self._tail if e[0] > through]

    def _compact(self, through: int) -> None:
        assert self._writer is not None
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM entries WHERE idx <= ?", (through,))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('first', ?)", (through + 1,))
        db.execute("COMMIT")

    async def close(self) -> None:
        self._closed = True
        self._committed.set()
        self._wake.set()
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        for connection in (self._writer, self._reader):
            if connection is not None:
                connection.close()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __repr__(self) -> str:
        return f"<SQLiteEntryLog {self.name} first={self._first} last={self._last} commits={self.commits}>"
