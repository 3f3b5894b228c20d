"""A FIFO of waiting tasks, woken one at a time (fairness) or all at once."""

from __future__ import annotations

import asyncio
import enum
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

    def future(self) -> asyncio.Future[None]:
        """A future set at the next wake, for an observer that registers a callback instead of
        awaiting (one task serving many processes); cancel it to stop waiting."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(future)
        return future

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


class Condition(enum.IntEnum):
    """What a process's callers wait for."""

    ROOM = 0  # room in the mailbox for a cast or a call
    NUDGE_ROOM = 1  # room in the nudge buffer
    RESUMED = 2  # the process was resumed
    PAUSE_LANDED = 3  # a requested pause took effect
    CHANGED = 4  # a new version: state, lifecycle or pause
    DONE = 5  # the process ended


class Conditions:
    """One process's wait queues, one per :class:`Condition`, each made when first waited on.

    Most processes are never waited on for most conditions. Six queues made up front were six
    of a process's 23 objects that the cyclic collector tracks, walked by each of its full
    passes: at 100,000 revived processes such a pass took 1.4 s.
    """

    __slots__ = ("_queues",)

    def __init__(self) -> None:
        self._queues: dict[Condition, WaitQueue] | None = None

    async def wait(self, condition: Condition) -> None:
        queues = self._queues
        if queues is None:
            queues = self._queues = {}
        queue = queues.get(condition)
        if queue is None:
            queue = queues[condition] = WaitQueue()
        await queue.wait()

    def future(self, condition: Condition) -> asyncio.Future[None]:
        """A future set at the next wake of ``condition`` (see :meth:`WaitQueue.future`)."""
        queues = self._queues
        if queues is None:
            queues = self._queues = {}
        queue = queues.get(condition)
        if queue is None:
            queue = queues[condition] = WaitQueue()
        return queue.future()

    def wake_one(self, condition: Condition) -> None:
        queue = self._made(condition)
        if queue is not None:
            queue.wake_one()

    def wake_all(self, condition: Condition) -> None:
        queue = self._made(condition)
        if queue is not None:
            queue.wake_all()

    def fail_all(self, condition: Condition, error: BaseException) -> None:
        queue = self._made(condition)
        if queue is not None:
            queue.fail_all(error)

    def waiting(self, condition: Condition) -> int:
        queue = self._made(condition)
        return 0 if queue is None else len(queue)

    def _made(self, condition: Condition) -> WaitQueue | None:
        """The condition's queue if anyone ever waited on it (none: nobody to wake)."""
        queues = self._queues
        return queues.get(condition) if queues is not None else None

    def __repr__(self) -> str:
        counts = {c.name.lower(): n for c in Condition if (n := self.waiting(c))}
        return f"<Conditions waiting={counts}>"
