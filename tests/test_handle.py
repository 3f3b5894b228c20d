"""Handles: driving, pausing, killing, calling and watching processes, and the races between them.

The suite runs twice over: on in-process handles and on remote handles (through a control
server over a unix socket), unchanged, through the API both share (``HandleAPI``). A few tests
at the end pin what only in-process handles have (``repr``, immediate ``try_*``).
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import (
    CallTimeout,
    DriveMode,
    Lifecycle,
    NotFinished,
    ProcessFinished,
    ProcessKilled,
    ProcessNotFound,
    Runtime,
    WouldBlock,
)
from tests.handles import HandleSource
from tests.helpers import Gate, wait_for_snapshot, wait_for_statistics, wait_until
from tests.machines import Counter, Slow, Worker


@pytest.fixture(params=["in-process", "remote"])
async def source(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HandleSource]:
    handles = HandleSource(request.param == "remote", tmp_path)
    yield handles
    await handles.close()


async def test_step_mode_runs_exactly_one_transition_per_nudge(source: HandleSource) -> None:
    """In step mode nothing advances without a nudge, and each nudge permits one transition."""
    handle = await source.spawn(Counter, {"n": 0}, mode=DriveMode.STEP)
    for _ in range(3):
        await handle.cast(1)
    await asyncio.sleep(0)
    assert 0 == (await handle.statistics()).transitions
    await handle.nudge()  # Started
    await handle.nudge()  # first cast
    snapshot = await wait_for_snapshot(handle, lambda s: s.state.get("n") == 1)
    stats = await handle.statistics()
    assert (2, 2) == (stats.transitions, stats.mailbox_depth)
    await handle.nudge()
    await handle.nudge()
    snapshot = await wait_for_snapshot(handle, lambda s: s.state.get("n") == 3)
    assert 4 == (await handle.statistics()).transitions
    assert 3 == snapshot.state["n"]
    await handle.kill()


async def test_try_nudge_on_a_full_buffer_raises_would_block(source: HandleSource) -> None:
    """try_nudge raises WouldBlock when the nudge buffer is full; nudge() waits for room instead."""
    await source.host(nudge_buffer=2)
    handle = await source.spawn(Counter, {"n": 0}, mode=DriveMode.STEP)
    await handle.pause()  # keep the buffer from draining
    await handle.try_nudge()
    await handle.try_nudge()
    with pytest.raises(WouldBlock, match="nudge buffer is full"):
        await handle.try_nudge()
    waiting = asyncio.ensure_future(handle.nudge())
    await wait_for_statistics(handle, lambda s: s.nudges_buffered == 2)
    assert not waiting.done()
    await handle.resume()
    await asyncio.wait_for(waiting, 5)
    stats = await handle.statistics()
    assert 2 == stats.transitions + stats.nudges_buffered - 1
    await handle.kill()


async def test_nudge_in_automatic_mode_is_accepted_and_changes_nothing(source: HandleSource) -> None:
    """In automatic mode the process advances by itself; nudge/try_nudge return and buffer nothing."""
    await source.host(nudge_buffer=1)
    handle = await source.spawn(Counter, {"n": 0})
    for _ in range(5):
        await handle.nudge()
        await handle.try_nudge()
    await handle.cast(2)
    assert 2 == await handle.call("get")
    assert 0 == (await handle.statistics()).nudges_buffered
    await handle.kill()


async def test_try_cast_on_a_full_mailbox_raises_and_cast_waits(source: HandleSource) -> None:
    """The mailbox is bounded: try_cast raises WouldBlock when full; cast waits for room."""
    await source.host(mailbox_size=2)
    handle = await source.spawn(Counter, {"n": 0})
    await handle.pause()
    await handle.try_cast(1)
    await handle.try_cast(1)
    with pytest.raises(WouldBlock, match="mailbox is full"):
        await handle.try_cast(1)
    blocked = asyncio.ensure_future(handle.cast(1))
    await asyncio.sleep(0.05)  # give a remote cast time to reach the daemon and block there
    assert not blocked.done()
    await handle.resume()
    await asyncio.wait_for(blocked, 5)
    assert 3 == await handle.call("get")
    await handle.kill()


async def test_pause_during_a_transition_lands_after_it_commits(source: HandleSource) -> None:
    """pause() while a transition is suspended waits for it to commit, then stops advancing;
    inputs keep queueing; resume() processes them."""
    machine = Slow()
    handle = await source.spawn(machine)
    await handle.cast("slow")
    await asyncio.wait_for(machine.entered.wait(), 5)
    pausing = asyncio.ensure_future(handle.pause())
    await asyncio.sleep(0)
    assert not pausing.done()
    assert not (await handle.snapshot()).paused
    await handle.cast("next")
    machine.gate.set()
    await asyncio.wait_for(pausing, 5)
    snapshot = await handle.snapshot()
    assert snapshot.paused
    assert {"stage": "done", "seen": 1} == snapshot.state
    assert 1 == (await handle.statistics()).mailbox_depth
    await handle.resume()
    snapshot = await wait_for_snapshot(handle, lambda s: s.state.get("seen") == 2)
    assert not snapshot.paused
    await handle.kill()


async def test_pause_while_waiting_lands_at_once(source: HandleSource) -> None:
    """A process waiting on a tracked action pauses immediately; results queue until resume."""
    gate = Gate()
    await source.host(executors={"work": gate})
    handle = await source.spawn(Worker)
    await handle.cast(("work", 1))
    await wait_for_snapshot(handle, lambda s: s.lifecycle is Lifecycle.WAITING)
    await asyncio.wait_for(handle.pause(), 1)
    assert (await handle.snapshot()).paused
    gate.release.set()
    await wait_for_statistics(handle, lambda s: s.mailbox_depth == 1)
    assert "done" not in (await handle.snapshot()).state
    await handle.resume()
    snapshot = await wait_for_snapshot(handle, lambda s: "done" in s.state)
    assert Lifecycle.RUNNING == snapshot.lifecycle
    await handle.kill()


async def test_snapshot_during_a_suspended_transition_shows_the_committed_state(source: HandleSource) -> None:
    """Observers never see a half-done transition: mid-transition the snapshot is the last commit."""
    machine = Slow()
    handle = await source.spawn(machine)
    await handle.cast(1)
    committed = await wait_for_snapshot(handle, lambda s: s.state.get("seen") == 1)
    await handle.cast("slow")
    await asyncio.wait_for(machine.entered.wait(), 5)
    assert committed.state == (await handle.snapshot()).state
    assert {"seen": 1} == (await handle.snapshot()).state
    machine.gate.set()
    await wait_for_snapshot(handle, lambda s: s.state.get("stage") == "done")
    await handle.kill()


async def test_kill_while_paused(source: HandleSource) -> None:
    """A paused process can be killed; pending calls fail with ProcessKilled."""
    handle = await source.spawn(Counter)
    await handle.pause()
    call = asyncio.ensure_future(handle.call("get"))
    await wait_for_statistics(handle, lambda s: s.mailbox_depth == 1)  # the call is queued
    final = await asyncio.wait_for(handle.kill("operator"), 5)
    assert Lifecycle.KILLED == final.lifecycle
    assert "operator" == final.error
    with pytest.raises(ProcessKilled, match="operator"):
        await call
    assert Lifecycle.KILLED == (await handle.wait(timeout=5)).lifecycle


async def test_kill_during_a_suspended_transition_rolls_it_back(source: HandleSource) -> None:
    """Killing a process mid-transition cancels the transition; its changes are discarded."""
    machine = Slow()
    handle = await source.spawn(machine)
    await handle.cast("slow")
    await asyncio.wait_for(machine.entered.wait(), 5)
    final = await asyncio.wait_for(handle.kill(), 5)
    assert Lifecycle.KILLED == final.lifecycle
    assert {} == final.state


class HungExecutor:
    """An executor that ignores cancellation until the test lets it go."""

    idempotent = False

    def __init__(self) -> None:
        self.let_go = False
        self.started = asyncio.Event()
        self.cancel_calls = 0

    async def execute(self, action: Any) -> Any:
        self.started.set()
        while not self.let_go:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue
        return None

    async def cancel(self, action: Any) -> None:
        self.cancel_calls += 1
        while not self.let_go:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue


async def test_kill_while_waiting_on_a_hung_executor_is_bounded(source: HandleSource) -> None:
    """Kill finishes within its grace period even when the executor ignores cancellation and its
    cancel() hangs too; the abandoned work cannot deliver a result afterwards."""
    hung = HungExecutor()
    host = await source.host(executors={"work": hung}, kill_grace=0.2)
    handle = await source.spawn(Worker)
    await handle.cast(("work", 1))
    await asyncio.wait_for(hung.started.wait(), 5)
    final = await asyncio.wait_for(handle.kill("stuck backend"), 5)
    assert Lifecycle.KILLED == final.lifecycle
    assert 1 == hung.cancel_calls
    assert host.runtime.statistics().abandoned_tasks >= 1
    hung.let_go = True
    await wait_until(lambda: host.runtime.statistics().abandoned_tasks == 0)
    assert "done" not in (await handle.snapshot()).state


async def test_kill_cancels_in_flight_actions_through_the_executor(source: HandleSource) -> None:
    """Kill asks the executor to cancel each in-flight tracked action."""
    gate = Gate()
    await source.host(executors={"work": gate})
    handle = await source.spawn(Worker)
    await handle.cast(("work", 1))
    await handle.cast(("work", 2))
    await wait_until(lambda: len(gate.started) == 2)
    await handle.kill()
    assert sorted(a.id for a in gate.started) == sorted(a.id for a in gate.cancelled)


async def test_concurrent_kills_share_one_outcome(source: HandleSource) -> None:
    """Several kills at once all return the same terminal snapshot; the first reason wins."""
    handle = await source.spawn(Counter)
    results = await asyncio.gather(*(handle.kill(f"k{i}") for i in range(5)))
    assert {"k0"} == {r.error for r in results}
    assert 1 == len({r.version for r in results})
    assert "k0" == (await handle.kill("again")).error


async def test_call_to_a_finished_process_raises_process_finished(source: HandleSource) -> None:
    """Calls, casts, nudges and pauses on a finished process raise ProcessFinished; its
    snapshot holds the result."""
    handle = await source.spawn(Counter, {"n": 4})
    await handle.call("finish")
    await handle.wait(timeout=5)
    with pytest.raises(ProcessFinished):
        await handle.call("get")
    with pytest.raises(ProcessFinished):
        await handle.cast(1)
    with pytest.raises(ProcessFinished):
        await handle.try_nudge()
    with pytest.raises(ProcessFinished):
        await handle.pause()
    final = await handle.snapshot()
    assert (True, 4) == (final.done, final.result)


async def test_call_timeout_raises_call_timeout(source: HandleSource) -> None:
    """A call with no reply in time raises CallTimeout (also a TimeoutError); when the process
    is paused, the error says so, in process and remote alike."""
    handle = await source.spawn(Counter)
    await handle.pause()
    with pytest.raises(CallTimeout, match=r"no reply within 0.05 s: it is paused \(by an operator\) and handles no"):
        await handle.call("get", timeout=0.05)
    with pytest.raises(TimeoutError):
        await handle.call("get", timeout=0.05)
    await handle.kill()


async def test_wait_on_a_live_process_times_out(source: HandleSource) -> None:
    """wait() on a live process raises TimeoutError after its timeout; the process lives on."""
    handle = await source.spawn(Counter)
    with pytest.raises(TimeoutError):
        await handle.wait(timeout=0.01)
    assert not (await handle.snapshot()).done
    await handle.kill()


async def test_hundred_watchers_some_slow_all_see_the_final_state(source: HandleSource) -> None:
    """100 concurrent watchers, a third of them slow: none blocks the process, slow ones skip
    versions, and every one sees the terminal snapshot last."""
    handle = await source.spawn(Counter, {"n": 0})
    rng = random.Random(7)
    seen: list[list[int]] = [[] for _ in range(100)]
    finals: list[Any] = [None] * 100

    async def watcher(index: int, slow: bool) -> None:
        async for snapshot in handle.watch():
            seen[index].append(snapshot.version)
            finals[index] = snapshot
            if slow:
                await asyncio.sleep(rng.uniform(0.001, 0.01))

    tasks = [asyncio.ensure_future(watcher(i, i % 3 == 0)) for i in range(100)]
    await wait_for_statistics(handle, lambda s: s.watchers == 100)
    for _ in range(500):
        await handle.cast(1)
    assert "bye" == await handle.call("finish")
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    final = await handle.snapshot()
    assert Lifecycle.FINISHED == final.lifecycle
    assert all(f == final for f in finals)
    assert all(s == sorted(set(s)) for s in seen)
    slow_counts = [len(seen[i]) for i in range(0, 100, 3)]
    assert max(slow_counts) < final.version
    assert 0 == (await handle.statistics()).watchers


async def test_watch_starts_with_the_current_snapshot_and_ends_on_terminal(source: HandleSource) -> None:
    """A watch started late yields the current snapshot first; on an ended process it yields
    only the terminal snapshot and stops."""
    handle = await source.spawn(Counter, {"n": 5})
    await handle.call("get")
    first = await anext(aiter(handle.watch()))
    assert 5 == first.state["n"]
    await handle.kill("done watching")
    snapshots = [s async for s in handle.watch()]
    assert [Lifecycle.KILLED] == [s.lifecycle for s in snapshots]


async def test_statistics_count_transitions_and_pending_work(source: HandleSource) -> None:
    """statistics() counts transitions, pending actions and errors; the snapshot names what
    the process waits for."""
    gate = Gate()
    await source.host(executors={"work": gate})
    handle = await source.spawn(Worker, name="w1")
    await handle.cast(("work", 1))
    snapshot = await wait_for_snapshot(handle, lambda s: s.lifecycle is Lifecycle.WAITING)
    stats = await handle.statistics()
    assert (2, 1, 0) == (stats.transitions, stats.pending_actions, stats.transition_errors)
    assert snapshot.waiting_on[0].startswith("action work ")
    assert ("w1", "worker") == (handle.name, handle.kind)
    gate.release.set()
    await handle.kill()


async def test_state_says_what_a_process_waits_for_and_since_when(source: HandleSource) -> None:
    """A waiting process's snapshot names each awaited action and the time waiting began."""
    gate = Gate()
    await source.host(executors={"work": gate})
    handle = await source.spawn(Worker)
    await handle.cast(("work", 1))
    snapshot = await wait_for_snapshot(handle, lambda s: s.lifecycle is Lifecycle.WAITING)
    (action_id,) = snapshot.state["issued"]
    assert (f"action work {action_id}",) == snapshot.waiting_on
    assert snapshot.since > 0
    gate.release.set()
    done = await wait_for_snapshot(handle, lambda s: s.lifecycle is Lifecycle.RUNNING)
    assert () == done.waiting_on
    assert done.since >= snapshot.since
    await handle.kill()


async def settled(value: Any) -> Any:
    """In-process done()/result() answer at once; remote ones are round trips."""
    return await value if inspect.isawaitable(value) else value


async def test_result_and_done_say_how_the_process_ended(source: HandleSource) -> None:
    """result() on a live process raises NotFinished and done() is False; after a kill,
    result() raises ProcessKilled with the reason; after finishing it returns the result."""
    live = await source.spawn(Counter, {"n": 4})
    assert not await settled(live.done())  # type: ignore[attr-defined]
    with pytest.raises(NotFinished):
        await settled(live.result())  # type: ignore[attr-defined]
    await live.cast(1)
    assert 5 == await live.call("get")
    await live.call("finish")
    await live.wait(timeout=5)
    assert (True, 5) == (await settled(live.done()), await settled(live.result()))  # type: ignore[attr-defined]
    killed = await source.spawn(Counter)
    await killed.kill("operator")
    assert await settled(killed.done())  # type: ignore[attr-defined]
    with pytest.raises(ProcessKilled, match="operator"):
        await settled(killed.result())  # type: ignore[attr-defined]


# --- what only in-process handles have ------------------------------------------------------


async def test_try_operations_act_without_being_awaited_in_process() -> None:
    """In-process try_cast/try_nudge act at once, without being awaited (remote ones are
    round trips and must be awaited)."""
    runtime = Runtime()
    live = runtime.spawn(Counter, {"n": 4})
    live.try_cast(1)  # not awaited: acts at once all the same
    assert 5 == await live.call("get")
    await live.kill()


async def test_in_process_statistics_and_repr_show_state_and_counts() -> None:
    """statistics() is immediate in-process (and may be awaited); repr summarises state and
    counts; the runtime finds the process by pid."""
    gate = Gate()
    runtime = Runtime(executors={"work": gate})
    handle = runtime.spawn(Worker, name="w1")
    await handle.cast(("work", 1))
    await wait_for_snapshot(handle, lambda s: s.lifecycle is Lifecycle.WAITING)
    assert handle.statistics() == await handle.statistics()
    text = repr(handle)
    assert "'worker' waiting" in text
    assert "1 pending actions" in text
    assert "2 transitions" in text
    assert "1 live" in repr(runtime)
    assert handle == runtime.get(handle.pid)
    with pytest.raises(ProcessNotFound):
        runtime.get("nope")
    gate.release.set()
    await handle.kill()
