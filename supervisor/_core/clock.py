"""Where the runtime reads time and arms timers.

Transitions never read a clock themselves: ``ctx.now`` is the clock's reading when the
transition began, so a re-run of the transition (check mode, simulation) sees the same time.
Times are seconds since the epoch, because timer deadlines are checkpointed and must mean the
same thing after a restart.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """A source of time and timers. ``call_at`` callbacks run on the event loop."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle: ...


class SystemClock:
    """Wall-clock time, timers on the running event loop."""

    def now(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, when - time.time()), callback)

    def __repr__(self) -> str:
        return "<SystemClock>"


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to: timers fire, in deadline order, inside :meth:`advance`.

    For tests of timeouts and backoff that must take no real time and cannot flake.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _ManualTimer(callback)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def advance(self, seconds: float) -> int:
        """Move time forward, firing every timer that falls due; returns how many fired."""
        if seconds < 0:
            raise ValueError(f"cannot move time backwards ({seconds} s)")
        target = self._now + seconds
        fired = 0
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            self._now = max(self._now, when)
            if not timer.cancelled:
                fired += 1
                timer.callback()
        self._now = target
        return fired

    @property
    def armed(self) -> int:
        """Timers not yet fired or cancelled."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def __repr__(self) -> str:
        return f"<ManualClock now={self._now:.3f}, {self.armed} armed>"
