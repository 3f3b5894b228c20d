"""The wait queues a process's callers block on: per condition, fair, and cancel-safe."""

from __future__ import annotations

import asyncio

import pytest

from supervisor._core.waiters import Condition, Conditions, WaitQueue


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waking_one_condition_leaves_the_waiters_of_the_others_waiting() -> None:
    """Conditions keeps one queue per condition: a wake of CHANGED releases the CHANGED waiters
    only, and a ROOM waiter goes on waiting until ROOM is woken."""
    conditions = Conditions()
    changed = [asyncio.ensure_future(conditions.wait(Condition.CHANGED)) for _ in range(3)]
    room = asyncio.ensure_future(conditions.wait(Condition.ROOM))
    await settle()
    assert 3 == conditions.waiting(Condition.CHANGED)
    assert 1 == conditions.waiting(Condition.ROOM)
    conditions.wake_all(Condition.CHANGED)
    await settle()
    assert all(w.done() for w in changed)
    assert not room.done()
    conditions.wake_one(Condition.ROOM)
    await asyncio.wait_for(room, 5)
    assert "waiting={}" in repr(conditions)


async def test_fail_all_fails_its_own_conditions_waiters_with_the_error() -> None:
    """A process that ends fails the callers waiting for room with its end; a waiter on another
    condition is untouched."""
    conditions = Conditions()
    room = asyncio.ensure_future(conditions.wait(Condition.ROOM))
    done = asyncio.ensure_future(conditions.wait(Condition.DONE))
    await settle()
    conditions.fail_all(Condition.ROOM, RuntimeError("gone"))
    with pytest.raises(RuntimeError, match="gone"):
        await asyncio.wait_for(room, 5)
    assert not done.done()
    assert "done" in repr(conditions)
    conditions.wake_all(Condition.DONE)
    await asyncio.wait_for(done, 5)


async def test_waking_or_failing_a_condition_nobody_waited_on_is_a_no_op() -> None:
    """Wakes come on every transition whether anyone waits or not; with no waiter they change
    nothing and make no queue."""
    conditions = Conditions()
    for condition in Condition:
        conditions.wake_all(condition)
        conditions.wake_one(condition)
        conditions.fail_all(condition, RuntimeError("x"))
        assert 0 == conditions.waiting(condition)
    assert "<Conditions waiting={}>" == repr(conditions)


async def test_wake_one_is_first_come_first_served_and_a_cancelled_waiter_passes_it_on() -> None:
    """WaitQueue wakes waiters in arrival order; a waiter woken and cancelled in the same tick
    hands its wake-up to the next, so a slot is never lost to a cancelled caller."""
    queue = WaitQueue()
    first = asyncio.ensure_future(queue.wait())
    second = asyncio.ensure_future(queue.wait())
    await settle()
    queue.wake_one()
    first.cancel()  # woken and cancelled before it ran
    await asyncio.wait_for(second, 5)
    assert first.cancelled()
    assert "0 waiting" in repr(queue)
