"""Upgrading a machine under a live store: v1 kept a balance in units, v2 keeps cents.

Checkpoints written by v1 are migrated when a node running v2 loads them, written back before
they run, and go on; a state the migration refuses is quarantined with the reason.
"""

import asyncio
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Call, Cast, Context, Control, Input, Machine, Node


class AccountV1(Machine[dict[str, Any]]):
    kind = "account"
    schema = 1

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("balance", 0)
            case Cast(("add", int(amount))):
                state["balance"] += amount
            case Call("get"):
                ctx.reply(input, state["balance"])


class AccountV2(Machine[dict[str, Any]]):
    kind = "account"
    schema = 2

    def migrate(self, state: dict[str, Any], from_version: int) -> Mapping[str, Any]:
        if state.get("frozen"):
            raise ValueError("frozen accounts are migrated by hand")
        return {"cents": state["balance"] * 100}

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Call("get"):
                ctx.reply(input, state["cents"])


async def main() -> None:
    store = str(Path(tempfile.mkdtemp()) / "store.db")
    v1 = Node(machines=[AccountV1], store=store)
    await v1.start()
    alice = await v1.spawn(AccountV1, name="alice")
    await alice.cast(("add", 3))
    await alice.call("get")  # answered: its checkpoint is durable
    await v1.spawn(AccountV1, {"frozen": True}, name="bob")
    await v1.shutdown()

    v2 = Node(machines=[AccountV2], store=store)
    report = await v2.start()
    print(await v2.find("alice").call("get"))  # 300
    print([entry.reason for entry in report.quarantined])  # bob's: the migration refused it
    await v2.shutdown()


asyncio.run(main())
