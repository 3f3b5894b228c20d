"""The child program of the crash test: runs N stepper processes until all finish.

Usage: python -m tests.crashworker STORE EFFECTS N STEPS SEED
Prints ``READY <remaining>`` once recovered and spawned, ``DONE`` when every process finished.
The parent SIGKILLs it at random moments and starts it again.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvloop

from supervisor import ActionSucceeded, Context, Control, Input, Lifecycle, Machine, Node, TimerFired, TrackedAction


class Stepper(Machine[dict[str, Any]]):
    """Alternates a short timer and a tracked effect, ``steps`` times, then finishes."""

    kind = "stepper"

    def __init__(self, steps: int = 12) -> None:
        self.steps = steps

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.update(step=0, ids=[], total=0)
                ctx.timeout("breathe", 0.002)
            case TimerFired("breathe"):
                ctx.track("effect", {"step": state["step"]})
            case ActionSucceeded(action_id, "effect", value):
                state["ids"].append(action_id)
                state["total"] += value
                state["step"] += 1
                if state["step"] == self.steps:
                    ctx.finish({"total": state["total"], "ids": list(state["ids"])})
                else:
                    ctx.timeout("breathe", 0.002)


class EffectLog:
    """Applies an effect by appending it to a SQLite table; idempotent by action id.

    The table has no unique constraint on purpose: the test counts rows per id.
    """

    idempotent = True

    def __init__(self, path: str, seed: int) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1)
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._rng = random.Random(seed)

    def _connect(self) -> None:
        self._db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives SIGKILL (not power loss), which is what this test does; it
        # keeps an effect's apply quick, so it lands before a slow checkpoint would.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS effects (id TEXT NOT NULL, pid TEXT NOT NULL, value INTEGER)")
        self._db.execute("CREATE INDEX IF NOT EXISTS effects_id ON effects (id)")

    def _apply(self, action_id: str, pid: str, value: int) -> int:
        assert self._db is not None
        self._db.execute("BEGIN IMMEDIATE")
        row = self._db.execute("SELECT value FROM effects WHERE id = ?", (action_id,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO effects VALUES (?, ?, ?)", (action_id, pid, value))
        self._db.execute("COMMIT")
        return value if row is None else int(row[0])

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)

    async def execute(self, action: TrackedAction | Any) -> Any:
        # Like a batch submission: the effect happens at once, the outcome takes a while. So a
        # runtime that handed actions out before their checkpoint was durable would be caught.
        value = action.payload["step"] + 1
        applied = await asyncio.get_running_loop().run_in_executor(
            self._thread, self._apply, action.id, action.pid, value
        )
        await asyncio.sleep(self._rng.uniform(0.1, 0.5))
        return applied

    async def cancel(self, action: TrackedAction) -> None:
        return None


async def main(store: str, effects: str, count: int, steps: int, seed: int) -> None:
    log = EffectLog(effects, seed)
    await log.start()
    host = Node(machines=[Stepper(steps)], executors={"effect": log}, store=store, kill_grace=1.0)
    await host.start()
    handles = {h.pid: h for h in host.list(kind="stepper")}
    assert host.store is not None
    for index in range(count):
        pid = f"p{index:04d}"
        if pid not in handles and await host.store.get(pid) is None:
            handles[pid] = await host.spawn("stepper", pid=pid)
    remaining = [h for h in handles.values() if not h.done()]
    print(f"READY {len(remaining)}", flush=True)
    for handle in remaining:
        final = await handle.wait()
        assert final.lifecycle is Lifecycle.FINISHED, final
    await host.shutdown()
    print("DONE", flush=True)


if __name__ == "__main__":
    store_path, effects_path, n, steps, seed_text = sys.argv[1:6]
    uvloop.run(main(store_path, effects_path, int(n), int(steps), int(seed_text)))
