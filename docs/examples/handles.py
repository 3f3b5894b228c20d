"""The handle API on an in-process handle: step mode, room in the mailbox, pause, watch, kill.

Everything awaited here works the same on a remote handle (supervisor.control), where each
operation is a round trip to the daemon.
"""

import asyncio
from typing import Any

from supervisor import Call, Cast, Context, DriveMode, Input, Machine, ProcessKilled, Runtime, WouldBlock


class Counter(Machine[dict[str, Any]]):
    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast("add"):
                state["n"] += 1
            case Call("n"):
                ctx.reply(input, state["n"])


async def main() -> None:
    runtime = Runtime(mailbox_size=2)

    # Step mode: one transition per nudge (the first input, Control(STARTED), takes one too).
    stepped = runtime.spawn(Counter, mode=DriveMode.STEP)
    await stepped.cast("add")
    await stepped.cast("add")
    try:
        stepped.try_cast("add")  # the mailbox holds 2 casts and calls: no room, no waiting
    except WouldBlock as exc:
        print("try_cast:", exc)
    for _ in range(3):
        await stepped.nudge()  # permits a transition; the process takes it on its own task
    async for snapshot in stepped.watch():
        if snapshot.state["n"] == 2:
            print("after 3 nudges:", snapshot.state, "version", snapshot.version)
            break
    stats = await stepped.statistics()
    print("queued:", stats.mailbox_depth, "transitions:", stats.transitions)

    # Automatic mode: pause lands between transitions; inputs keep queueing meanwhile.
    counter = runtime.spawn(Counter)
    await counter.pause()
    await counter.cast("add")
    print("paused:", (await counter.snapshot()).paused, "state:", (await counter.snapshot()).state)
    await counter.resume()
    print("n =", await counter.call("n", timeout=5))

    # Watch: the current snapshot first, then newer ones; every watcher sees the terminal one.
    async def watch() -> list[str]:
        return [str(s.lifecycle) async for s in counter.watch()]

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0)  # let the watcher take its first snapshot
    ended = await counter.kill("no longer needed")
    print("watched:", await watching, "| ended:", ended.lifecycle, ended.error)
    try:
        await counter.cast("add")
    except ProcessKilled as exc:
        print("cast after kill:", exc)
    await stepped.kill()


asyncio.run(main())
