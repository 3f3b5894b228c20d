"""Reviving a process from its checkpoint record: restore re-issues pending tracked actions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from supervisor import Context, DriveMode, Lifecycle, ManualClock, Runtime, TrackedAction
from tests.helpers import Gate, Recorder, wait_for_snapshot, wait_until
from tests.machines import DoorMachine, Worker


async def test_revive_reissues_pending_actions_under_their_original_ids() -> None:
    """A record taken while actions were in flight brings the process back with the same
    pending actions, handed to the executor again under the same ids."""
    gate = Gate()
    first = Runtime(executors={"work": gate})
    handle = first.spawn(Worker, pid="w")
    await handle.cast(("work", "a"))
    await handle.cast(("work", "b"))
    await wait_until(lambda: len(gate.started) == 2)
    record = handle._process.record()
    await handle.kill()

    recorder = Recorder()
    second = Runtime(executors={"work": recorder})
    revived = second.revive(Worker(), record)
    snapshot = await wait_for_snapshot(revived, lambda s: len(s.state.get("done", {})) == 2)
    assert [a.id for a in gate.started] == [a.id for a in recorder.executed]
    assert {a.id: a.payload for a in gate.started} == snapshot.state["done"]
    assert record.version < snapshot.version
    await revived.kill()


async def test_restore_may_replace_pending_actions() -> None:
    """A machine's restore() decides what to re-issue; pending actions it drops are forgotten."""

    class Careful(Worker):
        kind = "worker"

        def restore(self, state: dict[str, Any], ctx: Context) -> None:
            for action in ctx.pending.values():
                state.setdefault("queried", []).append(action.id)
                ctx.track("query", {"about": action.id})

    gate = Gate()
    first = Runtime(executors={"work": gate})
    handle = first.spawn(Worker, pid="c")
    await handle.cast(("work", 1))
    await wait_until(lambda: len(gate.started) == 1)
    record = handle._process.record()
    await handle.kill()

    work, query = Recorder(), Recorder()
    second = Runtime(executors={"work": work, "query": query})
    revived = second.revive(Careful(), record)
    await wait_until(lambda: len(query.executed) == 1)
    assert [] == work.executed
    assert [gate.started[0].id] == revived.snapshot().state["queried"]
    await revived.kill()


async def test_revive_rearms_checkpointed_timers() -> None:
    """Timers in a record are re-armed at their absolute deadlines after a revive."""
    clock = ManualClock()
    first = Runtime(clock=clock)
    handle = first.spawn(DoorMachine, pid="door")
    await handle.cast("open")
    await wait_for_snapshot(handle, lambda s: s.phase == "open" and handle.statistics().armed_timers == 1)
    record = handle._process.record()
    await handle.kill()
    assert 1 == len(record.timers)

    second = Runtime(clock=clock)
    revived = second.revive(DoorMachine(), record, mode=DriveMode.AUTO)
    await wait_until(lambda: revived.statistics().armed_timers == 1)
    clock.advance(5)
    snapshot = await wait_for_snapshot(revived, lambda s: s.phase == "closed")
    assert snapshot.state["log"][-1] == "state timeout: auto-close"
    await revived.kill()


async def test_revived_process_keeps_its_pause() -> None:
    """A process checkpointed while paused comes back paused (pause was on purpose)."""
    first = Runtime()
    handle = first.spawn(Worker, pid="p")
    await handle.pause()
    record = handle._process.record()
    await handle.kill()
    second = Runtime()
    revived = second.revive(Worker(), record)
    await asyncio.sleep(0)
    assert revived.snapshot().paused
    assert Lifecycle.RUNNING == revived.snapshot().lifecycle
    await revived.kill()
    assert isinstance(record.pending, tuple)
    assert all(isinstance(a, TrackedAction) for a in record.pending)


async def test_a_revived_process_keeps_when_its_lifecycle_began() -> None:
    """`since` survives a restart: a process waiting since t=1000 and revived at t=5000 still
    says it has waited since 1000 (ps showed the restart's time, understating how long a
    command had run); a lifecycle that changes after the revival starts a new `since`."""
    clock = ManualClock(1000.0)
    gate = Gate()
    first = Runtime(executors={"work": gate}, clock=clock)
    handle = first.spawn(Worker, pid="w")
    await handle.cast(("work", "a"))
    await wait_until(lambda: len(gate.started) == 1)
    assert (Lifecycle.WAITING, 1000.0) == (handle.snapshot().lifecycle, handle.snapshot().since)
    record = handle._process.record()
    await handle.kill()
    assert 1000.0 == record.since

    clock.advance(4000.0)
    recorder = Gate()
    second = Runtime(executors={"work": recorder}, clock=clock)
    revived = second.revive(Worker(), record)
    await wait_until(lambda: len(recorder.started) == 1)
    assert (Lifecycle.WAITING, 1000.0) == (revived.snapshot().lifecycle, revived.snapshot().since)
    clock.advance(10.0)
    recorder.release.set()
    done = await wait_for_snapshot(revived, lambda s: s.lifecycle is Lifecycle.RUNNING)
    assert 5010.0 == done.since
    await revived.kill()


def test_a_checkpoint_of_the_first_format_still_loads() -> None:
    """A record written in format 1 (14 fields, before `since` and `schema`) decodes: its since
    is unknown and its schema is 1; a record of an unknown format is refused, naming it."""
    from supervisor import CorruptCheckpoint, decode_record, encode_record
    from supervisor._core.snapshot import ProcessRecord
    from supervisor.lowlevel import pack, unpack

    record = ProcessRecord(pid="p", name="p", kind="worker", version=3, phase="main", state={"n": 1}, since=7.0)
    fields = unpack(encode_record(record).blob)
    assert [2, 7.0, 1] == [fields[0], fields[14], fields[15]]
    old = decode_record(pack([1, *fields[1:14]]))
    assert (None, 1, {"n": 1}, 3) == (old.since, old.schema, old.state, old.version)
    with pytest.raises(CorruptCheckpoint, match="unknown checkpoint format 9"):
        decode_record(pack([9, *fields[1:]]))


async def test_a_snapshot_read_before_a_restore_is_not_kept_after_it() -> None:
    """A revived process's restore re-arms its timers without a new version; a snapshot read
    before the restore ran (created, waiting on nothing) is not served afterwards: the next
    read says what it waits on."""
    clock = ManualClock()
    first = Runtime(clock=clock)
    handle = first.spawn(DoorMachine)
    await handle.cast(("alarm", 30.0))
    await wait_until(lambda: bool(handle.snapshot().waiting_on))
    record = handle._process.record()
    await handle.kill()
    revived = Runtime(clock=clock).revive(DoorMachine(), record)
    early = revived.snapshot()
    assert (Lifecycle.CREATED, ()) == (early.lifecycle, early.waiting_on)
    await wait_until(lambda: bool(revived.snapshot().waiting_on))
    later = revived.snapshot()
    assert (early.version, Lifecycle.WAITING) == (later.version, later.lifecycle)
    assert later.waiting_on[0].startswith("timer alarm at ")
    await revived.kill()
