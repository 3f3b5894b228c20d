"""The log a log-apply machine follows: one interface, an embedded and a replicated backend.

Index 1 is the first entry ever appended; indexes have no holes. ``append`` returns once the
entry is committed (durable in SQLite; accepted by a JetStream quorum). ``msg_id`` makes
retried appends idempotent: appending an id the log already holds returns the original index.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

Entry = tuple[int, bytes]
"""(index, encoded entry) as the log hands them out, in index order."""


class Log(Protocol):
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
