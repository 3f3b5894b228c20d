"""gen_statem-style event handling: state timeouts, named timeouts, postpone (on a manual clock)."""

from __future__ import annotations

from typing import Any

import pytest

from supervisor import STATE_TIMEOUT, Call, Context, Input, Machine, ManualClock, Runtime, TransitionError
from tests.helpers import wait_for_snapshot, wait_until
from tests.machines import DoorMachine


async def test_state_timeout_fires_in_its_phase() -> None:
    """A state timeout fires after its delay when the phase has not changed."""
    clock = ManualClock()
    runtime = Runtime(clock=clock)
    handle = runtime.spawn(DoorMachine)
    await handle.cast("open")
    await wait_for_snapshot(handle, lambda s: s.phase == "open" and handle.statistics().armed_timers == 1)
    clock.advance(4.9)
    assert "open" == handle.snapshot().phase
    clock.advance(0.2)
    snapshot = await wait_for_snapshot(handle, lambda s: s.phase == "closed")
    assert ["opened", "state timeout: auto-close"] == snapshot.state["log"]
    await handle.kill()


async def test_state_timeout_is_cancelled_by_a_phase_change() -> None:
    """Changing phase cancels the state timeout: it never fires afterwards."""
    clock = ManualClock()
    runtime = Runtime(clock=clock)
    handle = runtime.spawn(DoorMachine)
    await handle.cast("open")
    await handle.cast("close")
    snapshot = await wait_for_snapshot(handle, lambda s: s.state.get("log") == ["opened", "closed"])
    assert 0 == handle.statistics().armed_timers
    assert () == snapshot.waiting_on
    clock.advance(60)
    await handle.cast("lock")
    snapshot = await wait_for_snapshot(handle, lambda s: s.phase == "locked")
    assert ["opened", "closed", "locked"] == snapshot.state["log"]
    await handle.kill()


async def test_named_timeouts_fire_rearm_and_cancel() -> None:
    """Re-arming a named timeout replaces it; cancelling disarms it; only the live one fires."""
    clock = ManualClock()
    runtime = Runtime(clock=clock)
    handle = runtime.spawn(DoorMachine)
    await handle.cast(("alarm", 10.0))
    await handle.cast(("alarm", 20.0))
    await wait_until(lambda: handle.statistics().transitions == 3)
    clock.advance(15)
    await handle.cast(("alarm", 1.0))
    await handle.cast("disarm")
    await wait_until(lambda: handle.statistics().transitions == 5)
    clock.advance(100)
    await handle.cast(("alarm", 2.0))
    await wait_until(lambda: handle.statistics().transitions == 6)
    assert ("timer alarm at 1000117.000",) == handle.snapshot().waiting_on
    clock.advance(2)
    snapshot = await wait_for_snapshot(handle, lambda s: bool(s.state.get("log")))
    assert ["timer alarm: ring"] == snapshot.state["log"]
    await handle.kill()


async def test_postponed_input_is_redelivered_after_the_phase_changes() -> None:
    """A postponed input comes back, before newer inputs, once the phase changes."""
    runtime = Runtime()
    handle = runtime.spawn(DoorMachine)
    await handle.cast("lock")
    await handle.cast("open")
    snapshot = await wait_for_snapshot(handle, lambda s: "postponed open" in s.state.get("log", []))
    assert 1 == handle.statistics().postponed
    assert "locked" == snapshot.phase
    await handle.cast("unlock")
    await handle.cast("close")
    snapshot = await wait_for_snapshot(handle, lambda s: len(s.state.get("log", [])) == 5)
    assert ["locked", "postponed open", "unlocked", "opened", "closed"] == snapshot.state["log"]
    assert 0 == handle.statistics().postponed
    await handle.kill()


class TimerArgs(Machine[dict[str, Any]]):
    """Arms whatever timer a call asks for."""

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        if isinstance(input, Call):
            name, seconds = input.message
            ctx.timeout(name, seconds)
            ctx.reply(input, "armed")


async def test_reserved_and_negative_timers_are_rejected() -> None:
    """The state-timeout name is reserved and delays must be >= 0; both fail the transition."""
    runtime = Runtime()
    handle = runtime.spawn(TimerArgs)
    with pytest.raises(TransitionError, match="reserved"):
        await handle.call((STATE_TIMEOUT, 1))
    with pytest.raises(TransitionError, match=">= 0"):
        await handle.call(("x", -1))
    assert 0 == handle.statistics().armed_timers
    assert "armed" == await handle.call(("x", 1))
    assert 1 == handle.statistics().armed_timers
    await handle.kill()
