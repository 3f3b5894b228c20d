"""Effects held until the checkpoint that describes them is durable: write-ahead, pipelined.

A process need not wait for each checkpoint before it handles its next input. The checkpoint
goes to the store's group commit, and the transition's effects (tracked and untracked actions,
replies) wait here, in transition order, until that checkpoint has committed. So the outside
still never sees an effect whose state a crash could lose, but one process can have many
transitions in one group commit instead of one fsync each.

If a checkpoint fails, the effects behind it stay held while the owner retries with its current
state (which covers every held transition, since states only move forward), and are let out
when that lands. The queue is bounded: a process that gets ``limit`` checkpoints ahead of the
store waits for the oldest, which is also where it yields the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any


class HeldEffects:
    """One transition's effects, waiting for ``durable``."""

    __slots__ = ("durable", "replies", "tracked", "untracked")

    def __init__(self, durable: asyncio.Future[None], tracked: Any, untracked: Any, replies: Any) -> None:
        self.durable = durable
        self.tracked = tracked
        self.untracked = untracked
        self.replies = replies


class WriteAheadQueue:
    """Lets held effects out in order, each once its checkpoint (or a later one) is durable.

    ``let_out`` sends one transition's effects on their way; ``make_durable`` makes the owner's
    current state durable after a failed checkpoint (retrying, pausing): both are the owning
    process's, which alone knows its effects and its state.
    """

    __slots__ = ("_held", "_let_out", "_limit", "_make_durable", "_progress", "_retrying")

    def __init__(
        self,
        let_out: Callable[[HeldEffects], None],
        make_durable: Callable[[], Awaitable[None]],
        *,
        limit: int = 128,
    ) -> None:
        self._let_out = let_out
        self._make_durable = make_durable
        self._limit = limit
        self._held: deque[HeldEffects] = deque()
        self._retrying: asyncio.Task[None] | None = None
        self._progress: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, durable: asyncio.Future[None], tracked: Any, untracked: Any, replies: Any) -> None:
        self._held.append(HeldEffects(durable, tracked, untracked, replies))
        durable.add_done_callback(self._landed)

    def _landed(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved here; a failure is handled in order, below
        self._let_out_ready()

    def _let_out_ready(self) -> None:
        if self._retrying is not None:
            return  # the retry lets out what it covers, then hands back to here
        held = self._held
        while held and held[0].durable.done():
            head = held[0]
            if head.durable.cancelled() or head.durable.exception() is not None:
                self._retrying = asyncio.get_running_loop().create_task(self._retry_then_let_out())
                return
            held.popleft()
            self._let_out(head)
        self._wake()

    async def _retry_then_let_out(self) -> None:
        try:
            covered = len(self._held)
            await self._make_durable()
            for _ in range(min(covered, len(self._held))):
                self._let_out(self._held.popleft())
        finally:
            self._retrying = None
        self._let_out_ready()

    def _wake(self) -> None:
        progress = self._progress
        if progress is not None and not progress.done():
            progress.set_result(None)

    async def until_room(self) -> None:
        """Wait while ``limit`` transitions are held (back-pressure on a process racing the store)."""
        while len(self._held) >= self._limit:
            await self._next_progress()

    async def until_empty(self) -> None:
        """Wait until every held effect is let out (or dropped)."""
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
        return f"<WriteAheadQueue {len(self._held)} held{' retrying' if self._retrying else ''}>"
