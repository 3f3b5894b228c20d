"""The log a log-apply machine follows: one interface, an embedded and a replicated backend.

Index 1 is the first entry ever appended; indexes have no holes. ``append`` returns once the
entry is committed (durable in SQLite; accepted by a JetStream quorum). ``msg_id`` makes
retried appends idempotent: appending an id the log already holds returns the original index.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import structlog

log = structlog.get_logger("statevisor.logapply")

Entry = tuple[int, bytes]
"""(index, encoded entry) as the log hands them out, in index order."""

CLOSE_GRACE = 5.0
"""Seconds a close waits for a task of a log (a lane, a follower, an unsubscribe, a connection
close) to finish before leaving it behind."""
_abandoned: set[asyncio.Future[Any]] = set()  # left running past the grace; referenced until done


async def bounded(what: str, coroutine: Any, seconds: float = CLOSE_GRACE) -> None:
    """Run ``coroutine`` for at most ``seconds``: on time-out it is cancelled and, if that does
    not end it (nats-py may swallow the cancellation), left behind instead of waited on, unlike
    ``asyncio.wait_for``, which waits for the cancelled task to finish."""
    task = asyncio.ensure_future(coroutine)
    try:
        await asyncio.wait({task}, timeout=seconds)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
    except asyncio.CancelledError:
        task.cancel()
        _leave(task)
        raise
    if task.done():
        _retrieve(task)
        return
    log.warning("close_left_running", what=what, after=seconds)
    _leave(task)


def _leave(task: asyncio.Future[Any]) -> None:
    """Referenced until it ends (never destroyed while pending), then retrieved."""
    _abandoned.add(task)
    task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Future[Any]) -> None:
    # Failures while closing are not ours to raise; and a cancelled gather ends with
    # CancelledError as its exception, not as cancelled, which the loop would report as never
    # retrieved.
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()


class EntryLog(Protocol):
    name: str

    async def open(self) -> None: ...

    async def append(self, data: bytes, msg_id: str | None = None) -> int: ...

    def follow(self, after: int) -> AsyncIterator[list[Entry]]:
        """Committed entries with index > ``after``, in order, in batches, forever.

        A backend that can deliver an entry twice or out of order (JetStream after a server
        failover) may do so; the replica drops what it has applied and re-follows on a hole.
        """
        ...

    async def bounds(self) -> tuple[int, int]:
        """(first retained index, last index): (last + 1, last) when nothing is retained."""
        ...

    async def compact(self, through: int) -> None:
        """Drop entries up to and including ``through`` (covered by a snapshot)."""
        ...

    async def close(self) -> None: ...
