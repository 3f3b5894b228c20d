"""A restore that asks before it repeats: after a crash, look the order up instead of placing it again.

The default restore re-issues every pending action under its original id. This machine replaces
a pending "place" with a "find" (an idempotent query) and decides on its answer. Runtime.revive
brings a process back from a checkpoint record, as a node does after a crash: the way to test a
restore.
"""

import asyncio
from typing import Any

from supervisor import (
    ActionSucceeded,
    Cast,
    Context,
    Input,
    Machine,
    ProcessRecord,
    Runtime,
    TrackedAction,
    UntrackedAction,
)


class Order(Machine[dict[str, Any]]):
    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast(("place", str(item))):
                state["item"] = item
                ctx.track("shop.place", {"item": item}, key=f"order-{item}")  # our own idempotency key
            case ActionSucceeded(action_type="shop.place", value=number):
                ctx.finish(number)
            case ActionSucceeded(action_type="shop.find", value=None):  # never placed: place it now
                ctx.track("shop.place", {"item": state["item"]}, key=f"order-{state['item']}")
            case ActionSucceeded(action_type="shop.find", value=number):
                ctx.finish(number)

    def restore(self, state: dict[str, Any], ctx: Context) -> None:
        for action in ctx.pending.values():
            if action.type == "shop.place":
                ctx.track("shop.find", {"key": action.id})  # replaces it: pending actions not re-issued are dropped
            else:
                ctx.reissue(action)


orders: dict[str, str] = {"order-book": "#1042"}  # the shop placed it before the crash; the answer was lost


async def place(action: TrackedAction | UntrackedAction) -> str:
    raise AssertionError("placed twice")


async def find(action: TrackedAction | UntrackedAction) -> str | None:
    return orders.get(action.payload["key"])


async def main() -> None:
    runtime = Runtime(executors={"shop.place": place, "shop.find": find})
    crashed = ProcessRecord(
        pid="p1",
        name="p1",
        kind="order",
        version=2,
        phase="main",
        state={"item": "book"},
        pending=(TrackedAction("order-book", "shop.place", {"item": "book"}, "p1"),),
    )
    handle = runtime.revive(Order(), crashed)
    print((await handle.wait(timeout=5)).result)  # #1042: found, not placed again


asyncio.run(main())
