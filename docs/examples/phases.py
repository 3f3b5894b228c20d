"""Phases, edges, a state timeout and postpone: a door that closes by itself.

"lock" while the door is open is postponed: it is delivered again once the phase changes, before
anything newer. Opening arms a state timeout, which any phase change cancels.
"""

import asyncio
from enum import StrEnum
from typing import Any, ClassVar

from supervisor import STATE_TIMEOUT, Call, Cast, Context, Input, Machine, Runtime, TimerFired, mermaid


class Door(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    LOCKED = "locked"


class FrontDoor(Machine[dict[str, Any]]):
    phases = Door  # the first one is the initial phase
    edges: ClassVar[dict[str, dict[str, str]]] = {
        Door.CLOSED: {Door.OPEN: "open", Door.LOCKED: "lock"},
        Door.OPEN: {Door.CLOSED: "close / timeout"},
        Door.LOCKED: {Door.CLOSED: "unlock"},
    }

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match ctx.phase, input:
            case Door.CLOSED, Cast("open"):
                ctx.goto(Door.OPEN)
                ctx.state_timeout(0.1)  # close again after 0.1 s, unless the phase changes first
            case Door.OPEN, Cast("close"):
                ctx.goto(Door.CLOSED)
            case Door.OPEN, TimerFired(name=timer) if timer == STATE_TIMEOUT:
                ctx.goto(Door.CLOSED)
            case Door.OPEN, Cast("lock"):
                ctx.postpone()  # cannot lock an open door: try again once it has closed
            case Door.CLOSED, Cast("lock"):
                ctx.goto(Door.LOCKED)
            case Door.LOCKED, Cast("unlock"):
                ctx.goto(Door.CLOSED)
            case _, Call("phase"):
                ctx.reply(input, ctx.phase)


async def main() -> None:
    print(mermaid(FrontDoor))
    door = Runtime().spawn(FrontDoor)
    await door.cast("open")
    await door.cast("lock")  # postponed while open
    print(await door.call("phase", timeout=5))  # open: the lock waits for the door to close
    async for snapshot in door.watch():  # the state timeout closes it; then the lock is delivered
        if snapshot.phase == Door.LOCKED:
            break
    print(await door.call("phase", timeout=5))  # locked
    await door.kill("done")


asyncio.run(main())
