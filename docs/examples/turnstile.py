"""gen_statem's event handling: an enter call, an event timeout and internal events.

Entering "open" arms an event timeout: if nobody passes for 10 s (no input at all), the gate
locks again. A push on a locked gate sounds the alarm by queuing an internal event, handled
before anything else waiting. A ManualClock makes the 10 s take no time.
"""

import asyncio
from enum import StrEnum
from typing import Any, ClassVar

from supervisor import (
    EVENT_TIMEOUT,
    Call,
    Cast,
    Context,
    Handle,
    Input,
    Internal,
    Machine,
    ManualClock,
    Runtime,
    TimerFired,
)


class Gate(StrEnum):
    LOCKED = "locked"
    OPEN = "open"


class Turnstile(Machine[dict[str, Any]]):
    phases = Gate
    state_enter = True
    edges: ClassVar = {Gate.LOCKED: {Gate.OPEN: "coin"}, Gate.OPEN: {Gate.LOCKED: "pass / idle"}}
    entry_notes: ClassVar = {Gate.OPEN: "event timeout 10 s"}

    def enter(self, state: dict[str, Any], ctx: Context) -> None:
        state.setdefault("log", []).append(f"entered {ctx.phase}")
        if ctx.phase == Gate.OPEN:
            ctx.event_timeout(10.0, "idle")

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast("coin"):
                ctx.goto(Gate.OPEN)
            case Cast("pass"):
                ctx.goto(Gate.LOCKED)
            case Cast("push") if ctx.phase == Gate.LOCKED:
                ctx.next_event("alarm")  # handled before anything waiting in the mailbox
            case Internal("alarm"):
                state["log"].append("alarm!")
            case TimerFired(name) if name == EVENT_TIMEOUT:
                state["log"].append("nobody came: locking")
                ctx.goto(Gate.LOCKED)
            case Call("log"):
                ctx.reply(input, state["log"])


async def phase(gate: Handle, wanted: Gate) -> None:
    async for snapshot in gate.watch():
        if snapshot.phase == wanted:
            return


async def main() -> None:
    clock = ManualClock()
    runtime = Runtime(clock=clock)
    gate = runtime.spawn(Turnstile)
    await gate.cast("push")
    await gate.cast("coin")
    await phase(gate, Gate.OPEN)  # watching is no input: the event timeout stands
    clock.advance(10.0)  # nobody passes: no input at all for 10 s
    await phase(gate, Gate.LOCKED)
    print(await gate.call("log"))
    # ['entered locked', 'alarm!', 'entered open', 'nobody came: locking', 'entered locked']
    await gate.kill()


asyncio.run(main())
