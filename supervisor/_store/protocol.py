"""What the checkpoint store takes and hands back: records of recovery, quarantine, retention
and its own counters, apart from the SQLite code that makes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .._core.codec import Checkpoint
from .._core.snapshot import ProcessRecord


class Checkpointable(Protocol):
    """What :meth:`SQLiteStore.mark_dirty` takes: a process, as far as the store cares."""

    pid: str

    @property
    def dirty(self) -> bool: ...

    def checkpoint(self) -> Checkpoint: ...


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A process whose checkpoint could not be brought back; kept for an operator to inspect."""

    pid: str
    reason: str
    at: float
    record: bytes | None


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :meth:`SQLiteStore.load` found: live records, and the ones it quarantined."""

    records: list[ProcessRecord]
    quarantined: list[Quarantined]


@dataclass(frozen=True, slots=True)
class Expired:
    """Terminal records past their retention (see :meth:`SQLiteStore.expired`): every pid, and
    the final records of those that decode (one that does not is deleted all the same)."""

    pids: list[str]
    records: list[ProcessRecord]


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    batches: int
    records: int
    last_batch_size: int
    last_commit_seconds: float
    queued: int
    largest_record: int = 0  # bytes, of the largest checkpoint written since the store opened (from 1 MiB)
    size_bytes: int = 0  # the database's pages (free ones included), as of the last housekeeping round
    free_bytes: int = 0  # of them, free: reused by new checkpoints, given back to the file system bit by bit
    file_problem: str = ""  # its files deleted or replaced under it and not mended (see _store_watch); "" when fine
