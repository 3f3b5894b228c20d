"""A FIFO of waiting tasks, woken one at a time (fairness) or all at once."""

from __future__ import annotations

import asyncio
from collections import deque


class WaitQueue:
    """Tasks waiting for one condition. Cancelling one waiter never disturbs the others."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] | None = None  # allocated on first wait

    async def wait(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            # If we were woken and cancelled in the same tick, pass the wake-up on.
            if future.done() and not future.cancelled():
                self.wake_one()
            raise

    def wake_one(self) -> None:
        waiters = self._waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                return

    def wake_all(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    def fail_all(self, error: BaseException) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = None
            for future in waiters:
                if not future.done():
                    future.set_exception(error)

    def __len__(self) -> int:
        return sum(1 for f in self._waiters or () if not f.done())

    def __repr__(self) -> str:
        return f"<WaitQueue {len(self)} waiting>"
