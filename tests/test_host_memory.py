"""A long-running host: what it keeps in memory of ended processes, and that nothing else grows."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path
from typing import Any

import pytest

from supervisor import (
    ConfigurationError,
    Lifecycle,
    Node,
    ProcessFinished,
    ProcessNotFound,
    TrackedAction,
    UntrackedAction,
)
from tests.machines import Worker


async def echo(action: TrackedAction | UntrackedAction) -> Any:
    return action.payload


async def run_to_the_end(host: Node, count: int) -> list[str]:
    """``count`` workers that each run a tracked action and finish; their pids."""
    handles = [await host.spawn(Worker, {}) for _ in range(count)]
    for handle in handles:
        await handle.cast(("work", 1))
    for handle in handles:
        await handle.call("done")
    for handle in handles:
        await handle.wait()
    return [handle.pid for handle in handles]


async def test_a_long_running_host_holds_memory_bounded_by_ended_kept(tmp_path: Path) -> None:
    """Round after round of processes spawned, run through a tracked action, ended and pruned:
    once the ended_kept most recent are held, the number of live Python objects stays flat (a
    leak of even one object per two processes would add 250 per round, 500 over two rounds).
    Rounds are compared by their lowest counts, two against two: an object count is a moment's,
    and a group commit or another thread's work in flight at that moment raised one round of a
    CI run by 1,450, the rounds after it back to where they were (not a leak: a leak grows)."""
    host = Node(machines=[Worker], executors={"work": echo}, store=str(tmp_path / "s.db"), retention=0.0, ended_kept=50)
    await host.start()
    try:
        counts = []
        for _ in range(5):
            await run_to_the_end(host, 500)
            await host.prune()
            gc.collect()
            counts.append(len(gc.get_objects()))
        assert 0 == len(host.list())
    finally:
        await host.shutdown()
    # Rounds 2 to 5 all hold the same 50 ended processes; round 1 may still be filling caches.
    assert min(counts[3:5]) - min(counts[1:3]) < 500, counts


async def test_rounds_of_shell_commands_leave_no_objects_descriptors_or_tasks_behind(tmp_path: Path) -> None:
    """The shell kind over many runs (run monitor link, executor bookkeeping, log files):
    live objects, open descriptors and tasks stay flat round after round. Objects are compared
    as the long-running node's test compares them, by the lowest counts of two rounds against
    two (a count is a moment's: a group commit in flight raised one round of a loaded run by
    1,300, the next one back where it was); a leak of one object a run adds 600 over two
    rounds of 300."""
    from processes.shell import Shell, executors

    host = Node(
        machines=[Shell(tmp_path / "logs")], executors=executors(tmp_path / "runs"), store=str(tmp_path / "s.db"),
        retention=0.0, ended_kept=20,
    )  # fmt: skip
    await host.start()
    try:
        rounds = []
        for _ in range(5):
            handles = [await host.spawn("shell", {"argv": ["true"]}, name=f"r{i}") for i in range(300)]
            for handle in handles:
                await handle.wait(timeout=30)
            await host.prune()
            gc.collect()
            rounds.append((len(gc.get_objects()), len(os.listdir("/proc/self/fd")), len(asyncio.all_tasks())))
    finally:
        await host.shutdown(timeout=10)
    objects = [found[0] for found in rounds]
    assert min(objects[3:5]) - min(objects[1:3]) < 500, rounds
    # A background task or descriptor that comes and goes (the store's flusher, a reaper's
    # pidfd) may differ by one or two; a leak of one a run would add 300 a round.
    for measure in (1, 2):
        values = [found[measure] for found in rounds[1:]]
        assert max(values) - min(values) < 3, rounds


async def test_ended_processes_past_ended_kept_leave_memory_not_the_store(tmp_path: Path) -> None:
    """get() finds the ended_kept most recently ended processes; older ones are gone from
    memory but their final state stays in the store until retention prunes it."""
    host = Node(machines=[Worker], executors={"work": echo}, store=str(tmp_path / "s.db"), ended_kept=2)
    await host.start()
    try:
        pids = await run_to_the_end(host, 5)
        for pid in pids[-2:]:
            assert Lifecycle.FINISHED == host.get(pid).snapshot().lifecycle
        with pytest.raises(ProcessNotFound):
            host.get(pids[0])
        assert host.store is not None
        record = await host.store.get(pids[0])
        assert record is not None
        assert Lifecycle.FINISHED == record.lifecycle
    finally:
        await host.shutdown()


def test_ended_kept_must_be_a_whole_number() -> None:
    """A negative or fractional ended_kept is refused with the name of the setting."""
    for bad in (-1, 2.5):
        with pytest.raises(ConfigurationError, match="ended_kept must be a whole number >= 0"):
            Node(ended_kept=bad)  # type: ignore[arg-type]


async def test_a_revived_process_keeps_neither_its_checkpoint_nor_wait_queues_nobody_used(tmp_path: Path) -> None:
    """After a restart a live process holds what it runs on and nothing more: not the decoded
    record it was revived from (that was a second copy of its state, for as long as the process
    lived), and no wait queue that nobody waited on (each process made six up front). Both were
    kept per process, so 100,000 revived processes carried 100,000 records and 600,000 queues.
    Nor does it keep an empty redelivery queue of its own until something is postponed (an
    empty deque is a 0.5 KB block)."""
    from collections import deque

    from supervisor._core.snapshot import ProcessRecord
    from supervisor._core.waiters import WaitQueue
    from tests.machines import Counter

    path = str(tmp_path / "s.db")
    first = Node(machines=[Counter], store=path)
    await first.start()
    handles = [await first.spawn(Counter, {"n": 0, "payload": ["x"] * 20}) for _ in range(200)]
    for handle in handles:
        await handle.cast(1)
        assert 1 == await handle.call("get")
    await first.shutdown()

    def count(kind: type) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, kind))

    records, queues, deques = count(ProcessRecord), count(WaitQueue), count(deque)
    second = Node(machines=[Counter], store=path)
    report = await second.start()
    try:
        assert 200 == report.revived
        assert count(ProcessRecord) - records < 10
        assert count(WaitQueue) - queues < 10
        assert count(deque) - deques < 200 + 10  # its mailbox; nothing postponed, no redelivery queue
        # What lazily made queues serve still works: a caller waits for a change and sees it.
        handle = second.list()[0]
        seen = handle.snapshot().version
        waiting = asyncio.ensure_future(handle._process.wait_changed(seen))
        await handle.cast(2)
        await asyncio.wait_for(waiting, 10)
        assert 3 == await handle.call("get")
    finally:
        await second.shutdown()


async def test_ended_processes_kept_for_lookups_keep_neither_their_task_nor_their_queues() -> None:
    """Up to ended_kept ended processes stay findable for a long time; each keeps its final
    snapshot and state, but gives back its finished task and its input queues (measured with
    tracemalloc: 4.0 KB per ended counter before, 1.8 KB after). Lookups still answer."""
    from collections import deque

    from tests.machines import Counter

    host = Node(machines=[Counter], ended_kept=1000)
    await host.start()

    def count(kind: type) -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, kind))

    try:
        tasks, queues = count(asyncio.Task), count(deque)
        handles = [await host.spawn(Counter, {"n": i}) for i in range(200)]
        for handle in handles:
            assert "bye" == await handle.call("finish")
            await handle.wait()
        assert count(asyncio.Task) - tasks < 10
        assert count(deque) - queues < 10
        found = host.get(handles[7].pid)
        assert (Lifecycle.FINISHED, 7) == (found.snapshot().lifecycle, found.snapshot().result)
        with pytest.raises(ProcessFinished):
            await found.cast(1)
    finally:
        await host.shutdown()
