"""`statevisor store`: operators inspect checkpoints and the quarantine, read-only."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from supervisor import Host
from tests.helpers import Gate, wait_until
from tests.machines import Worker


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True, text=True, check=False)


async def test_inspect_shows_state_and_pending_actions_while_the_store_is_owned(tmp_path: Path) -> None:
    """`store inspect PID --json` prints the checkpoint (state, pending actions) even while a
    host owns the store."""
    db = tmp_path / "s.db"
    gate = Gate()
    host = Host(machines=[Worker], executors={"work": gate}, store=str(db))
    await host.start()
    handle = await host.spawn(Worker, pid="w")
    await handle.cast(("work", 3))
    await wait_until(lambda: len(gate.started) == 1)
    done = cli("store", "inspect", "w", "--store", str(db), "--json")
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
    host = Host(machines=[Worker], store=str(db))
    await host.start()
    await host.spawn(Worker, pid="bad")
    await host.shutdown()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE processes SET record = ? WHERE pid = 'bad'", (b"\xc1",))
    host = Host(machines=[Worker], store=str(db))
    await host.start()
    await host.shutdown()
    listed = cli("store", "quarantined", "--store", str(db))
    assert 0 == listed.returncode
    assert listed.stdout.startswith("bad\tnot msgpack")
    shown = json.loads(cli("store", "inspect", "bad", "--store", str(db), "--json").stdout)
    assert shown["quarantined"] is True
    assert "not msgpack" in shown["reason"]


def test_inspect_errors_have_distinct_exit_codes(tmp_path: Path) -> None:
    """An unknown pid exits 4; an unreadable store exits 3; both say what is wrong."""
    db = tmp_path / "s.db"
    sqlite3.connect(db).executescript("CREATE TABLE processes (pid, name, kind, lifecycle, version, updated, record);"
                                      "CREATE TABLE quarantine (pid, reason, at, record);")  # fmt: skip
    missing = cli("store", "inspect", "nope", "--store", str(db))
    assert 4 == missing.returncode
    assert "no process 'nope'" in missing.stderr
    broken = cli("store", "inspect", "x", "--store", str(tmp_path / "absent.db"))
    assert 3 == broken.returncode
    assert "absent.db" in broken.stderr
