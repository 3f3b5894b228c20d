"""Process types used across the tests."""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum
from typing import Any, ClassVar

from supervisor import (
    EVENT_TIMEOUT,
    STATE_TIMEOUT,
    ActionFailed,
    ActionSucceeded,
    Call,
    Cast,
    Context,
    Control,
    ErrorPolicy,
    Input,
    Internal,
    Machine,
    TimerFired,
)

State = dict[str, Any]


class Counter(Machine[State]):
    """Casts add their message; calls: "get" replies the count, "boom" mutates then raises."""

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Cast(int(n)):
                state["n"] = state.get("n", 0) + n
            case Call("get"):
                ctx.reply(input, state.get("n", 0))
            case Call("boom"):
                state["n"] = -1
                state["junk"] = [1, 2]
                ctx.track("record", {"from": "boom"})
                ctx.timeout("never", 1.0)
                ctx.goto("elsewhere")
                raise ValueError("boom after emitting")
            case Call("finish"):
                ctx.reply(input, "bye")
                ctx.finish(state.get("n", 0))
            case Call("fail"):
                ctx.fail("asked to fail")
            case _:
                pass


class Strict(Counter):
    """A counter whose transition errors fail the process."""

    error_policy = ErrorPolicy.FAIL


class Slow(Machine[State]):
    """A transition that suspends on ``gate`` halfway through mutating state."""

    kind = "slow"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        if isinstance(input, Cast) and input.message == "slow":
            state["stage"] = "halfway"
            self.entered.set()
            await self.gate.wait()
            state["stage"] = "done"
        if isinstance(input, Cast):
            state["seen"] = state.get("seen", 0) + 1


class Worker(Machine[State]):
    """Runs one tracked action per cast and records its outcome; ``finish`` when asked."""

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Cast(("work", payload)):
                action_id = ctx.track("work", payload)
                state.setdefault("issued", []).append(action_id)
            case Cast(("notify", payload)):
                ctx.emit("notify", payload)
            case ActionSucceeded(action_id, _, value):
                state.setdefault("done", {})[action_id] = value
            case ActionFailed(action_id, _, error_type, message):
                state.setdefault("failed", {})[action_id] = f"{error_type}: {message}"
            case Call("done"):
                ctx.finish(dict(state.get("done", {})))
                ctx.reply(input, True)
            case _:
                pass


class Door(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    LOCKED = "locked"


class DoorMachine(Machine[State]):
    """gen_statem's classic: postpone, state timeouts and named timeouts, with declared edges."""

    phases = Door
    edges: ClassVar = {
        Door.CLOSED: {Door.OPEN: "open", Door.LOCKED: "lock"},
        Door.OPEN: {Door.CLOSED: "close / timeout"},
        Door.LOCKED: {Door.CLOSED: "unlock"},
    }

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        log = state.setdefault("log", [])
        match input:
            case Control():
                return
            case Cast("open") if ctx.phase == Door.LOCKED:
                ctx.postpone()
                log.append("postponed open")
            case Cast("open"):
                ctx.goto(Door.OPEN)
                ctx.state_timeout(5.0, "auto-close")
                log.append("opened")
            case Cast("close"):
                ctx.goto(Door.CLOSED)
                log.append("closed")
            case Cast("lock"):
                ctx.goto(Door.LOCKED)
                log.append("locked")
            case Cast("unlock"):
                ctx.goto(Door.CLOSED)
                log.append("unlocked")
            case Cast("jump"):
                ctx.goto(Door.LOCKED)  # illegal from OPEN: no declared edge
            case Cast(("alarm", seconds)):
                ctx.timeout("alarm", seconds, "ring")
            case Cast("disarm"):
                ctx.cancel_timeout("alarm")
            case TimerFired(name, payload) if name == STATE_TIMEOUT:
                ctx.goto(Door.CLOSED)
                log.append(f"state timeout: {payload}")
            case TimerFired(name, payload):
                log.append(f"timer {name}: {payload}")


class Clocky(Machine[State]):
    """Reads time from the wall clock: nondeterministic, as check mode must notice."""

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        state["t"] = time.perf_counter_ns()


class Dicey(Machine[State]):
    """Uses ctx.random, which is deterministic per (pid, version)."""

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        state.setdefault("rolls", []).append(ctx.random.randint(1, 1_000_000))


class Gate(StrEnum):
    LOCKED = "locked"
    OPEN = "open"
    ALARM = "alarm"


class Turnstile(Machine[State]):
    """gen_statem's enter calls, event timeouts and internal events: entering OPEN arms an event
    timeout (idle: lock again), entering ALARM queues an internal "ring" ahead of the mailbox."""

    phases = Gate
    state_enter = True
    edges: ClassVar = {
        Gate.LOCKED: {Gate.OPEN: "coin", Gate.ALARM: "push"},
        Gate.OPEN: {Gate.LOCKED: "pass / idle"},
        Gate.ALARM: {Gate.LOCKED: "reset"},
    }
    entry_notes: ClassVar = {Gate.OPEN: "event timeout 10 s", Gate.ALARM: "ring (internal event)"}
    timeout_notes: ClassVar = {Gate.OPEN: "idle for 10 s: lock again"}

    def enter(self, state: State, ctx: Context) -> None:
        state.setdefault("entered", []).append(f"{ctx.entered_from}->{ctx.phase}")
        if ctx.phase == Gate.OPEN:
            if state.get("refuse_open"):
                raise RuntimeError("the gate is jammed")
            if state.get("jump_in_enter"):
                ctx.goto(Gate.ALARM)  # not allowed in an enter call
            ctx.event_timeout(10.0, "idle")
        elif ctx.phase == Gate.ALARM:
            ctx.next_event("ring")

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        log = state.setdefault("log", [])
        match input:
            case Control():
                return
            case Call(("set", key)):
                state[key] = True
                ctx.reply(input, None)
            case Cast("coin") | Call("coin"):
                ctx.goto(Gate.OPEN)
                if type(input) is Call:
                    ctx.reply(input, "open")
            case Cast("push") if ctx.phase == Gate.LOCKED:
                ctx.goto(Gate.ALARM)
            case Cast("pass") | Cast("reset"):
                ctx.goto(Gate.LOCKED)
            case Cast(("chain", n)):
                ctx.next_event(["chain", n])
            case Internal(("chain", n)):
                log.append(f"chain {n}")
                if n < 3:
                    ctx.next_event(["chain", n + 1])
            case Internal(message):
                log.append(f"internal {message}")
            case TimerFired(name, payload) if name == EVENT_TIMEOUT:
                log.append(f"event timeout: {payload}")
                ctx.goto(Gate.LOCKED)
            case Cast(message):
                log.append(f"cast {message}")
