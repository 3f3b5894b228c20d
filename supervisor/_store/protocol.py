"""The checkpoint store's contract: what a node asks of a store (:class:`Store`), and the
records it hands back (recovery, quarantine, retention, its counters).

The embedded SQLite store implements it; so can a store shared by several daemons. The core
asks less of a store (:class:`~supervisor._core.checkpointer.Checkpointer`: save, submit,
mark dirty); a node also recovers from it, quarantines, prunes and closes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .._core.checkpointer import Checkpointer
from .._core.codec import Checkpoint
from .._core.snapshot import ProcessRecord


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
    queued: int  # checkpoints not durable yet: waiting, being written, or owed after a failure
    largest_record: int = 0  # bytes, of the largest checkpoint written since the store opened (from 1 MiB)
    size_bytes: int = 0  # the database's pages (free ones included), as of the last housekeeping round
    free_bytes: int = 0  # of them, free: reused by new checkpoints, given back to the file system bit by bit
    file_problem: str = ""  # its files deleted or replaced under it and not mended (see the SQLite store); "" when fine


class Store(Checkpointer, Protocol):
    """A checkpoint store as a node uses it: open when handed over, closed by the node."""

    @property
    def path(self) -> str:
        """Where the store is, for logs and the status (a file, a cluster's address)."""
        ...

    async def save_batch(self, checkpoints: list[Checkpoint]) -> None:
        """Make all of ``checkpoints`` durable together, in one transaction (migrated states)."""
        ...

    async def load(self) -> Recovery:
        """Every live (non-terminal) record; undecodable ones are moved to the quarantine."""
        ...

    async def quarantine(self, pid: str, reason: str, blob: bytes | None = None) -> Quarantined:
        """Move a process out of the live set (its checkpoint stays for inspection)."""
        ...

    async def get(self, pid: str) -> ProcessRecord | None: ...

    async def quarantined(self) -> list[Quarantined]: ...

    async def expired(self, ended_before: float, *, limit: int = 1000) -> Expired:
        """Up to ``limit`` terminal records that ended before ``ended_before``, oldest first."""
        ...

    async def delete_ended(self, pids: list[str]) -> int:
        """Delete the records of ``pids`` that are terminal (never a live one's); how many."""
        ...

    def statistics(self) -> StoreStatistics: ...

    async def close(self) -> None:
        """Write what is queued and owed, and let the store go. Idempotent."""
        ...
