"""`statevisor store`: operators inspect checkpoints and the quarantine, read-only."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from supervisor import Node
from tests.helpers import Gate, wait_until
from tests.machines import Worker


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True, check=False)


async def test_inspect_shows_state_and_pending_actions_while_the_store_is_owned(tmp_path: Path) -> None:
    """`store inspect PID --json --raw` prints the checkpoint (state, pending actions) even while
    a host owns the store; without --raw a kind not installed here has its record withheld,
    saying why (its secrets are unknown)."""
    db = tmp_path / "s.db"
    gate = Gate()
    host = Node(machines=[Worker], executors={"work": gate}, store=str(db))
    await host.start()
    handle = await host.spawn(Worker, pid="w")
    await handle.cast(("work", 3))
    await wait_until(lambda: len(gate.started) == 1)
    withheld = json.loads(cli("store", "inspect", "w", "--store", str(db), "--json").stdout)
    assert withheld["record"] is None
    assert "kind 'worker' is not installed here" in withheld["reason"]
    done = cli("store", "inspect", "w", "--store", str(db), "--json", "--raw")
    assert 0 == done.returncode, done.stderr
    shown = json.loads(done.stdout)
    assert ("w", "worker", "waiting") == (shown["pid"], shown["kind"], shown["lifecycle"])
    assert [gate.started[0].id] == [p["id"] for p in shown["record"]["pending"]]
    assert [gate.started[0].id] == shown["record"]["state"]["issued"]
    text = cli("store", "inspect", "w", "--store", str(db))
    assert "lifecycle:  waiting" in text.stdout
    gate.release.set()
    await host.shutdown()


async def test_quarantined_lists_reasons_and_inspect_shows_them(tmp_path: Path) -> None:
    """A corrupt checkpoint shows up in `store quarantined` with its reason; `inspect` on it
    says it is quarantined and why."""
    db = tmp_path / "s.db"
    host = Node(machines=[Worker], store=str(db))
    await host.start()
    await host.spawn(Worker, pid="bad")
    await host.shutdown()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE processes SET record = ? WHERE pid = 'bad'", (b"\xc1",))
    host = Node(machines=[Worker], store=str(db))
    await host.start()
    await host.shutdown()
    listed = cli("store", "quarantined", "--store", str(db))
    assert 0 == listed.returncode
    assert listed.stdout.startswith("bad\tnot msgpack")
    shown = json.loads(cli("store", "inspect", "bad", "--store", str(db), "--json", "--raw").stdout)
    assert shown["quarantined"] is True
    assert "not msgpack" in shown["reason"]


def test_inspect_errors_have_distinct_exit_codes(tmp_path: Path) -> None:
    """An unknown pid exits 4; an unreadable store exits 3; both say what is wrong."""
    db = tmp_path / "s.db"
    sqlite3.connect(db).executescript(
        "CREATE TABLE processes (pid, name, kind, lifecycle, version, updated, ended, record);"
        "CREATE TABLE quarantine (pid, reason, at, record);"
    )
    missing = cli("store", "inspect", "nope", "--store", str(db))
    assert 4 == missing.returncode
    assert "no process 'nope' (id or name)" in missing.stderr
    broken = cli("store", "inspect", "x", "--store", str(tmp_path / "absent.db"))
    assert 3 == broken.returncode
    assert "absent.db" in broken.stderr


async def test_a_backup_made_while_the_host_writes_is_a_whole_store_that_loads(tmp_path: Path) -> None:
    """`store backup` while processes keep committing: the copy passes SQLite's integrity check,
    loads as a store (every live record decodes), counts what it holds, and leaves no partial
    or write-ahead files beside it."""
    import asyncio

    from supervisor import SQLiteStore
    from supervisor._store.backup import backup
    from tests.machines import Counter

    db, copy = tmp_path / "s.db", tmp_path / "backups" / "s.backup.db"
    copy.parent.mkdir()
    host = Node(machines=[Counter], store=str(db))
    await host.start()
    counters = [await host.spawn(Counter, {"n": 0}) for _ in range(50)]
    for handle in counters[:5]:
        await handle.call("finish")
    live = counters[5:]
    writing = True

    async def keep_writing() -> int:
        rounds = 0
        while writing:
            for handle in live:
                await handle.cast(1)
            await asyncio.gather(*(handle.call("get") for handle in live))  # each reply is durable first
            rounds += 1
        return rounds

    writer = asyncio.ensure_future(keep_writing())
    try:
        await wait_until(lambda: host.runtime.statistics().transitions > 1000)
        report = await asyncio.to_thread(backup, str(db), str(copy))
        writing = False
        assert await writer > 0
    finally:
        writing = False
        await asyncio.gather(writer, return_exceptions=True)
        await host.shutdown()
    assert (45, 5, 0) == (report.live, report.ended, report.quarantined)
    assert report.bytes == copy.stat().st_size
    assert [copy.name] == sorted(p.name for p in copy.parent.iterdir())
    restored = await SQLiteStore.open(str(copy))
    try:
        recovery = await restored.load()
    finally:
        await restored.close()
    assert 45 == len(recovery.records)
    assert [] == recovery.quarantined
    assert all(record.state["n"] >= 0 for record in recovery.records)


def test_backup_from_the_command_line_and_its_errors(tmp_path: Path) -> None:
    """`statevisor store backup` prints what it copied (--json too); a missing store or a
    target directory that does not exist exits 3 naming the path, and writes nothing."""
    db = tmp_path / "s.db"
    with sqlite3.connect(db) as setup:
        from supervisor._store.schema import SCHEMA

        setup.executescript(SCHEMA)
    done = cli("store", "backup", "--store", str(db), "--to", str(tmp_path / "b.db"), "--json")
    assert 0 == done.returncode, done.stderr
    assert (0, 0, str(tmp_path / "b.db")) == tuple(json.loads(done.stdout)[k] for k in ("live", "ended", "target"))
    text = cli("store", "backup", "--store", str(db), "--to", str(tmp_path / "c.db"))
    assert text.stdout.startswith("backed up 0 live and 0 ended processes (0 quarantined) to ")
    missing = cli("store", "backup", "--store", str(tmp_path / "nope.db"), "--to", str(tmp_path / "d.db"))
    assert 3 == missing.returncode
    assert "nope.db: no such store file" in missing.stderr
    nowhere = cli("store", "backup", "--store", str(db), "--to", str(tmp_path / "no" / "e.db"))
    assert 3 == nowhere.returncode
    assert "the directory" in nowhere.stderr
    assert "does not exist" in nowhere.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.db", "c.db", "s.db"]


async def test_inspect_finds_a_process_by_name_and_masks_its_secret_values(tmp_path: Path) -> None:
    """`store inspect NAME` finds a process by its name as well as its id, and shows the values
    of its kind's secret keys (a shell command's env) masked, in its state and in its pending
    action's payload alike; --raw shows them as stored."""
    from processes.shell import Shell, executors

    db = tmp_path / "s.db"
    host = Node(machines=[Shell(tmp_path / "logs")], executors=executors(tmp_path / "runs"), store=str(db))
    await host.start()
    try:
        settings = {"argv": ["sleep", "30"], "env": {"API_TOKEN": "hunter2-secret"}}
        handle = await host.spawn(Shell, settings, name="job")
        await wait_until(lambda: handle.snapshot().phase == "running", timeout=30)
        shown = json.loads(cli("store", "inspect", "job", "--store", str(db), "--json").stdout)
        assert (handle.pid, "shell") == (shown["pid"], shown["kind"])
        assert {"API_TOKEN": "***"} == shown["record"]["state"]["env"]
        (pending,) = shown["record"]["pending"]
        assert {"API_TOKEN": "***"} == pending["payload"]["env"]
        assert "hunter2-secret" not in cli("store", "inspect", "job", "--store", str(db)).stdout
        raw = json.loads(cli("store", "inspect", "job", "--store", str(db), "--json", "--raw").stdout)
        assert "hunter2-secret" == raw["record"]["state"]["env"]["API_TOKEN"]
        await handle.kill()
    finally:
        await host.shutdown()
