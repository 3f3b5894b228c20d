"""Concurrency slots per kind: a limit on running actions, a fair queue, no slot deadlock."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from supervisor import ConfigurationError, Lifecycle, Runtime, SlotPool
from tests.helpers import wait_for_snapshot, wait_until
from tests.machines import Worker


class Counting:
    """An executor that counts how many of its actions run at once."""

    idempotent = False

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.order: list[Any] = []
        self.release = asyncio.Event()

    async def execute(self, action: Any) -> Any:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.order.append(action.payload)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return action.payload

    async def cancel(self, action: Any) -> None:
        return None


async def test_at_most_the_limit_of_actions_run_and_the_rest_wait_in_order() -> None:
    """With 2 slots for a kind, at most 2 of its actions run; queued ones start first come, first
    served; processes whose actions wait in the queue are waiting, holding nothing."""
    counting = Counting()
    runtime = Runtime(executors={"work": counting}, slots={"worker": 2})
    handles = [runtime.spawn(Worker, pid=f"w{i}") for i in range(6)]
    for index, handle in enumerate(handles):
        await handle.cast(("work", index))
    await wait_until(lambda: len(counting.order) == 2)
    await asyncio.sleep(0.01)
    assert 2 == counting.peak
    assert [0, 1] == counting.order
    assert all(h.snapshot().lifecycle is Lifecycle.WAITING for h in handles)
    (stats,) = runtime.slots.statistics()
    assert (2, 2, 4) == (stats.capacity, stats.used, stats.queued)
    counting.release.set()
    for handle in handles:
        await wait_for_snapshot(handle, lambda s: "done" in s.state)
    assert [0, 1, 2, 3, 4, 5] == counting.order
    assert 2 == counting.peak
    await runtime.kill_all()


async def test_an_unslotted_executor_is_not_limited() -> None:
    """Executors that declare uses_slot = False (coordination, e.g. waiting on children) take no
    slot, so they can never starve the work they wait for."""
    counting = Counting()
    counting.uses_slot = False  # type: ignore[attr-defined]
    runtime = Runtime(executors={"work": counting}, slots={"worker": 1})
    handles = [runtime.spawn(Worker) for _ in range(3)]
    for handle in handles:
        await handle.cast(("work", 1))
    await wait_until(lambda: counting.running == 3)
    counting.release.set()
    await runtime.kill_all()


async def test_killing_a_queued_process_gives_its_place_up() -> None:
    """A process killed while its action waits for a slot leaves the queue; the slot count stays right."""
    counting = Counting()
    runtime = Runtime(executors={"work": counting}, slots={"worker": 1})
    first, second, third = (runtime.spawn(Worker) for _ in range(3))
    for handle in (first, second, third):
        await handle.cast(("work", 1))
    await wait_until(lambda: runtime.slots.statistics()[0].queued == 2)
    await second.kill()
    assert 1 == runtime.slots.statistics()[0].queued
    await first.kill()
    await wait_until(lambda: counting.running == 1)
    assert (1, 0) == (runtime.slots.statistics()[0].used, runtime.slots.statistics()[0].queued)
    counting.release.set()
    await runtime.kill_all()


def test_slot_limits_must_be_positive_whole_numbers() -> None:
    """A slot limit below 1 or not an int is a configuration error naming the kind."""
    with pytest.raises(ConfigurationError, match="'shell'"):
        SlotPool({"shell": 0})
    assert "shell 0/2 (0 queued)" in repr(SlotPool({"shell": 2}))
