"""A simulated log for simulation tests: in memory, seeded, with JetStream's misbehaviours.

The committed entries survive "crashes" (they are the replicated log); what a simulation drops
is the replica. Delivery misbehaves as a JetStream consumer may around a failover: an entry
delivered twice, a batch that skips ahead (a hole the replica must notice and re-follow), and
appends whose acknowledgement is lost after the entry landed (the proposer retries under the
same message id, which must not append it again).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

from supervisor import AckLost

from ._log import Entry


class SimulatedLog:
    """An in-memory log. ``duplicate_rate``, ``hole_rate``, ``ack_loss_rate`` per delivery/append."""

    def __init__(
        self,
        seed: int,
        *,
        duplicate_rate: float = 0.0,
        hole_rate: float = 0.0,
        ack_loss_rate: float = 0.0,
        name: str = "sim",
    ) -> None:
        self.name = name
        self.rng = random.Random(seed)
        self.duplicate_rate = duplicate_rate
        self.hole_rate = hole_rate
        self.ack_loss_rate = ack_loss_rate
        self.entries: list[bytes] = []
        self.ids: dict[str, int] = {}
        self.first = 1
        self.duplicates_sent = 0
        self.holes_sent = 0
        self._changed = asyncio.Event()

    async def open(self) -> None:
        return None

    async def append(self, data: bytes, msg_id: str | None = None) -> int:
        if msg_id is not None and msg_id in self.ids:
            return self.ids[msg_id]
        self.entries.append(data)
        index = self.first + len(self.entries) - 1
        if msg_id is not None:
            self.ids[msg_id] = index
        self._changed.set()
        self._changed = asyncio.Event()
        if self.rng.random() < self.ack_loss_rate:
            raise AckLost(self.name, f"acknowledgement of entry {index} lost")
        return index

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    async def follow(self, after: int) -> AsyncIterator[list[Entry]]:
        while True:
            if after >= self.last:
                await self._changed.wait()
                continue
            start = max(after + 1, self.first)
            stop = min(self.last, start + self.rng.randint(0, 7))
            batch = [(i, self.entries[i - self.first]) for i in range(start, stop + 1)]
            if len(batch) > 1 and self.rng.random() < self.hole_rate:
                del batch[self.rng.randrange(len(batch) - 1)]  # a hole: an entry skipped
                self.holes_sent += 1
            if batch and self.rng.random() < self.duplicate_rate:
                batch.insert(self.rng.randrange(len(batch) + 1), batch[self.rng.randrange(len(batch))])
                batch.sort(key=lambda e: e[0])
                self.duplicates_sent += 1
            after = max(after, batch[-1][0]) if batch else after
            yield batch
            await asyncio.sleep(0)

    async def bounds(self) -> tuple[int, int]:
        return self.first, self.last

    async def compact(self, through: int) -> None:
        through = min(through, self.last)
        if through >= self.first:
            del self.entries[: through - self.first + 1]
            self.first = through + 1

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"<SimulatedLog {self.name} first={self.first} last={self.last} "
            f"dups={self.duplicates_sent} holes={self.holes_sent}>"
        )
