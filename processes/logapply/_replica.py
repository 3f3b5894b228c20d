"""A replica: one copy of a log-apply machine's state, following its log.

The decisions (is this entry next, a duplicate, past a hole? is a snapshot due?) are plain
synchronous code over the replica's counters; I/O (reading the log, writing snapshots) is done
around it. Recovery is the newest snapshot that loads plus replay of the log from the next
index; a replica serves reads once it has caught up with the log's end as it was at start.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import aclosing
from enum import StrEnum
from typing import Any

import msgpack  # type: ignore[import-untyped]
import structlog

from supervisor import AtomicValue
from supervisor.lowlevel import pack, unpack

from ._apply import Applier, decode_entry, encode_entry, state_hash
from ._entry_log import CLOSE_GRACE, Entry, EntryLog, bounded
from ._snapshots import SnapshotStore
from .errors import EntryLogError, LogGap, SnapshotError

log = structlog.get_logger("statevisor.logapply")

Outcome = tuple[bool, Any]
"""(True, result) or (False, "ErrorType: message") for one applied entry."""

_RESULTS_IN_SNAPSHOT = 1_000


class OnError(StrEnum):
    SKIP = "skip"  # the entry's result is the error; the machine moves on
    STOP = "stop"  # the machine stops at that entry (on every replica alike)


class ReplicaPhase(StrEnum):
    CREATED = "created"
    RECOVERING = "recovering"
    SERVING = "serving"
    STOPPED = "stopped"


def plain(value: Any) -> Any:
    # A result may be a container inside the state, which later entries change: copy it out.
    if isinstance(value, dict | list):
        return unpack(pack(value))
    return value


def describe_status(
    phase: ReplicaPhase,
    applied: int,
    commit: int,
    snapshot_index: int,
    snapshot_at: float | None,
    apply_errors: int,
    state: Any,
) -> dict[str, Any]:
    """What ``logapply.status`` answers, for a replica or a simulated one."""
    return {
        "phase": str(phase),
        "applied": applied,
        "commit": max(commit, applied),
        "lag": max(commit - applied, 0),
        "snapshot_index": snapshot_index,
        "snapshot_age": None if snapshot_at is None else time.time() - snapshot_at,
        "apply_errors": apply_errors,
        "hash": state_hash(state),
    }


class Replica:
    """Applies ``log``'s entries in order, exactly once, to ``applier``'s state."""

    def __init__(
        self,
        name: str,
        applier: Applier,
        log_: EntryLog,
        snapshots: SnapshotStore | None = None,
        *,
        snapshot_every: int = 100_000,
        snapshot_bytes: int = 64 << 20,
        on_error: OnError | str = OnError.SKIP,
        compact: bool = True,
        results_kept: int = 100_000,
    ) -> None:
        self.name = name
        self.applier = applier
        self.log = log_
        self.snapshots = snapshots
        self.snapshot_every = snapshot_every
        self.snapshot_bytes = snapshot_bytes
        self.on_error = OnError(on_error)
        self.compact = compact
        self.results_kept = results_kept
        self.phase = ReplicaPhase.CREATED
        self.value = AtomicValue(applier.initial_state())
        self.applied = 0
        self.commit = 0  # the log's last index, as last seen
        self.snapshot_index = 0
        self.snapshot_at: float | None = None
        self.snapshot_seconds = 0.0
        self.apply_errors = 0
        self.duplicates = 0
        self.holes = 0
        self.rejected_snapshots: list[str] = []
        self.results: OrderedDict[int, Outcome] = OrderedDict()
        self.failure: BaseException | None = None
        self._waiters: dict[int, list[asyncio.Future[Outcome]]] = {}
        self._progress = asyncio.Event()
        self._since_entries = 0
        self._since_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # --- recovery ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover, catch up with the log's end, then follow it in the background."""
        self.phase = ReplicaPhase.RECOVERING
        started = time.perf_counter()
        await self.log.open()
        self._load_snapshot()
        first, last = await self.log.bounds()
        self.commit = last
        if self.applied + 1 < first:
            missing = f"entries {self.applied + 1}..{first - 1} are no longer in the log"
            if self.rejected_snapshots:
                raise SnapshotError(
                    self.log.name, f"{missing}, and snapshots failed: {'; '.join(self.rejected_snapshots)}"
                )
            raise LogGap(self.log.name, f"{missing} and no snapshot covers them (newest snapshot: {self.applied})")
        if last > self.applied:
            await self._follow(until=last)
        self.phase = ReplicaPhase.SERVING
        log.info(
            "replica_serving", machine=self.name, applied=self.applied, seconds=round(time.perf_counter() - started, 3)
        )
        self._task = asyncio.get_running_loop().create_task(self._follow_forever(), name=f"replica {self.name}")

    def _load_snapshot(self) -> None:
        if self.snapshots is None:
            return
        for index in self.snapshots.indexes():
            try:
                state, results = msgpack.unpackb(self.snapshots.read(index), raw=False, strict_map_key=False)
                self.value.replace(state)
            except (ValueError, TypeError, OSError) as exc:
                reason = f"snapshot {index}: {exc}"
                self.rejected_snapshots.append(reason)
                log.error("snapshot_rejected", machine=self.name, index=index, error=str(exc))
                continue
            self.applied = self.snapshot_index = index
            self.results = OrderedDict((int(i), (bool(ok), value)) for i, ok, value in results)
            return

    # --- following --------------------------------------------------------------------------

    async def _follow_forever(self) -> None:
        try:
            await self._follow(until=None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise

    async def _follow(self, until: int | None) -> None:
        while True:
            async with aclosing(self.log.follow(self.applied)) as entries:  # type: ignore[type-var]
                hole = False
                async for batch in entries:
                    hole = self._apply_batch(batch)
                    self._progress.set()
                    self._progress = asyncio.Event()
                    if self._snapshot_due():
                        await self.snapshot()
                    if hole or (until is not None and self.applied >= until):
                        break
            if until is not None and self.applied >= until:
                return
            if hole:
                first, _ = await self.log.bounds()
                if first > self.applied + 1:
                    raise LogGap(self.log.name, f"entries {self.applied + 1}..{first - 1} vanished while following")

    def _apply_batch(self, batch: list[Entry]) -> bool:
        """Apply what is next in ``batch``; True if it skipped ahead (follow again from applied)."""
        for index, data in batch:
            if index <= self.applied:
                self.duplicates += 1
                continue
            if index != self.applied + 1:
                self.holes += 1
                return True
            self._apply_one(index, data)
        if batch and batch[-1][0] > self.commit:
            self.commit = batch[-1][0]
        return False

    def _apply_one(self, index: int, data: bytes) -> None:
        try:
            outcome: Outcome = (True, plain(self.value.apply(self.applier.apply, decode_entry(data))))
        except Exception as exc:
            outcome = (False, f"{type(exc).__name__}: {exc}")
            self.apply_errors += 1
            if self.on_error is OnError.STOP:
                raise EntryLogError(
                    self.log.name, f"stopped at entry {index}: apply raised {outcome[1]} (on_error = stop)"
                ) from exc
        self.applied = index
        self._since_entries += 1
        self._since_bytes += len(data)
        results = self.results
        results[index] = outcome
        if len(results) > self.results_kept:
            results.popitem(last=False)
        waiters = self._waiters.pop(index, None)
        if waiters:
            for future in waiters:
                if not future.done():
                    future.set_result(outcome)

    def _fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.phase = ReplicaPhase.STOPPED
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
        self._waiters.clear()
        self._progress.set()

    # --- snapshots --------------------------------------------------------------------------

    def _snapshot_due(self) -> bool:
        return self.snapshots is not None and (
            self._since_entries >= self.snapshot_every or self._since_bytes >= self.snapshot_bytes
        )

    async def snapshot(self) -> int:
        """Write a snapshot at the applied index now; compacts the log behind the previous one."""
        assert self.snapshots is not None
        started = time.perf_counter()
        index = self.applied
        recent = [[i, ok, value] for i, (ok, value) in list(self.results.items())[-_RESULTS_IN_SNAPSHOT:]]
        body = msgpack.packb([self.value.root, recent], use_bin_type=True)
        self._since_entries = self._since_bytes = 0
        size = await asyncio.to_thread(self.snapshots.write, index, body)
        self.snapshot_index = index
        self.snapshot_at = time.time()
        self.snapshot_seconds = time.perf_counter() - started
        if self.compact:
            previous = self.snapshots.previous(index)
            if previous:
                await self.log.compact(previous)
        log.info(
            "snapshot_written", machine=self.name, index=index, bytes=size, seconds=round(self.snapshot_seconds, 3)
        )
        return index

    # --- the API ----------------------------------------------------------------------------

    async def propose(self, entry: Any, msg_id: str | None = None) -> tuple[int, Outcome]:
        """Append ``entry``; return its index and outcome once applied here."""
        index = await self.log.append(encode_entry(entry), msg_id)
        return index, await self.outcome(index)

    async def outcome(self, index: int) -> Outcome:
        """The outcome of the entry at ``index``, waiting until it is applied."""
        if self.failure is not None:
            raise self.failure
        if index <= self.applied:
            kept = self.results.get(index)
            return kept if kept is not None else (True, None)  # applied before the kept results
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(index, []).append(future)
        return await future

    async def caught_up(self, index: int | None = None) -> None:
        """Wait until this replica has applied ``index`` (default: the log's current end)."""
        if index is None:
            index = (await self.log.bounds())[1]
        while self.applied < index:
            if self.failure is not None:
                raise self.failure
            await self._progress.wait()

    async def read(self, query: Any, *, sync: bool = False) -> Any:
        """Answer ``query`` from the applied state; ``sync``: first catch up with the log's end."""
        if sync:
            await self.caught_up()
        return plain(self.applier.query(self.value.root, query))

    def status(self) -> dict[str, Any]:
        """Where this replica is, with the hash of its state at ``applied``."""
        return describe_status(
            self.phase, self.applied, self.commit, self.snapshot_index, self.snapshot_at, self.apply_errors,
            self.value.root,
        )  # fmt: skip

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()  # bounded: a backend may swallow the cancellation (see bounded)
            # Longer than the follower's own bounded unsubscribe, which it may be in.
            follower = asyncio.gather(self._task, return_exceptions=True)
            await bounded(f"replica {self.name} follower", follower, seconds=2 * CLOSE_GRACE + 1)
        if self.failure is None:
            self._fail(EntryLogError(self.log.name, "the replica was closed"))
        self.phase = ReplicaPhase.STOPPED
        await self.log.close()

    def __repr__(self) -> str:
        return (
            f"<Replica {self.name} {self.phase} applied={self.applied} commit={self.commit} "
            f"snapshot={self.snapshot_index} errors={self.apply_errors}>"
        )
