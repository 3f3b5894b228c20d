"""A process outlives its node: its pending action is re-issued under the same id.

The first node starts a transfer and shuts down while the bank has not answered. A second node
on the same store revives the process; its restore re-issues the action under its original id,
and the bank, an idempotent executor, answers with the first outcome instead of paying twice.
"""

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from supervisor import ActionSucceeded, Cast, Context, Input, Machine, Node, TrackedAction, UntrackedAction


class Transfer(Machine[dict[str, Any]]):
    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast(("send", int(amount))):
                state["sending"] = ctx.track("bank.send", {"amount": amount})
            case ActionSucceeded(action_id=action, value=receipt) if action == state.get("sending"):
                ctx.finish(receipt)


class Bank:
    """The outside world: it keeps a receipt per action id and never pays an id twice."""

    idempotent = True

    def __init__(self, receipts: dict[str, str], *, answers: bool) -> None:
        self.receipts = receipts
        self.answers = answers
        self.asked = asyncio.Event()

    async def execute(self, action: TrackedAction | UntrackedAction) -> str:
        assert isinstance(action, TrackedAction)
        print(f"bank asked to send {action.payload['amount']} under id {action.id}")
        if action.id not in self.receipts:
            self.receipts[action.id] = f"receipt {len(self.receipts) + 1}"
        self.asked.set()
        if not self.answers:
            await asyncio.Event().wait()  # the answer never comes back to this node
        return self.receipts[action.id]

    async def cancel(self, action: TrackedAction) -> None:
        return None


async def main() -> None:
    receipts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as directory:
        store = str(Path(directory) / "store.db")

        bank = Bank(receipts, answers=False)
        node = Node(machines=[Transfer], executors={"bank.send": bank}, store=store)
        await node.start()
        handle = await node.spawn(Transfer, name="transfer-1")  # checkpointed before it starts
        await handle.cast(("send", 100))
        await bank.asked.wait()
        await node.shutdown()  # as a crash would: the transfer is pending in its checkpoint

        node = Node(machines=[Transfer], executors={"bank.send": Bank(receipts, answers=True)}, store=store)
        await node.start()  # revives transfer-1; its restore re-issues the action
        snapshot = await node.find("transfer-1").wait(timeout=10)
        print(snapshot.lifecycle, snapshot.result, "| payments made:", len(receipts))
        await node.shutdown()


asyncio.run(main())
