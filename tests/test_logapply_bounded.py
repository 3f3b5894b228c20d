"""processes.logapply._entry_log.bounded: how a log's close waits on tasks that may not end."""

from __future__ import annotations

import asyncio
import gc

from processes.logapply._entry_log import _abandoned, bounded


async def test_a_task_that_swallows_its_cancellation_is_left_behind_not_waited_on() -> None:
    """A coroutine that swallows cancellation (as nats-py does while it queues a flush) keeps
    running past the bound: bounded returns anyway, keeps the task referenced while it runs,
    and lets it go once it ends."""
    release = asyncio.Event()
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                swallowed += 1

    async with asyncio.timeout(5):
        await bounded("stubborn", stubborn(), seconds=0.05)
    assert swallowed == 1
    assert len(_abandoned) == 1
    release.set()
    async with asyncio.timeout(5):
        while _abandoned:  # noqa: ASYNC110 - the done callback is the only signal
            await asyncio.sleep(0.01)


async def test_a_cancelled_gather_leaves_no_unretrieved_exception() -> None:
    """A gather over a task that ends only after being cancelled: the gather's CancelledError is
    retrieved (the loop reports nothing: this suite fails a test on "never retrieved")."""

    async def slow() -> None:
        await asyncio.sleep(60)

    task = asyncio.ensure_future(slow())
    await bounded("gather", asyncio.gather(task, return_exceptions=True), seconds=0.05)
    assert task.cancelled()
    gc.collect()  # an unretrieved exception is reported when the future is collected


async def test_a_task_that_ends_in_time_is_simply_awaited() -> None:
    """Within the bound, bounded is a plain wait; a failure while closing is retrieved, not raised."""

    async def fails() -> None:
        raise OSError("connection already gone")

    await bounded("fails", fails(), seconds=5)
    gc.collect()
