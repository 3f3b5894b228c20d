"""The rest of gen_statem's event handling: state enter calls, event timeouts and internal
events, in the runtime, after a restore, in the simulation runner, and in the diagrams."""

from __future__ import annotations

import pytest

from supervisor import (
    EVENT_TIMEOUT,
    ConfigurationError,
    DriveMode,
    Machine,
    ManualClock,
    Runtime,
    Simulation,
    TransitionError,
    mermaid,
)
from tests.helpers import wait_for_snapshot, wait_until
from tests.machines import Gate, Turnstile


async def test_the_initial_phase_is_entered_before_the_first_input() -> None:
    """A machine with state_enter gets an enter call for its initial phase, from itself, in
    the transition that handles its first input (nothing else runs before it)."""
    runtime = Runtime()
    handle = runtime.spawn(Turnstile)
    snapshot = await wait_for_snapshot(handle, lambda s: bool(s.state.get("entered")))
    assert ["locked->locked"] == snapshot.state["entered"]
    assert 1 == snapshot.version
    await handle.kill()


async def test_entering_a_phase_runs_its_enter_call_in_the_same_transition() -> None:
    """goto() runs the new phase's enter call within the same atomic transition: one version,
    the enter call's effects (an event timeout) committed with the phase change."""
    runtime = Runtime(clock=ManualClock())
    handle = runtime.spawn(Turnstile)
    await wait_until(lambda: handle.snapshot().version == 1)
    assert "open" == await handle.call("coin")
    snapshot = handle.snapshot()
    assert (Gate.OPEN, 2) == (snapshot.phase, snapshot.version)
    assert ["locked->locked", "locked->open"] == snapshot.state["entered"]
    assert [w.split(" at ")[0] for w in snapshot.waiting_on] == [f"timer {EVENT_TIMEOUT}"]
    await handle.kill()


async def test_an_enter_call_that_raises_rolls_the_whole_transition_back() -> None:
    """The enter call is part of the transition: when it raises, the phase change, the state
    changes and the effects of the transition that led there are undone, as for any raise;
    an enter call that changes the phase itself is refused the same way (gen_statem's rule)."""
    runtime = Runtime(clock=ManualClock())
    handle = runtime.spawn(Turnstile)
    await handle.call(("set", "refuse_open"))
    with pytest.raises(TransitionError, match="RuntimeError: the gate is jammed"):
        await handle.call("coin")
    snapshot = handle.snapshot()
    assert (Gate.LOCKED, ["locked->locked"], ()) == (snapshot.phase, snapshot.state["entered"], snapshot.waiting_on)
    second = runtime.spawn(Turnstile)
    await second.call(("set", "jump_in_enter"))
    with pytest.raises(TransitionError, match="an enter call may not change the phase"):
        await second.call("coin")
    assert Gate.LOCKED == second.snapshot().phase
    await handle.kill()
    await second.kill()


async def test_an_event_timeout_fires_when_nothing_else_comes_and_any_input_cancels_it() -> None:
    """The event timeout armed on entering OPEN fires after its delay when no input comes; any
    input before it (one the machine ignores) cancels it, and it never fires afterwards."""
    clock = ManualClock()
    runtime = Runtime(clock=clock)
    idle = runtime.spawn(Turnstile)
    await idle.call("coin")
    clock.advance(9.9)
    assert Gate.OPEN == idle.snapshot().phase
    clock.advance(0.2)
    snapshot = await wait_for_snapshot(idle, lambda s: s.phase == Gate.LOCKED)
    assert ["event timeout: idle"] == snapshot.state["log"]

    busy = runtime.spawn(Turnstile)
    await busy.call("coin")
    clock.advance(5.0)
    await busy.cast("a visitor")  # any input cancels the event timeout
    await wait_for_snapshot(busy, lambda s: s.state.get("log") == ["cast a visitor"])
    assert () == busy.snapshot().waiting_on
    clock.advance(60.0)
    await busy.cast("later")
    snapshot = await wait_for_snapshot(busy, lambda s: len(s.state["log"]) == 2)
    assert (Gate.OPEN, ["cast a visitor", "cast later"]) == (snapshot.phase, snapshot.state["log"])
    await idle.kill()
    await busy.kill()


async def test_internal_events_are_handled_before_anything_in_the_mailbox() -> None:
    """ctx.next_event queues an input that comes before anything already waiting: a chain of
    internal events runs to its end before the cast queued behind the one that started it; an
    enter call may queue one too (entering ALARM rings)."""
    runtime = Runtime()
    handle = runtime.spawn(Turnstile)
    await handle.cast(("chain", 1))
    await handle.cast("behind")
    await handle.cast("push")
    snapshot = await wait_for_snapshot(handle, lambda s: len(s.state.get("log", [])) == 5)
    assert ["chain 1", "chain 2", "chain 3", "cast behind", "internal ring"] == snapshot.state["log"]
    assert Gate.ALARM == snapshot.phase
    await handle.kill()


async def test_queued_internal_events_and_an_armed_event_timeout_survive_a_restore() -> None:
    """A checkpoint taken with internal events still queued keeps them: the revived process
    handles them first, before anything else; an event timeout is re-armed for its deadline;
    and no phase is entered again (the enter calls ran before the crash)."""
    clock = ManualClock()
    first = Runtime(clock=clock)
    handle = first.spawn(Turnstile, mode=DriveMode.STEP)
    await handle.nudge()  # the first input, and the initial enter call
    await handle.cast(("chain", 1))
    await handle.nudge()
    await wait_until(lambda: handle.snapshot().version == 2)
    record = handle._process.record()
    assert (["chain", 1],) == record.next_events
    await handle.kill()

    second = Runtime(clock=clock)
    revived = second.revive(Turnstile(), record)
    await revived.cast("behind")
    snapshot = await wait_for_snapshot(revived, lambda s: len(s.state.get("log", [])) == 4)
    assert ["chain 1", "chain 2", "chain 3", "cast behind"] == snapshot.state["log"]
    assert ["locked->locked"] == snapshot.state["entered"]
    await revived.call("coin")
    timed = revived._process.record()
    await revived.kill()

    third = Runtime(clock=clock)
    again = third.revive(Turnstile(), timed)
    await wait_until(lambda: bool(again.snapshot().waiting_on))  # restored: its timer re-armed
    clock.advance(10.5)
    snapshot = await wait_for_snapshot(again, lambda s: s.phase == Gate.LOCKED)
    assert "event timeout: idle" == snapshot.state["log"][-1]
    await again.kill()


def test_enter_calls_event_timeouts_and_internal_events_in_the_simulation() -> None:
    """The simulation runs the same code: enter calls, event timeouts on virtual time and
    internal events, with crashes injected, give the same trace for the same seed; every
    turnstile ends locked (its event timeout fired), and every chain of internal events ran to
    its end or, its starting cast lost in a crash, not at all."""

    def simulate(seed: int) -> Simulation:
        sim = Simulation([Turnstile], seed=seed, crash_every=40, check_determinism=True)
        pids = [sim.spawn(Turnstile) for _ in range(5)]
        for pid in pids:
            sim.cast(pid, "coin")
            sim.cast(pid, ("chain", 1))
        sim.run_until_idle()
        return sim

    sim = simulate(11)
    chains = []
    for pid, state in sim.states().items():
        assert Gate.LOCKED == sim.handle(pid).snapshot().phase, pid
        chain = [line for line in state.get("log", []) if line.startswith("chain")]
        # A crash may lose the cast that starts a chain (with the state it changed), never a
        # part of a chain: its internal events are committed with the state that queued them.
        assert chain in ([], ["chain 1", "chain 2", "chain 3"]), (pid, chain)
        chains.append(chain)
    assert sim.crashes > 0
    assert any(chains)
    assert sim.trace_hash == simulate(11).trace_hash


def test_the_diagram_shows_enter_calls_and_timeouts() -> None:
    """mermaid() draws each phase's entry and timeout notes beside it; a machine with
    state_enter and no note for a phase says that entering it runs enter(); notes must name
    declared phases."""
    drawn = mermaid(Turnstile)
    assert "    open : entry / event timeout 10 s" in drawn
    assert "    open : timeout / idle for 10 s: lock again" in drawn
    assert "    alarm : entry / ring (internal event)" in drawn
    assert "    locked : entry / enter()" in drawn
    assert "    locked --> open : coin" in drawn
    with pytest.raises(ConfigurationError, match="entry_notes names phase 'nowhere'"):

        class Wrong(Machine[dict]):  # type: ignore[type-arg]
            phases = Gate
            entry_notes = {"nowhere": "?"}  # noqa: RUF012 - a class-level declaration, as machines make them
