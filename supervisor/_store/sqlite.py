"""The embedded checkpoint store: one SQLite file (WAL), group commit on one writer thread.

Why group commit: with ``synchronous=FULL`` every SQLite commit is an fsync (~0.3 ms here, about
3,800 commits/s), while one transaction of 1,000 rows costs about the same. Processes hand their
records to :meth:`SQLiteStore.save` and wait; whatever accumulates while one transaction is being
written goes into the next one, so the batch size follows the load by itself.

One owner at a time: the store takes an exclusive ``flock`` on ``<path>.lock``; a second daemon on
the same file gets :class:`StoreLocked` naming the holder's pid, instead of two writers fighting.

Its files are kept at their names. SQLite keeps writing to the file it opened, whatever happens
to its name. A store file deleted under a daemon (a cleanup job, ``rm -r var/``, tmpfiles on
``/tmp``) loses every checkpoint at the next start, silently: the new daemon finds no file and
starts empty, while the commands and jobs of the old processes run on, unowned. A deleted lock
file lets a second daemon take the same store, and both run the same processes. So the store
compares, every :data:`WATCH_INTERVAL` seconds, what its two names point at with the files it
holds open: a deleted database is written back from the open connection, a deleted or replaced
lock file is made and locked again, and a replaced database (someone else's now) is left alone
and reported.

Everything that touches the connection runs on the store's one writer thread: the group
commit's writes, the reads (recovery, quarantine, retention) and the checks of its files
(:class:`StoreFiles`), one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import structlog

from .._core.checkpointer import Checkpointable
from .._core.codec import Checkpoint, decode_record, encode_record
from .._core.snapshot import ProcessRecord
from .._errors import CorruptCheckpoint, StoreError
from .._files.identity import FileFate, FileIdentity, fate, identity_at
from .._files.private import FILE_MODE, private_directory, private_file, tighten
from .errors import CheckpointRejected, StoreFull, StoreLocked
from .protocol import Expired, Quarantined, Recovery, StoreStatistics
from .schema import EXPIRED, SCHEMA, SCHEMA_VERSION, WAL_SIZE_LIMIT, chunk_parameters, delete_ended

Synchronous = Literal["FULL", "NORMAL", "OFF"]

DIRTY_RETRY_SECONDS = 1.0

LARGE_CHECKPOINT = 1 << 20
"""Bytes from which a process's checkpoint is worth a warning (see ``SQLiteStore._note_large``)."""

WATCH_INTERVAL = 10.0
"""Seconds between two checks that the store's files are still at their names."""

RECLAIM_PAGES = 4096
"""Free pages given back per housekeeping round (16 MiB at 4 KiB pages): a large freelist goes
back over several rounds, without holding the writer for long in any one."""

Finding = tuple[str, str, dict[str, Any]]
"""Something the file check found, to be logged on the event loop: level, event, fields."""

log = structlog.get_logger("statevisor.store")


class SQLiteStore:
    """Checkpoints in one SQLite file. Open with ``await SQLiteStore.open(path)``."""

    pipelined = True  # submit() hands out a future per checkpoint: processes may pipeline

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
        self._writing = 0  # checkpoints in the batch being committed
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
        """Check that the store's files are still at their names (see the module's text)."""
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

    async def save_batch(self, checkpoints: list[Checkpoint]) -> None:
        """Make all of ``checkpoints`` durable together: queued at once, they go into one group
        commit, which is one transaction."""
        await asyncio.gather(*[self.submit(checkpoint) for checkpoint in checkpoints])

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
            self._writing = len(latest)
            try:
                await self._run(self._write, statements, len(latest) - len(rejected))
            except StoreError as exc:
                rejected = {pid: exc for pid in latest}
            except BaseException as exc:  # a bug in the writer must not strand the waiters
                error = StoreError(self.path, f"writer failed: {exc!r}")
                rejected = {pid: error for pid in latest}
            self._writing = 0
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

    # --- reading (on the writer thread) ----------------------------------------------------

    async def load(self) -> Recovery:
        """Every live (non-terminal) record; undecodable ones are moved to the quarantine."""
        result: Recovery = await self._run(load_records, self._files)
        return result

    async def quarantine(self, pid: str, reason: str, blob: bytes | None = None) -> Quarantined:
        """Move a process out of the live set (its checkpoint stays for inspection)."""
        entry: Quarantined = await self._run(quarantine_record, self._files, pid, reason, blob)
        return entry

    async def get(self, pid: str) -> ProcessRecord | None:
        found: ProcessRecord | None = await self._run(read_record, self._files, pid)
        return found

    async def quarantined(self) -> list[Quarantined]:
        found: list[Quarantined] = await self._run(list_quarantined, self._files)
        return found

    async def expired(self, ended_before: float, *, limit: int = 1000) -> Expired:
        """Up to ``limit`` terminal records that ended before ``ended_before``, oldest first:
        what retention prunes next (with :meth:`delete_ended`)."""
        found: Expired = await self._run(expired_records, self._files, ended_before, limit)
        return found

    async def delete_ended(self, pids: list[str]) -> int:
        """Delete the records of ``pids`` that are terminal (a live process's never); how many."""
        count: int = await self._run(delete_ended_records, self._files, pids)
        return count

    def statistics(self) -> StoreStatistics:
        queued = len(self._queue) + len(self._dirty) + len(self._owed) + self._writing
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


# --- the store's files (on the writer thread) ---------------------------------------------


def take_ownership(path: str) -> int:
    """Lock ``<path>.lock`` for this process and write its pid there; the descriptor to close
    to let go. Raises :class:`StoreLocked` naming the holder when another process owns it."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(path, f"directory {directory} does not exist")
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(path, f"in use by another statevisor (pid {holder})") from None
    os.fchmod(fd, FILE_MODE)  # whatever the umask made of it, or an older file's mode
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def connect(path: str, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the store (WAL, the given durability), creating its schema or checking its version."""
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        with sqlite_errors(path, busy_timeout):
            # Before any table exists (it applies to new files only): free pages can then be
            # given back to the file system, so a burst of processes pruned later does not
            # leave the file at its high-water mark for good (see StoreFiles.reclaim).
            connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={synchronous}")
            connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            connection.executescript(SCHEMA)
            found = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                connection.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise StoreError(path, f"schema version {found[0]}, this statevisor reads {SCHEMA_VERSION}")
    except BaseException:
        connection.close()
        raise
    return connection


@contextlib.contextmanager
def sqlite_errors(path: str, busy_timeout: float) -> Iterator[None]:
    """Translate sqlite3's errors into ours, by meaning."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreLocked(path, f"locked by another writer for over {busy_timeout} s") from exc
        if "full" in text:
            raise StoreFull(path, f"disk or database full ({text})") from exc
        raise StoreError(path, text) from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(path, f"{type(exc).__name__}: {exc}") from exc


class StoreFiles:
    """The store's database and lock file, held open, and kept at their names.

    :meth:`check` runs on the writer thread (as every use of the connection does), so a
    write-back never interleaves with a group commit. The module's text says why it exists.
    """

    def __init__(self, path: str, *, synchronous: str, busy_timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.connection: sqlite3.Connection | None = None
        self.serving = path  # where the connection's file is: ``path``, unless a write-back found it taken
        self.problem = ""  # what is wrong with the files now, for the status and the metrics
        self._file: FileIdentity | None = None
        self._lock_fd: int | None = None
        self._lock_file: FileIdentity | None = None
        self.size_bytes = 0  # the database's pages, free ones included, at the last reclaim
        self.free_bytes = 0  # of them, free
        self._reopening: str | None = None  # a written-back copy that did not open yet
        self._said: set[str] = set()  # problems already logged, once each while they last

    def own(self) -> list[Finding]:
        """Lock the store for this process and make its files owner-only: the database is
        created 0600 before SQLite creates it (its ``-wal`` and ``-shm`` take its mode), and
        files others could read are tightened. What was found, for the log."""
        self._lock_fd = take_ownership(self.path)
        self._lock_file = FileIdentity.of(os.fstat(self._lock_fd))
        findings: list[Finding] = []
        tightened = tighten([self.path + suffix for suffix in ("", "-wal", "-shm")])
        private_file(self.path)
        if tightened:
            note = "the store's files could be read by other users; they are now its owner's alone (0600)"
            findings.append(("warning", "store_permissions_tightened", {"files": tightened, "note": note}))
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.stat(directory).st_mode & 0o077:
            note = "others may list the store's directory (its files are owner-only); it is left as it is"
            findings.append(("warning", "store_directory_open", {"directory": directory, "note": note}))
        return findings

    def open(self, where: str | None = None) -> None:
        where = where or self.path
        self.connection = connect(where, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
        self.serving = where
        self._file = identity_at(where)

    def check(self) -> list[Finding]:
        """Compare the two names with the files held open and mend what can be mended; what was
        mended, and the problems that are new since the last check (each is said once while
        it lasts, and ``problem`` names the ones there now)."""
        mended: list[Finding] = []
        problems: dict[str, Finding] = {}
        if self._reopening is not None:  # written back, but the copy did not open: again
            _sort(self._reopen(self._reopening, "store_file_reopened", {"at": self._reopening}), mended, problems)
        if self.connection is not None and self._file is not None:
            verdict = fate(self.serving, self._file)
            if verdict is FileFate.DELETED:
                _sort(self._write_back(self.connection), mended, problems)
            elif verdict is FileFate.REPLACED:
                note = (
                    "another file is at the store's name: this daemon writes to the one it opened, which the next "
                    "start will not find; stop it and put the right file back"
                )
                problems["store_file_replaced"] = ("error", "store_file_replaced", {"at": self.serving, "note": note})
        if (
            self._lock_fd is not None
            and self._lock_file is not None
            and fate(self.path + ".lock", self._lock_file) is not FileFate.INTACT
        ):
            _sort(self._relock(self._lock_fd), mended, problems)
        self.problem = ", ".join(problems)
        new = [finding for event, finding in problems.items() if event not in self._said]
        self._said = set(problems)
        return mended + new

    def _write_back(self, connection: sqlite3.Connection) -> Finding:
        try:
            partial = copy_out(connection, self.path)
        except (OSError, sqlite3.Error) as exc:
            # Nothing changed: the connection goes on writing to the deleted file; the next
            # check tries again.
            note = "checkpoints go to a deleted file, lost at exit; the write-back is tried again"
            return ("error", "store_file_not_restored", {"error": str(exc), "note": note})
        self.connection = None  # while it moves: a failure below leaves the store closed, not half-open
        connection.close()
        where = publish(partial, self.path)
        note = "the store's file was deleted; written back from the one held open"
        if where != self.path:
            note += f", to {where}: another file took its name meanwhile"
        return self._reopen(where, "store_file_restored", {"at": where, "note": note})

    def _reopen(self, where: str, event: str, fields: dict[str, Any]) -> Finding:
        try:
            self.open(where)
        except (OSError, StoreError) as exc:
            self._reopening = where
            note = "written back, but it does not open: checkpoints fail (processes pause) until it does"
            return ("error", "store_file_not_reopened", {"at": where, "error": str(exc), "note": note})
        self._reopening = None
        return ("warning", event, fields)

    def _relock(self, old: int) -> Finding:
        try:
            fd = take_ownership(self.path)
        except StoreError as exc:
            note = "its lock file was removed and another statevisor took the store: two daemons run its processes"
            return ("error", "store_lock_lost", {"error": str(exc), "note": note})
        os.close(old)
        self._lock_fd, self._lock_file = fd, FileIdentity.of(os.fstat(fd))
        return (
            "warning",
            "store_lock_restored",
            {"note": "its lock file was removed or replaced; made and locked again"},
        )

    def db(self) -> sqlite3.Connection:
        """The open connection (on the writer thread: a write-back may replace it)."""
        if self.connection is None:
            raise StoreError(self.path, "the store is closed")
        return self.connection

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return sqlite_errors(self.path, self.busy_timeout)

    def reclaim(self, pages: int = RECLAIM_PAGES) -> None:
        """Give up to ``pages`` free pages back to the file system (a store made with
        incremental auto-vacuum; older ones keep theirs for reuse), and note the database's size
        and free space. Housekeeping: a store busy right now is left for the next time."""
        connection = self.connection
        if connection is None:
            return
        with contextlib.suppress(StoreError), sqlite_errors(self.path, self.busy_timeout):
            free = connection.execute("PRAGMA freelist_count").fetchone()[0]
            if free and connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL
                # Each step of this pragma frees one page and returns no row, so execute() (one
                # step) would free one page a round; executescript steps it to the end.
                connection.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            page_size = connection.execute("PRAGMA page_size").fetchone()[0]
            self.size_bytes = connection.execute("PRAGMA page_count").fetchone()[0] * page_size
            self.free_bytes = connection.execute("PRAGMA freelist_count").fetchone()[0] * page_size

    def close_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _sort(finding: Finding, mended: list[Finding], problems: dict[str, Finding]) -> None:
    if finding[0] == "error":
        problems[finding[1]] = finding
    else:
        mended.append(finding)


# --- reads and retention deletes (on the writer thread) ----------------------------------


def load_records(files: StoreFiles) -> Recovery:
    """Every live (non-terminal) record; undecodable ones are moved to the quarantine."""
    db = files.db()
    records, quarantined = [], []
    with files.errors():
        rows = db.execute("SELECT pid, record FROM processes WHERE ended IS NULL").fetchall()
    for pid, blob in rows:
        try:
            records.append(decode_record(blob, path=files.path, pid=pid))
        except CorruptCheckpoint as exc:
            quarantined.append(quarantine_record(files, pid, exc.reason, blob))
    return Recovery(records, quarantined)


def quarantine_record(files: StoreFiles, pid: str, reason: str, blob: bytes | None) -> Quarantined:
    """Move a process out of the live set, in one transaction; its checkpoint stays for inspection."""
    entry = Quarantined(pid, reason, time.time(), blob)
    db = files.db()
    with files.errors():
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?)", (pid, reason, entry.at, blob))
        db.execute("DELETE FROM processes WHERE pid = ?", (pid,))
        db.execute("COMMIT")
    return entry


def read_record(files: StoreFiles, pid: str) -> ProcessRecord | None:
    with files.errors():
        row = files.db().execute("SELECT record FROM processes WHERE pid = ?", (pid,)).fetchone()
    return None if row is None else decode_record(row[0], path=files.path, pid=pid)


def list_quarantined(files: StoreFiles) -> list[Quarantined]:
    with files.errors():
        rows = files.db().execute("SELECT pid, reason, at, record FROM quarantine ORDER BY at").fetchall()
    return [Quarantined(*row) for row in rows]


def expired_records(files: StoreFiles, ended_before: float, limit: int) -> Expired:
    """Up to ``limit`` terminal records that ended before ``ended_before``, oldest first."""
    with files.errors():
        rows = files.db().execute(EXPIRED, (ended_before, limit)).fetchall()
    records: list[ProcessRecord] = []
    for pid, blob in rows:
        with contextlib.suppress(CorruptCheckpoint):
            records.append(decode_record(blob, path=files.path, pid=pid))
    return Expired([pid for pid, _ in rows], records)


def delete_ended_records(files: StoreFiles, pids: list[str]) -> int:
    """Delete the records of ``pids`` that are terminal (a live process's never); how many."""
    deleted = 0
    with files.errors():
        for start in range(0, len(pids), 500):
            chunk = pids[start : start + 500]
            deleted += files.db().execute(delete_ended(len(chunk)), chunk).rowcount
    return deleted


# --- writing the database back under its name -------------------------------------------


def copy_out(connection: sqlite3.Connection, path: str) -> str:
    """Copy the database open on ``connection`` next to ``path``, whole and durable, under a
    temporary name (so ``path`` never holds half a copy); returns that name."""
    private_directory(os.path.dirname(os.path.abspath(path)))  # `rm -r` of its directory
    partial = f"{path}.restoring"
    if os.path.exists(partial):
        os.unlink(partial)  # left by a write-back that did not finish
    private_file(partial)  # owner-only before SQLite writes a page of it
    target = sqlite3.connect(partial)
    try:
        connection.backup(target)
    finally:
        target.close()
    _fsync(partial, 0)
    return partial


def publish(partial: str, path: str) -> str:
    """Give the copy at ``partial`` the name ``path``, unless something took that name meanwhile
    (that file is left alone, and the copy keeps its name); returns where the copy is."""
    try:
        os.link(partial, path)
    except FileExistsError:
        return partial
    os.unlink(partial)
    _fsync(os.path.dirname(os.path.abspath(path)), os.O_DIRECTORY)
    return path


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
