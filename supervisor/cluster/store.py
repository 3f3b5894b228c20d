"""The cluster's checkpoint store: every member's processes in JetStream key-value buckets,
each write fenced by the record's revision.

A process's record is one key of the ``checkpoints`` bucket (see :mod:`.connection`), its value
the owner's node and incarnation in front of the checkpoint. A member writes a record only on
the revision it last read or wrote (``Nats-Expected-Last-Subject-Sequence``): once another
member has taken the process (rewriting the record, so its revision moved), every write of the
old owner is refused, however long it was paused, and the process's copy there stops
(:class:`Fenced`, and ``on_fenced`` tells the member to drop it). A refusal after a write that
timed out may be that write having landed after all: the record then names this incarnation
(nobody else writes with it), so its revision is taken and the write goes on.

Writes are pipelined: up to ``window`` records in flight, each process's one at a time (its
next write needs the revision the last one returns), later checkpoints of a process coalesced
into its next write. A member's index (``owners``: ``<node>.<key>``) is written before a new
record and kept until its process ends, so a node's processes are found by listing one prefix;
taking a process over writes the new owner's index entry, rewrites the record, then deletes the
old entry, so at every moment an entry names the record's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import Header
from nats.js.kv import KeyValue

from .._core.checkpointer import Checkpointable
from .._core.codec import Checkpoint, decode_record
from .._core.snapshot import ProcessRecord
from .._errors import CorruptCheckpoint, StoreError
from .._store.protocol import Expired, Quarantined, Recovery, StoreStatistics
from .connection import ClusterConnection, pid_of, record_key
from .errors import Fenced

log = structlog.get_logger("statevisor.cluster")

VALUE_FORMAT = 1
DIRTY_RETRY_SECONDS = 1.0
PATIENCE = 30.0
"""Seconds a write is retried through failures the cluster gets over by itself (a stream's
leader election takes a few seconds; a server restart a few more) before its process hears of
it (and pauses, as on any store failure, until resumed)."""
READ_CONCURRENCY = 64  # records read (or taken over) at once by a claim
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_WRONG_LAST_SEQUENCE = (10071, 10164)
_EXPECTED = Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value
_NATS_FAILURES = (nats.errors.Error, TimeoutError, OSError)


def encode_value(node: str, incarnation: str, blob: bytes) -> bytes:
    """A record's value: its owner in front of its checkpoint."""
    packed: bytes = msgpack.packb([VALUE_FORMAT, node, incarnation, blob], use_bin_type=True)
    return packed


def decode_value(data: bytes) -> tuple[str, str, bytes]:
    """(owner's node, its incarnation, checkpoint) of a record's value; ValueError if it is not one."""
    try:
        fields = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise ValueError(f"not msgpack ({exc})") from None
    if not (isinstance(fields, list) and len(fields) == 4 and fields[0] == VALUE_FORMAT):
        raise ValueError("not a cluster record (format, owner, incarnation, checkpoint)")
    _, node, incarnation, blob = fields
    if not (isinstance(node, str) and isinstance(incarnation, str) and isinstance(blob, bytes)):
        raise ValueError("owner, incarnation or checkpoint of the wrong type")
    return node, incarnation, blob


@dataclass(frozen=True, slots=True)
class Claimed:
    """What a claim took (``records``, theirs now), what it quarantined, how many of the node's
    processes it left to others (not chosen, or taken by someone else first), and how many it
    could not read or take (NATS failing: worth another try)."""

    records: list[ProcessRecord]
    quarantined: list[Quarantined]
    left: int
    failed: int = 0  # not read or not taken for a failure of the store's (to be tried again)


@dataclass(frozen=True, slots=True)
class Latency:
    """Checkpoint write latencies as a histogram (Prometheus's cumulative form)."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


def cumulative(bounds: tuple[float, ...], counts: list[int], total: float) -> Latency:
    """Counts per bucket (the last one past every bound) as Prometheus's cumulative histogram."""
    running, buckets = 0, []
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append((bound, running))
    return Latency(tuple(buckets), running, total)


class _Refused(Exception):
    """A write refused because the record's revision is not the one expected."""


class _Waiting:
    """A process's next write: the newest checkpoint handed over, and who waits for it."""

    __slots__ = ("checkpoint", "futures")

    def __init__(self, checkpoint: Checkpoint, future: asyncio.Future[None] | None) -> None:
        self.checkpoint = checkpoint
        self.futures = [future] if future is not None else []


class ClusterStore:
    """Checkpoints of one member (``incarnation`` of node ``connection.settings.node``) in the
    cluster's buckets. ``on_fenced(pid, owner)`` is called when a write is refused because
    ``owner`` has the process now, before the writers hear of it."""

    pipelined = True

    def __init__(
        self,
        connection: ClusterConnection,
        incarnation: str,
        *,
        on_fenced: Callable[[str, str], None] | None = None,
    ) -> None:
        settings = connection.settings
        self.connection = connection
        self.node = settings.node
        self.incarnation = incarnation
        self.path = f"nats://{settings.name}/{settings.node}"
        self.window = settings.window
        self.timeout = settings.request_timeout
        self.patience = PATIENCE  # seconds a write is retried through transient failures
        self.on_fenced = on_fenced
        self._subject = f"$KV.{settings.bucket('checkpoints')}."
        self._revisions: dict[str, int] = {}  # pid -> the revision last read or written (ours)
        self._waiting: dict[str, _Waiting] = {}
        self._dirty: dict[str, Checkpointable] = {}
        self._owed: dict[str, Checkpointable] = {}  # dirty writes that failed: retried
        self._owed_retry: asyncio.TimerHandle | None = None
        self._ready: deque[str] = deque()
        self._scheduled: set[str] = set()
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[Any]] = set()  # index moves after a process ended
        self._closed = False
        self.writes = 0
        self.fenced = 0
        self.failed_writes = 0
        self.retries = 0  # attempts repeated after a transient failure
        self.taken = 0  # processes taken over from other nodes (or earlier incarnations)
        self._last_seconds = 0.0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_total = 0.0

    # --- writing -----------------------------------------------------------------------------

    async def save(self, checkpoint: Checkpoint) -> None:
        await self.submit(checkpoint)

    def submit(self, checkpoint: Checkpoint) -> asyncio.Future[None]:
        """Queue ``checkpoint``; the future resolves once it (or a later one of its process) is
        durable, or fails with the store's error (:class:`Fenced` when it is not ours)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(StoreError(self.path, "the store is closed"))
            return future
        pid = checkpoint.pid
        waiting = self._waiting.get(pid)
        if waiting is None:
            self._waiting[pid] = _Waiting(checkpoint, future)
        else:
            if checkpoint.version >= waiting.checkpoint.version:
                waiting.checkpoint = checkpoint
            waiting.futures.append(future)
        self._schedule(pid)
        return future

    async def save_batch(self, checkpoints: list[Checkpoint]) -> None:
        """Write every one of ``checkpoints``. Not one transaction here: each record is written
        by itself, and a crash midway leaves some of them written (a migration redone at the
        next start for the others is harmless: it starts from the schema each one has)."""
        await asyncio.gather(*[self.submit(checkpoint) for checkpoint in checkpoints])

    def mark_dirty(self, process: Checkpointable) -> None:
        if not self._closed:
            self._dirty[process.pid] = process
            self._schedule(process.pid)

    def _schedule(self, pid: str) -> None:
        if pid in self._scheduled or pid in self._in_flight:
            return  # written next, or after the write in flight (which looks again)
        self._scheduled.add(pid)
        self._ready.append(pid)
        self._idle.clear()
        if len(self._workers) < self.window and len(self._workers) < len(self._ready) + len(self._in_flight):
            self._workers.append(asyncio.get_running_loop().create_task(self._work(), name="cluster-store-writer"))
        self._wake.set()

    async def _work(self) -> None:
        ready = self._ready
        while True:
            while not ready:
                if not self._in_flight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            pid = ready.popleft()
            self._scheduled.discard(pid)
            await self._write_next(pid)

    async def _write_next(self, pid: str) -> None:
        waiting = self._waiting.pop(pid, None)
        process = self._dirty.pop(pid, None)
        owed = self._owed.pop(pid, None) is not None
        checkpoint = waiting.checkpoint if waiting is not None else None
        if process is not None and (process.dirty or owed):
            latest = process.checkpoint()
            if checkpoint is None or latest.version >= checkpoint.version:
                checkpoint = latest
        if checkpoint is None:
            return
        futures = waiting.futures if waiting is not None else []
        self._in_flight.add(pid)
        try:
            await self._write(checkpoint)
        except Fenced as exc:
            _settle(futures, exc)
        except StoreError as exc:
            self.failed_writes += 1
            _settle(futures, exc)
            if process is not None:
                self._owe(pid, process, exc)
        except BaseException as exc:  # a bug here must not strand the waiters
            _settle(futures, StoreError(self.path, f"writer failed: {exc!r}"))
            if not isinstance(exc, Exception):
                raise
        else:
            _settle(futures, None)
        finally:
            self._in_flight.discard(pid)
            if pid in self._waiting or pid in self._dirty:
                self._schedule(pid)

    def _owe(self, pid: str, process: Checkpointable, error: StoreError) -> None:
        if not self._owed:
            log.warning("checkpoints_owed", store=self.path, error=str(error), retry_every=DIRTY_RETRY_SECONDS)
        self._owed[pid] = process
        if self._owed_retry is None and not self._closed:
            self._owed_retry = asyncio.get_running_loop().call_later(DIRTY_RETRY_SECONDS, self._retry_owed)

    def _retry_owed(self) -> None:
        self._owed_retry = None
        for pid, process in list(self._owed.items()):
            self._dirty[pid] = process
            self._schedule(pid)

    async def _write(self, checkpoint: Checkpoint) -> None:
        """Write one checkpoint on the revision last seen; a failure the cluster gets over by
        itself (a stream electing a leader, a server restarting, a reconnection) is retried
        for up to :attr:`patience` seconds before the process hears of it."""
        pid = checkpoint.pid
        key = record_key(pid)
        revision = self._revisions.get(pid)
        if revision is None:  # a new process: its index entry first, so it is always findable
            await self._patiently(lambda: self.connection.owners.put(f"{self.node}.{key}", b""), f"indexing {pid}")
            revision = 0
        value = encode_value(self.node, self.incarnation, checkpoint.blob)
        headers: dict[str, Any] = {}
        started = time.perf_counter()
        for _ in range(3):
            headers[_EXPECTED] = str(revision)
            try:
                ack = await self._patiently(
                    lambda: self.connection.js.publish(
                        self._subject + key, value, timeout=self.timeout, headers=headers
                    ),
                    f"writing process {pid}",
                )
            except _Refused:
                revision = await self._ours_after_all(pid, key)
                continue
            break
        else:
            raise StoreError(self.path, f"writing process {pid}: its record kept changing under this writer")
        seconds = time.perf_counter() - started
        self._observe(seconds)
        self.writes += 1
        self._revisions[pid] = ack.seq
        if checkpoint.lifecycle.terminal:
            self._revisions.pop(pid, None)
            self._chore(self._retire(key, pid, self.node))

    async def _patiently(self, attempt: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``attempt()``, again after transient failures (with a growing pause), for up to
        :attr:`patience` seconds; a refusal of the expected revision raises :class:`_Refused`;
        anything else, or patience run out, a :class:`StoreError` saying what failed."""
        deadline = time.monotonic() + self.patience
        pause = 0.05
        while True:
            try:
                return await attempt()
            except nats.js.errors.APIError as exc:
                if exc.err_code in _WRONG_LAST_SEQUENCE:
                    raise _Refused from None
                if not (exc.code or 0) >= 500 or time.monotonic() + pause > deadline:
                    raise StoreError(self.path, f"{what}: {exc}") from exc
                error: BaseException = exc
            except _NATS_FAILURES as exc:
                if time.monotonic() + pause > deadline:
                    raise StoreError(self.path, f"{what}: {exc!r} (for {self.patience:g} s)") from exc
                error = exc
            self.retries += 1
            if self.retries == 1 or self.retries % 100 == 0:
                log.warning("cluster_store_retrying", what=what, error=repr(error), retries=self.retries)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _ours_after_all(self, pid: str, key: str) -> int:
        """A write was refused: the record's revision, if it is still this incarnation's (an
        earlier write that timed out landed after all); else the process is fenced off."""
        try:
            entry = await self.connection.checkpoints.get(key)
            owner, incarnation, _ = decode_value(entry.value or b"")
        except nats.js.errors.KeyNotFoundError:
            owner, incarnation = "nobody (its record was deleted)", ""
        except ValueError:
            owner, incarnation = "nobody (its record is not readable)", ""
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"writing process {pid}: refused, and reading why failed: {exc!r}") from exc
        if incarnation == self.incarnation and entry.revision is not None:
            return int(entry.revision)
        self._fence(pid, owner)
        raise Fenced(self.path, pid, owner)

    def _fence(self, pid: str, owner: str) -> None:
        self.fenced += 1
        self._revisions.pop(pid, None)
        self._dirty.pop(pid, None)
        self._owed.pop(pid, None)
        log.warning("checkpoint_fenced", pid=pid, owner=owner, node=self.node, store=self.path)
        if self.on_fenced is not None:
            self.on_fenced(pid, owner)

    async def _retire(self, key: str, pid: str, node: str) -> None:
        """A process of ``node`` ended: from its owners index to its ended one (retention)."""
        owners, ended = self.connection.owners, self.connection.ended
        try:
            await ended.put(f"{node}.{key}", msgpack.packb(time.time()))
            await owners.delete(f"{node}.{key}")
        except _NATS_FAILURES as exc:
            # Its record says it ended: a start or a claim finishing the move finds it so.
            log.warning("ended_index_not_updated", pid=pid, error=repr(exc), store=self.path)

    def _chore(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _call(self, work: Awaitable[Any], what: str) -> Any:
        try:
            return await work
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"{what}: {exc!r}") from exc

    def _observe(self, seconds: float) -> None:
        self._last_seconds = seconds
        self._latency_total += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._latency_counts[i] += 1
                return
        self._latency_counts[-1] += 1

    def latency(self) -> Latency:
        return cumulative(LATENCY_BUCKETS, self._latency_counts, self._latency_total)

    def owns(self, pid: str) -> bool:
        """Whether this store holds the revision of ``pid``'s record (writes it as its owner)."""
        return pid in self._revisions

    def forget(self, pid: str) -> None:
        """Stop writing ``pid`` (its process was dropped here); queued writes for it fail."""
        self._revisions.pop(pid, None)
        self._dirty.pop(pid, None)
        self._owed.pop(pid, None)
        waiting = self._waiting.pop(pid, None)
        if waiting is not None:
            _settle(waiting.futures, StoreError(self.path, f"process {pid} was dropped by this member"))

    # --- taking processes ----------------------------------------------------------------------

    async def load(self) -> Recovery:
        """Every live process this node owns (earlier incarnations' included, taken over by this
        one, so that a copy still running elsewhere under this node's name is fenced off)."""
        claimed = await self.claim(self.node, lambda record: True)
        return Recovery(claimed.records, claimed.quarantined)

    async def claim(self, node: str, choose: Callable[[ProcessRecord], bool]) -> Claimed:
        """Take the live processes of ``node`` that ``choose`` accepts: each record rewritten
        naming this incarnation, on the revision read (a process another member took first, or
        whose owner wrote it meanwhile, is left to them). Ended ones found on its index are moved
        to the ended index; records that do not decode are quarantined."""
        keys = await self.index(node)
        records: list[ProcessRecord] = []
        quarantined: list[Quarantined] = []
        left = failed = 0
        gate = asyncio.Semaphore(READ_CONCURRENCY)

        async def take(key: str) -> None:
            nonlocal left, failed
            async with gate:
                try:
                    outcome = await self._take(node, key, choose)
                except StoreError as exc:
                    # One record's failure must not lose the others already taken (they are
                    # this member's now, whatever happens to the rest).
                    if not failed:
                        log.warning("claim_incomplete", node=node, error=str(exc))
                    failed += 1
                    return
            if isinstance(outcome, ProcessRecord):
                records.append(outcome)
            elif isinstance(outcome, Quarantined):
                quarantined.append(outcome)
            elif outcome:
                left += 1

        await asyncio.gather(*[take(key) for key in keys])
        self.taken += sum(1 for record in records if node != self.node)
        return Claimed(records, quarantined, left, failed)

    async def _take(
        self, node: str, key: str, choose: Callable[[ProcessRecord], bool]
    ) -> ProcessRecord | Quarantined | bool:
        """One record of ``node``'s index: taken (its record), quarantined, left (True) to
        others, or nothing to take (False: gone, ended, or not ``node``'s any more)."""
        pid = pid_of(key)
        checkpoints, owners = self.connection.checkpoints, self.connection.owners
        try:
            entry = await checkpoints.get(key)
        except nats.js.errors.KeyNotFoundError:
            await self._call(owners.delete(f"{node}.{key}"), f"cleaning the index of {node}")
            return False
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"reading process {pid}: {exc!r}") from exc
        try:
            owner, _, blob = decode_value(entry.value or b"")
            record = decode_record(blob, path=self.path, pid=pid)
        except (ValueError, CorruptCheckpoint) as exc:
            reason = exc.reason if isinstance(exc, CorruptCheckpoint) else str(exc)
            return await self._quarantine(pid, reason, entry.value, node, entry.revision)
        if owner != node:
            return False  # moved; its new owner deletes this entry (or a start of ``node`` does, below)
        if record.lifecycle.terminal:
            await self._retire(key, pid, node)
            return False
        if not choose(record):
            return True
        if node != self.node:
            await self._call(owners.put(f"{self.node}.{key}", b""), f"indexing process {pid}")
        try:
            value = encode_value(self.node, self.incarnation, blob)
            revision = await checkpoints.update(key, value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            if node != self.node:
                await self._call(owners.delete(f"{self.node}.{key}"), f"cleaning the index of {self.node}")
            return True  # someone else took it, or its owner wrote it meanwhile
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"taking process {pid}: {exc!r}") from exc
        if node != self.node:
            await self._call(owners.delete(f"{node}.{key}"), f"cleaning the index of {node}")
        self._revisions[pid] = revision
        return record

    async def index(self, node: str) -> list[str]:
        """The record keys of ``node``'s index (its live processes, as far as written)."""
        return [key.partition(".")[2] for key in await self._keys(self.connection.owners, f"{node}.>")]

    async def nodes_indexed(self) -> dict[str, int]:
        """Every node with processes on the owners index, and how many (a scan of the index's
        keys: for the listing of a cluster's processes, not for every request)."""
        counts: dict[str, int] = {}
        for key in await self._keys(self.connection.owners, ">"):
            node = key.partition(".")[0]
            counts[node] = counts.get(node, 0) + 1
        return counts

    async def _keys(self, bucket: KeyValue, pattern: str) -> list[str]:
        try:
            return await self.connection.keys(bucket, pattern)
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"listing {pattern} of {bucket._name}: {exc!r}") from exc

    async def owner(self, pid: str) -> tuple[str, str] | None:
        """(node, incarnation) that owns ``pid``'s record, or None when there is no record."""
        try:
            entry = await self.connection.checkpoints.get(record_key(pid))
            node, incarnation, _ = decode_value(entry.value or b"")
        except nats.js.errors.KeyNotFoundError:
            return None
        except ValueError:
            return None
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"looking up process {pid}: {exc!r}") from exc
        return node, incarnation

    # --- reading, quarantine, retention ---------------------------------------------------------

    async def get(self, pid: str) -> ProcessRecord | None:
        key = record_key(pid)
        try:
            entry = await self.connection.checkpoints.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except _NATS_FAILURES as exc:
            raise StoreError(self.path, f"reading process {pid}: {exc!r}") from exc
        try:
            _, _, blob = decode_value(entry.value or b"")
        except ValueError as exc:
            raise CorruptCheckpoint(self.path, pid, str(exc)) from None
        return decode_record(blob, path=self.path, pid=pid)

    async def quarantine(self, pid: str, reason: str, blob: bytes | None = None) -> Quarantined:
        key = record_key(pid)
        entry: Any = None
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            entry = await self._call(self.connection.checkpoints.get(key), f"reading process {pid}")
        value = blob if blob is not None else (entry.value if entry is not None else None)
        return await self._quarantine(pid, reason, value, self.node, entry.revision if entry is not None else None)

    async def _quarantine(
        self, pid: str, reason: str, value: bytes | None, node: str, revision: int | None
    ) -> Quarantined:
        key = record_key(pid)
        at = time.time()
        body = msgpack.packb([pid, reason, at, value], use_bin_type=True)
        await self._call(self.connection.quarantine.put(key, body), f"quarantining process {pid}")
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            await self._call(self.connection.checkpoints.delete(key, last=revision), f"quarantining process {pid}")
        await self._call(self.connection.owners.delete(f"{node}.{key}"), f"quarantining process {pid}")
        self._revisions.pop(pid, None)
        return Quarantined(pid, reason, at, value)

    async def quarantined(self) -> list[Quarantined]:
        found: list[Quarantined] = []
        for key in await self._keys(self.connection.quarantine, ">"):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await self._call(self.connection.quarantine.get(key), "reading the quarantine")
                pid, reason, at, value = msgpack.unpackb(entry.value, raw=False)
                found.append(Quarantined(pid, reason, at, value))
        return sorted(found, key=lambda q: q.at)

    async def expired(self, ended_before: float, *, limit: int = 1000) -> Expired:
        """Up to ``limit`` of the processes this node saw end before ``ended_before``."""
        ended: list[tuple[float, str]] = []
        for key in await self._keys(self.connection.ended, f"{self.node}.>"):
            with contextlib.suppress(nats.js.errors.KeyNotFoundError, ValueError, TypeError):
                entry = await self._call(self.connection.ended.get(key), "reading the ended index")
                at = float(msgpack.unpackb(entry.value))
                if at < ended_before:
                    ended.append((at, key.partition(".")[2]))
        ended.sort()
        pids, records = [], []
        for _, key in ended[:limit]:
            pid = pid_of(key)
            pids.append(pid)
            with contextlib.suppress(CorruptCheckpoint):
                record = await self.get(pid)
                if record is not None:
                    records.append(record)
        return Expired(pids, records)

    async def delete_ended(self, pids: list[str]) -> int:
        """Delete the records of ``pids`` that ended (a live one's never), and their ended index."""
        deleted = 0
        for pid in pids:
            key = record_key(pid)
            try:
                record = await self.get(pid)
            except CorruptCheckpoint:
                record = None
            if record is not None and not record.lifecycle.terminal:
                continue
            await self._call(self.connection.checkpoints.purge(key), f"deleting process {pid}")
            await self._call(self.connection.ended.purge(f"{self.node}.{key}"), f"deleting process {pid}")
            deleted += 1
        return deleted

    def statistics(self) -> StoreStatistics:
        # Not yet durable: a write in flight counts, or "nothing queued" would come before it lands.
        queued = len(self._waiting.keys() | self._dirty.keys() | self._owed.keys() | self._in_flight)
        return StoreStatistics(self.writes, self.writes, 1 if self.writes else 0, self._last_seconds, queued)

    async def close(self) -> None:
        """Write what is queued (the caller bounds the wait), then stop the writers. The
        connection stays open: it is the member's."""
        if self._owed_retry is not None:
            self._owed_retry.cancel()
            self._retry_owed()
        try:
            while self._ready or self._in_flight or self._waiting or self._dirty:
                self._wake.set()
                await self._idle.wait()
                if not (self._ready or self._in_flight):
                    break
            if self._chores:
                await asyncio.gather(*list(self._chores), return_exceptions=True)
        finally:
            self._closed = True
            for worker in self._workers:
                worker.cancel()
            self._workers.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<ClusterStore {self.path} {state}: {len(self._revisions)} owned, {self.writes} writes, "
            f"{self.fenced} fenced, {len(self._in_flight)} in flight>"
        )


def _settle(futures: Iterable[asyncio.Future[None]], error: BaseException | None) -> None:
    for future in futures:
        if not future.done():
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
