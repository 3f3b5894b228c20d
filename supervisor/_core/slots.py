"""Concurrency slots per process kind, with a fair (first come, first served) queue.

A slot is held by a *tracked action* while its executor runs it, never by a process: a process
that waits on an action, a timer or its children holds nothing, so parents waiting on children
cannot starve the children of slots. ("At most 8 local commands at once" = 8 slots for the kind
whose actions run the commands.) Executors that only coordinate declare ``uses_slot = False``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from .._errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class SlotStatistics:
    kind: str
    capacity: int
    used: int
    queued: int


class SlotPool:
    """Slots per kind; kinds without a limit are not limited."""

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        self._capacity: dict[str, int] = {}
        self._used: dict[str, int] = {}
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        for kind, limit in (limits or {}).items():
            self.set_limit(kind, limit)

    def set_limit(self, kind: str, limit: int) -> None:
        if not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"slots for kind {kind!r} must be a whole number >= 1, got {limit!r}")
        self._capacity[kind] = limit
        self._used.setdefault(kind, 0)
        self._queues.setdefault(kind, deque())
        self._hand_over(kind)

    def limited(self, kind: str) -> bool:
        return kind in self._capacity

    async def acquire(self, kind: str) -> None:
        if kind not in self._capacity:
            return
        queue = self._queues[kind]
        if not queue and self._used[kind] < self._capacity[kind]:
            self._used[kind] += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(future)
        try:
            await future  # the releaser counted the slot as ours before waking us
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(kind)  # handed over and cancelled in the same tick: give it back
            else:
                queue.remove(future)
            raise

    def release(self, kind: str) -> None:
        if kind not in self._capacity:
            return
        self._used[kind] -= 1
        self._hand_over(kind)

    def _hand_over(self, kind: str) -> None:
        queue = self._queues[kind]
        while queue and self._used[kind] < self._capacity[kind]:
            future = queue.popleft()
            if not future.done():
                self._used[kind] += 1
                future.set_result(None)

    def statistics(self) -> list[SlotStatistics]:
        return [
            SlotStatistics(kind, self._capacity[kind], self._used[kind], len(self._queues[kind]))
            for kind in sorted(self._capacity)
        ]

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.kind} {s.used}/{s.capacity} ({s.queued} queued)" for s in self.statistics())
        return f"<SlotPool {parts or 'unlimited'}>"
