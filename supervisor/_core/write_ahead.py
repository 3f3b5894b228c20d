"""Effects held until the checkpoint that describes them is durable: write-ahead, pipelined.

A process need not wait for each checkpoint before it handles its next input. The checkpoint
goes to the store's group commit, and the transition's effects (tracked and untracked actions,
replies) wait here, in transition order, until that checkpoint has committed. So the outside
still never sees an effect whose state a crash could lose, but one process can have many
transitions in one group commit instead of one fsync each.

If a checkpoint fails, the effects behind it stay held while the owner retries with its current
state (which covers every held transition, since states only move forward), and are released
when that lands. The queue is bounded: a process that gets ``limit`` checkpoints ahead of the
store waits for the oldest, which is also where it yields the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class Held:
    """One transition's effects, waiting for ``durable``."""

    __slots__ = ("durable", "replies", "tracked", "untracked")

    def __init__(self, durable: asyncio.Future[None], tracked: Any, untracked: Any, replies: Any) -> None:
        self.durable = durable
        self.tracked = tracked
        self.untracked = untracked
        self.replies = replies


class ReleaseQueue:
    """Releases held effects in order, each once its checkpoint (or a later one) is durable."""

    __slots__ = ("_held", "_limit", "_progress", "_release", "_retry", "_retrying")

    def __init__(
        self, release: Callable[[Held], None], retry: Callable[[], Awaitable[None]], *, limit: int = 128
    ) -> None:
        self._release = release
        self._retry = retry  # makes the owner's current state durable (retrying, pausing)
        self._limit = limit
        self._held: deque[Held] = deque()
        self._retrying: asyncio.Task[None] | None = None
        self._progress: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, durable: asyncio.Future[None], tracked: Any, untracked: Any, replies: Any) -> None:
        self._held.append(Held(durable, tracked, untracked, replies))
        durable.add_done_callback(self._landed)

    def _landed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved here; a failure is handled in order, below
        self._release_ready()

    def _release_ready(self) -> None:
        if self._retrying is not None:
            return  # the retry releases what it covers, then hands back to here
        held = self._held
        while held and held[0].durable.done():
            head = held[0]
            if head.durable.cancelled() or head.durable.exception() is not None:
                self._retrying = asyncio.get_running_loop().create_task(self._retry_then_release())
                return
            held.popleft()
            self._release(head)
        self._wake()

    async def _retry_then_release(self) -> None:
        try:
            covered = len(self._held)
            await self._retry()
            for _ in range(min(covered, len(self._held))):
                self._release(self._held.popleft())
        finally:
            self._retrying = None
        self._release_ready()

    def _wake(self) -> None:
        progress = self._progress
        if progress is not None and not progress.done():
            progress.set_result(None)

    async def until_room(self) -> None:
        """Wait while ``limit`` transitions are held (back-pressure on a process racing the store)."""
        while len(self._held) >= self._limit:
            await self._next_progress()

    async def until_empty(self) -> None:
        """Wait until every held effect is released (or dropped)."""
        while self._held:
            await self._next_progress()

    async def _next_progress(self) -> None:
        if self._progress is None or self._progress.done():
            self._progress = asyncio.get_running_loop().create_future()
        await self._progress

    def drop(self) -> None:
        """The process ended or was detached: nothing more leaves it (restore re-issues actions)."""
        self._held.clear()
        if self._retrying is not None:
            self._retrying.cancel()
        self._wake()

    def __repr__(self) -> str:
        return f"<ReleaseQueue {len(self._held)} held{' retrying' if self._retrying else ''}>"
