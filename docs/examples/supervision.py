"""A supervision tree on a node: start order, restarts with backoff, a budget.

"web" depends on "db": it starts once db has committed its first transition. db fails on its
first two starts and is restarted (one_for_one, with backoff) until it stays up; then it
announces itself through an untracked action, whose executor the program waits on.
"""

import asyncio
from typing import Any

from supervisor import (
    Backoff,
    Budget,
    Call,
    ChildSpec,
    Context,
    Control,
    Input,
    Machine,
    Node,
    Restart,
    Strategy,
    SupervisorSpec,
    TrackedAction,
    UntrackedAction,
)

starts = {"db": 0}
up = asyncio.Event()


async def announce(action: TrackedAction | UntrackedAction) -> None:
    print("up:", action.payload)
    up.set()


class Database(Machine[dict[str, Any]]):
    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                starts["db"] += 1
                if starts["db"] <= 2:
                    ctx.fail(f"could not open the database (start {starts['db']})")
                else:
                    ctx.emit("announce", {"name": ctx.name, "start": starts["db"]})
            case Call("ping"):
                ctx.reply(input, "pong")


class Web(Machine[dict[str, Any]]):
    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Call("ping"):
                ctx.reply(input, "pong")


async def main() -> None:
    node = Node(
        executors={"announce": announce},
        root=SupervisorSpec(
            "root",
            [
                ChildSpec("db", machine=Database, restart=Restart.PERMANENT),
                ChildSpec("web", machine=Web, depends_on=("db",), restart=Restart.TRANSIENT),
            ],
            strategy=Strategy.ONE_FOR_ONE,
            budget=Budget(max_restarts=5, period=10.0),
            backoff=Backoff(initial=0.05, maximum=1.0, multiplier=2.0, jitter=0.2),
        ),
    )
    await node.start()
    web = node.find("web")  # a declared child is named by its path, root/web; the bare name finds it too
    print(web.name, await web.call("ping", timeout=10))
    await up.wait()
    db = node.find("db")  # the process running now (each restart is a new process, with a new pid)
    print(db.name, await db.call("ping", timeout=10), "after", starts["db"], "starts")
    summary = node.summary()
    print("restarts:", summary.restarts, "| live:", summary.live, "| failed:", summary.ended["failed"])
    await node.shutdown()


asyncio.run(main())
