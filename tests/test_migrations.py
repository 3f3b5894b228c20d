"""Upgrading a machine under a live store: checkpoints of an older state schema are migrated
when loaded, written back together, and run on; those that cannot be (a migration that raises,
a schema newer than the code, a kind no longer installed) are quarantined with the reason,
visible in the status, ``store inspect`` and the metrics, and the others run."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Call, Cast, Context, Control, Input, Machine, Node, decode_record
from supervisor.daemon.metrics import registry_for

State = dict[str, Any]


class AccountV1(Machine[State]):
    """An account in whole units."""

    kind = "account"
    schema = 1

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("balance", 0)
            case Cast(("add", amount)):
                state["balance"] += amount
            case Call("get"):
                ctx.reply(input, state["balance"])


class AccountV2(Machine[State]):
    """The same account in cents (schema 2); an account flagged "legacy" cannot be migrated."""

    kind = "account"
    schema = 2

    def migrate(self, state: State, from_version: int) -> Mapping[str, Any]:
        if state.get("legacy"):
            raise ValueError("legacy accounts are closed by hand")
        return {"cents": state["balance"] * 100}

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("cents", 0)
            case Cast(("add", amount)):
                state["cents"] += amount * 100
            case Call("get"):
                ctx.reply(input, state["cents"])


class AccountV2NoMigration(AccountV2):
    """Schema 2 without a migration: the default refuses every older state."""

    kind = "account"

    def migrate(self, state: State, from_version: int) -> Mapping[str, Any]:
        return Machine.migrate(self, state, from_version)


def inspect(db: Path, pid: str) -> dict[str, Any]:
    """What `statevisor store inspect PID --json` prints."""
    shown = subprocess.run(
        [sys.executable, "-m", "supervisor", "store", "inspect", pid, "--store", str(db), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    found: dict[str, Any] = json.loads(shown.stdout)
    return found


def stored(db: Path) -> dict[str, tuple[int, State]]:
    """The live records in the store: pid -> (schema, state)."""
    with sqlite3.connect(db) as reader:
        rows = reader.execute("SELECT pid, record FROM processes WHERE ended IS NULL").fetchall()
    return {pid: (decode_record(blob).schema, decode_record(blob).state) for pid, blob in rows}


async def write_v1_accounts(db: Path) -> dict[str, str]:
    """Three accounts written by v1 (one of them legacy); their pids by name."""
    node = Node(machines=[AccountV1], store=str(db))
    await node.start()
    pids = {}
    for name, amount, legacy in (("alice", 3, False), ("bob", 5, False), ("old", 7, True)):
        handle = await node.spawn(AccountV1, {"legacy": legacy} if legacy else None, name=name)
        await handle.cast(("add", amount))
        assert amount == await handle.call("get")  # a reply: its checkpoint is durable
        pids[name] = handle.pid
    await node.shutdown()
    return pids


async def test_v1_checkpoints_are_migrated_by_v2_and_a_failing_migration_is_quarantined(tmp_path: Path) -> None:
    """Checkpoints written by v1, loaded by v2: each is migrated before it runs and written back
    at schema 2 before anything else happens; the one whose migration raises is quarantined with
    the error (status, metrics and `store inspect` say so) and the others go on, migrated."""
    db = tmp_path / "s.db"
    pids = await write_v1_accounts(db)
    assert {1} == {schema for schema, _ in stored(db).values()}

    node = Node(machines=[AccountV2], store=str(db))
    report = await node.start()
    try:
        after_start = stored(db)  # before any process handled anything more
        assert {pids["alice"]: (2, {"cents": 300}), pids["bob"]: (2, {"cents": 500})} == after_start
        assert [pids["old"]] == [entry.pid for entry in report.quarantined]
        reason = report.quarantined[0].reason
        assert (
            "migrating its state from schema 1 to 2 raised ValueError('legacy accounts are closed by hand')" == reason
        )
        assert 300 == await node.find("alice").call("get")
        await node.find("bob").cast(("add", 1))
        assert 600 == await node.find("bob").call("get")
        summary = node.summary()
        assert (1, {"migration_failed": 1}) == (summary.quarantined, summary.quarantined_why)
        gauge = registry_for(node).get_sample_value("statevisor_quarantined_at_start", {"why": "migration_failed"})
        assert 1.0 == gauge
    finally:
        await node.shutdown()
    entry = inspect(db, pids["old"])
    assert (True, reason) == (entry["quarantined"], entry["reason"])


async def test_going_back_to_v1_quarantines_the_v2_checkpoints_instead_of_misreading_them(tmp_path: Path) -> None:
    """After v2 migrated the store, v1 again: every schema-2 checkpoint is quarantined as newer
    than the code (never read as if it were v1's), named in the reason; nothing runs."""
    db = tmp_path / "s.db"
    await write_v1_accounts(db)
    node = Node(machines=[AccountV2], store=str(db))
    await node.start()
    await node.shutdown()

    node = Node(machines=[AccountV1], store=str(db))
    report = await node.start()
    try:
        assert 2 == len(report.quarantined)
        assert all("schema 2, newer than kind 'account''s 1" in entry.reason for entry in report.quarantined)
        assert {"newer_schema": 2} == node.summary().quarantined_why
        assert [] == node.list()
    finally:
        await node.shutdown()


async def test_a_new_schema_without_a_migration_quarantines_the_old_checkpoints(tmp_path: Path) -> None:
    """A machine that raises its schema and defines no migration cannot read older states: they
    are quarantined, naming the missing migration, and a kind no longer installed is too."""
    db = tmp_path / "s.db"
    await write_v1_accounts(db)
    node = Node(machines=[AccountV2NoMigration], store=str(db))
    report = await node.start()
    await node.shutdown()
    assert 3 == len(report.quarantined)
    assert all("defines no migration from schema 1" in entry.reason for entry in report.quarantined)

    other = tmp_path / "t.db"
    await write_v1_accounts(other)
    node = Node(machines=[], store=str(other))
    report = await node.start()
    await node.shutdown()
    assert {"unknown_kind": 3} == node.quarantined_why
    assert all("no process type registered for kind 'account'" in entry.reason for entry in report.quarantined)
