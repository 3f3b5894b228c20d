"""What the cluster tests' daemons run: a process kind whose every step is a tracked effect, and
the effect's executor, which applies it to a ledger every daemon of the test shares.

The ledger is a SQLite file (``STATEVISOR_TEST_LEDGER``): one row per effect, keyed by the
process and its step (the effect itself), holding the action id that applied it. An effect
re-issued after a failover carries the same action id and is applied once (the executor is
idempotent, as a real backend keyed by the action id is); an effect applied again under a
*different* id would be the runtime doing one step twice, and is recorded in ``duplicates``.
A test's expected effects minus the ledger's rows are the lost ones.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

from supervisor import ActionFailed, ActionSucceeded, Call, Context, Control, Input, Machine, TrackedAction


class Stepper(Machine[dict[str, Any]]):
    """``steps`` effects one after the other (each waits ``pause`` seconds in its executor),
    then finishes with how many were done. A call "done" replies the count so far."""

    kind = "stepper"
    action_types = ("ledger.effect",)

    def initial_state(self) -> dict[str, Any]:
        return {"steps": 5, "pause": 0.05, "done": 0}

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("done", 0)
            case ActionSucceeded():
                state["done"] += 1
            case ActionFailed():
                # Tried again under a new id: should the failed attempt have been applied after
                # all, the ledger records the second as a duplicate, and the test says so.
                state["failures"] = state.get("failures", 0) + 1
                state["error"] = f"{input.error_type}: {input.message}"
            case Call("done"):
                ctx.reply(input, state["done"])
                return
            case _:
                return
        if state["done"] >= state["steps"]:
            ctx.finish(state["done"])
        elif not ctx.pending:
            ctx.track("ledger.effect", {"step": state["done"], "pause": state["pause"]})


def _ledger() -> sqlite3.Connection:
    db = sqlite3.connect(os.environ["STATEVISOR_TEST_LEDGER"], timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")  # the daemons are killed, never the machine: no fsync needed
    db.execute("CREATE TABLE IF NOT EXISTS effects (pid TEXT, step INTEGER, action TEXT, PRIMARY KEY (pid, step))")
    db.execute("CREATE TABLE IF NOT EXISTS duplicates (pid TEXT, step INTEGER, first TEXT, again TEXT)")
    return db


def _apply(pid: str, step: int, action_id: str) -> None:
    db = _ledger()
    try:
        db.execute("BEGIN IMMEDIATE")
        found = db.execute("SELECT action FROM effects WHERE pid = ? AND step = ?", (pid, step)).fetchone()
        if found is None:
            db.execute("INSERT INTO effects VALUES (?, ?, ?)", (pid, step, action_id))
        elif found[0] != action_id:
            db.execute("INSERT INTO duplicates VALUES (?, ?, ?, ?)", (pid, step, found[0], action_id))
        db.execute("COMMIT")
    finally:
        db.close()


async def effect(action: TrackedAction) -> int:
    """The ``ledger.effect`` executor: wait ``pause``, then apply the step once (by its action id)."""
    await asyncio.sleep(float(action.payload["pause"]))
    step = int(action.payload["step"])
    await asyncio.to_thread(_apply, action.pid, step, action.id)
    return step
