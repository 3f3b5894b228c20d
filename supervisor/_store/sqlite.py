"""The embedded checkpoint store: one SQLite file (WAL), group commit on one writer thread.

Why group commit: with ``synchronous=FULL`` every SQLite commit is an fsync (~0.3 ms here, about
3,800 commits/s), while one transaction of 1,000 rows costs about the same. Processes hand their
records to :meth:`SQLiteStore.save` and wait; whatever accumulates while one transaction is being
written goes into the next one, so the batch size follows the load by itself.

One owner at a time: the store takes an exclusive ``flock`` on ``<path>.lock``; a second daemon on
the same file gets :class:`StoreLocked` naming the holder's pid, instead of two writers fighting.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import structlog

from .._core.codec import Checkpoint, decode_record, encode_record
from .._core.snapshot import ProcessRecord
from .._errors import CheckpointRejected, CorruptCheckpoint, StoreError
from . import sqlite_reads as reads
from .protocol import Checkpointable, Expired, Quarantined, Recovery, StoreStatistics
from .schema import chunk_parameters
from .sqlite_file import Finding, StoreFiles
from .sqlite_watch import WATCH_INTERVAL

Synchronous = Literal["FULL", "NORMAL", "OFF"]

DIRTY_RETRY_SECONDS = 1.0

LARGE_CHECKPOINT = 1 << 20
"""Bytes from which a process's checkpoint is worth a warning (see ``SQLiteStore._note_large``)."""

log = structlog.get_logger("statevisor.store")


class SQLiteStore:
    """Checkpoints in one SQLite file. Open with ``await SQLiteStore.open(path)``."""

    def __init__(
        self, path: str, *, synchronous: Synchronous = "FULL", busy_timeout: float = 5.0, verify_writes: bool = False
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL or OFF, not {synchronous!r}")
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        # Values are validated as they enter a state, so every checkpoint loads back by
        # construction; verify_writes also decodes each one before writing it (tests, debugging).
        self.verify_writes = verify_writes
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="statevisor-store")
        self._files = StoreFiles(path, synchronous=synchronous, busy_timeout=busy_timeout)
        self.watch_interval = WATCH_INTERVAL  # seconds between checks that its files are still at their names
        self._watch_timer: asyncio.TimerHandle | None = None
        self._watching: asyncio.Task[None] | None = None
        self._queue: list[tuple[Checkpoint, asyncio.Future[None] | None]] = []
        self._dirty: dict[str, Checkpointable] = {}
        # Effect-free checkpoints whose group commit failed: written by the next retry whatever
        # their dirty flag says (taking their checkpoint cleared it), until one succeeds.
        self._owed: dict[str, Checkpointable] = {}
        self._owed_retry: asyncio.TimerHandle | None = None
        self._owing = False
        self._large: dict[str, int] = {}  # pid -> the checkpoint size last warned about
        self._largest = 0
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._batches = 0
        self._records = 0
        self._last_batch = 0
        self._last_commit = 0.0
        self.max_page_count: int | None = None  # tests: make "disk full" real without a tiny filesystem

    @classmethod
    async def open(cls, path: str, **options: Any) -> SQLiteStore:
        store = cls(path, **options)
        try:
            findings = store._files.own()
            await store._run(store._files.open)
        except BaseException:
            await store.close()
            raise
        for level, event, fields in findings:
            getattr(log, level)(event, store=path, **fields)
        store._watch_later()
        return store

    # --- its files --------------------------------------------------------------------------

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return self._files.errors()

    async def _run(self, function: Any, *args: Any) -> Any:
        # uvloop keeps its last executor future referenced until the next call, result and all:
        # handed over in a list emptied here, a load's or a prune's records are not kept alive
        # with it while the store is idle.
        box: list[Any] = await asyncio.get_running_loop().run_in_executor(self._thread, _boxed, function, *args)
        return box.pop()

    def _db(self) -> sqlite3.Connection:
        return self._files.db()

    def _watch_later(self) -> None:
        if not self._closed and self.watch_interval > 0:
            self._watch_timer = asyncio.get_running_loop().call_later(self.watch_interval, self._watch_now)

    def _watch_now(self) -> None:
        self._watching = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Check that the store's files are still at their names (see ``_store_watch``)."""
        try:
            findings: list[Finding] = await self._run(self._housekeep)
        except Exception as exc:  # a bug or an unexpected error: said, and the watch goes on
            findings = [("error", "store_watch_failed", {"error": repr(exc)})]
        for level, event, fields in findings:
            getattr(log, level)(event, store=self.path, **fields)
        self._watch_later()

    def _housekeep(self) -> list[Finding]:
        findings = self._files.check()
        self._files.reclaim()
        return findings

    # --- writing: group commit -----------------------------------------------------------

    async def save(self, checkpoint: Checkpoint) -> None:
        """Make ``checkpoint`` durable; returns once its transaction has committed."""
        await self.submit(checkpoint)

    def submit(self, checkpoint: Checkpoint) -> asyncio.Future[None]:
        """Queue ``checkpoint`` for the next group commit; the future resolves once it is durable."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(StoreError(self.path, "the store is closed"))
            return future
        self._queue.append((checkpoint, future))
        self._kick()
        return future

    async def save_record(self, record: ProcessRecord) -> None:
        await self.save(encode_record(record))

    def mark_dirty(self, process: Checkpointable) -> None:
        """Put ``process``'s latest state into the next group commit (nobody waits for it)."""
        if not self._closed:
            self._dirty[process.pid] = process
            self._kick()

    def _kick(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    def _take_batch(self) -> tuple[list[tuple[Checkpoint, asyncio.Future[None] | None]], dict[str, Checkpointable]]:
        """The queued checkpoints, plus the latest state of each dirty process (which it names)."""
        batch, self._queue = self._queue, []
        taken: dict[str, Checkpointable] = {}
        if self._dirty:
            queued = {checkpoint.pid for checkpoint, _ in batch}
            for pid, process in self._dirty.items():
                owed = self._owed.pop(pid, None) is not None
                if pid not in queued and (process.dirty or owed):
                    batch.append((process.checkpoint(), None))
                    taken[pid] = process
            self._dirty.clear()
        return batch, taken

    def _retry_owed(self) -> None:
        self._owed_retry = None
        if not self._closed:
            self._dirty.update(self._owed)
            self._kick()

    async def _flush(self) -> None:
        while self._queue or self._dirty:
            batch, taken = self._take_batch()
            latest: dict[str, Checkpoint] = {}
            for checkpoint, _ in batch:
                current = latest.get(checkpoint.pid)
                if current is None or checkpoint.version >= current.version:
                    latest[checkpoint.pid] = checkpoint
            statements, rejected = self._rows(list(latest.values()))
            try:
                await self._run(self._write, statements, len(latest) - len(rejected))
            except StoreError as exc:
                rejected = {pid: exc for pid in latest}
            except BaseException as exc:  # a bug in the writer must not strand the waiters
                error = StoreError(self.path, f"writer failed: {exc!r}")
                rejected = {pid: error for pid in latest}
            self._settle(batch, rejected, taken)

    def _settle(
        self,
        batch: list[tuple[Checkpoint, asyncio.Future[None] | None]],
        rejected: dict[str, StoreError],
        taken: dict[str, Checkpointable],
    ) -> None:
        failed: StoreError | None = None
        for checkpoint, future in batch:
            failure = rejected.get(checkpoint.pid)
            if future is None:
                # Nobody waits on a dirty flush: keep it owed and try again a little later.
                if failure is not None:
                    self._owed[checkpoint.pid] = taken[checkpoint.pid]
                    failed = failure
                continue
            if future.done():
                continue
            if failure is None:
                future.set_result(None)
            else:
                future.set_exception(failure)
        if failed is not None and not self._owing:
            self._owing = True  # logged once an outage, not once a retry
            log.warning(
                "checkpoints_owed", processes=len(self._owed), error=str(failed), retry_every=DIRTY_RETRY_SECONDS
            )
        elif self._owing and not self._owed:
            self._owing = False
            log.info("checkpoints_caught_up", store=self.path)
        if self._owed and self._owed_retry is None and not self._closed:
            self._owed_retry = asyncio.get_running_loop().call_later(DIRTY_RETRY_SECONDS, self._retry_owed)

    def _rows(self, checkpoints: list[Checkpoint]) -> tuple[list[tuple[str, list[Any]]], dict[str, StoreError]]:
        now = time.time()
        rows: list[tuple[Any, ...]] = []
        rejected: dict[str, StoreError] = {}
        for checkpoint in checkpoints:
            if self.verify_writes:
                try:
                    decode_record(checkpoint.blob, path=self.path, pid=checkpoint.pid)
                except CorruptCheckpoint as exc:
                    rejected[checkpoint.pid] = CheckpointRejected(self.path, f"process {checkpoint.pid}: {exc.reason}")
                    continue
            if len(checkpoint.blob) >= LARGE_CHECKPOINT:
                self._note_large(checkpoint)
            ended = now if checkpoint.lifecycle.terminal else None
            if ended is not None and self._large:
                self._large.pop(checkpoint.pid, None)  # warned about for its life only
            rows.append(
                (checkpoint.pid, checkpoint.name, checkpoint.kind, str(checkpoint.lifecycle), checkpoint.version, now,
                 ended, checkpoint.blob)
            )  # fmt: skip
        return chunk_parameters(rows), rejected

    def _note_large(self, checkpoint: Checkpoint) -> None:
        """Warn about a process whose checkpoints are large, again each time it quadruples: each
        one writes the whole state, so a state that keeps its history grows every write."""
        size = len(checkpoint.blob)
        self._largest = max(self._largest, size)
        if size >= 4 * self._large.get(checkpoint.pid, LARGE_CHECKPOINT // 4):
            self._large[checkpoint.pid] = size
            log.warning(
                "large_checkpoint", pid=checkpoint.pid, name=checkpoint.name, kind=checkpoint.kind, bytes=size,
                note="every checkpoint writes the whole state: keep history out of it, or trim it",
            )  # fmt: skip

    def _write(self, statements: list[tuple[str, list[Any]]], rows: int) -> None:
        started = time.perf_counter()
        db = self._db()
        with self._errors():
            if self.max_page_count is not None:
                db.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement, parameters in statements:
                    db.execute(statement, parameters)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        self._batches += 1
        self._records += rows
        self._last_batch = rows
        self._last_commit = time.perf_counter() - started

    # --- reading (``_store_reads``, on the writer thread) ---------------------------------

    async def load(self) -> Recovery:
        """Every live (non-terminal) record; undecodable ones are moved to the quarantine."""
        result: Recovery = await self._run(reads.load, self._files)
        return result

    async def quarantine(self, pid: str, reason: str, blob: bytes | None = None) -> Quarantined:
        """Move a process out of the live set (its checkpoint stays for inspection)."""
        entry: Quarantined = await self._run(reads.quarantine, self._files, pid, reason, blob)
        return entry

    async def get(self, pid: str) -> ProcessRecord | None:
        found: ProcessRecord | None = await self._run(reads.record, self._files, pid)
        return found

    async def quarantined(self) -> list[Quarantined]:
        found: list[Quarantined] = await self._run(reads.quarantined, self._files)
        return found

    async def expired(self, ended_before: float, *, limit: int = 1000) -> Expired:
        """Up to ``limit`` terminal records that ended before ``ended_before``, oldest first:
        what retention prunes next (with :meth:`delete_ended`)."""
        found: Expired = await self._run(reads.expired, self._files, ended_before, limit)
        return found

    async def delete_ended(self, pids: list[str]) -> int:
        """Delete the records of ``pids`` that are terminal (a live process's never); how many."""
        count: int = await self._run(reads.delete_ended_records, self._files, pids)
        return count

    def statistics(self) -> StoreStatistics:
        queued = len(self._queue) + len(self._dirty) + len(self._owed)
        return StoreStatistics(
            self._batches,
            self._records,
            self._last_batch,
            self._last_commit,
            queued,
            largest_record=self._largest,
            file_problem=self._files.problem,
            size_bytes=self._files.size_bytes,
            free_bytes=self._files.free_bytes,
        )

    async def close(self) -> None:
        """Finish queued and owed writes, close the file and release ownership. Idempotent."""
        if self._owed_retry is not None:
            self._owed_retry.cancel()
            self._retry_owed()  # one last try for what is owed
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        if self._watching is not None:
            self._watching.cancel()
        if self._files.connection is not None and (self._queue or self._dirty):
            self._kick()
        try:
            if self._flusher is not None and not self._flusher.done():
                await asyncio.shield(self._flusher)
        finally:
            # Also when the wait is cut short (a writer hung on its disk): nothing more is taken.
            # The connection, the thread and the lock stay with the hung writer; exiting frees them.
            self._closed = True
        await self._run(self._files.close_connection)
        self._thread.shutdown(wait=True)
        self._files.release()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SQLiteStore {self.path} {state}, {self._records} records in {self._batches} batches>"


def _boxed(function: Any, *args: Any) -> list[Any]:
    return [function(*args)]
