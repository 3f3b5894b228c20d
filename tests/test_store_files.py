"""The store's files deleted or replaced under a running host: noticed, mended where they can
be, said where they cannot. Real files, real SQLite, a real daemon for the SIGKILL case."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import supervisor._store.sqlite
from supervisor import Node, SQLiteStore
from supervisor._store.errors import StoreLocked
from supervisor._store.sqlite import take_ownership
from supervisor.daemon.metrics import registry_for
from tests.helpers import file_size, sqlite_store, wait_until
from tests.machines import Counter


@pytest.fixture(autouse=True)
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor._store.sqlite, "WATCH_INTERVAL", 0.05)


def stored(path: Path) -> dict[str, int]:
    """The live processes' counts in the file at ``path``, read by a connection of its own."""
    from supervisor._core.codec import decode_record

    with sqlite3.connect(path) as reader:
        rows = reader.execute("SELECT pid, record FROM processes WHERE ended IS NULL").fetchall()
    return {pid: int(decode_record(blob).state.get("n", 0)) for pid, blob in rows}


async def running_host(db: Path, count: int = 5) -> Node:
    host = Node(machines=[Counter], store=str(db))
    await host.start()
    for i in range(count):
        handle = await host.spawn(Counter, pid=f"c{i}", state={"n": 0})
        await handle.cast(i + 1)
        assert i + 1 == await handle.call("get")  # a reply: its checkpoint is durable
    return host


def problem(host: Node) -> str:
    assert host.store is not None
    return host.store.statistics().file_problem


def remove_all(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize(
    "removal",
    [
        lambda db: db.unlink(),
        remove_all,
        lambda db: shutil.rmtree(db.parent),
    ],
    ids=["the-file", "the-file-and-its-wal", "its-directory"],
)
async def test_a_deleted_store_file_is_written_back_and_nothing_is_lost(
    tmp_path: Path, removal: Callable[[Path], None]
) -> None:
    """The store's file deleted under a running host (alone, with its write-ahead files, or
    with its whole directory) is written back from the connection still open on it. The
    processes go on, their later checkpoints land in the file at the store's name, and a new
    host started on that name revives every one of them with its latest state."""
    db = tmp_path / "var" / "s.db"
    db.parent.mkdir()
    with capture_logs() as logs:
        host = await running_host(db)
        removal(db)
        await wait_until(lambda: any(e["event"] == "store_file_restored" for e in logs))
    assert db.exists()
    assert {f"c{i}": i + 1 for i in range(5)} == stored(db)
    handle = host.get("c0")
    await handle.cast(100)
    assert 101 == await handle.call("get")
    assert 101 == stored(db)["c0"]  # written to the file at the name, not the deleted one
    assert host.store is not None
    assert "" == host.store.statistics().file_problem
    await host.shutdown()

    again = Node(machines=[Counter], store=str(db))
    report = await again.start()
    assert 5 == report.revived
    assert 101 == await again.get("c0").call("get")
    assert 5 == await again.get("c4").call("get")
    await again.shutdown()


async def test_a_replaced_store_file_is_left_alone_and_reported_once(tmp_path: Path) -> None:
    """Another file put at the store's name (a backup restored under a running daemon) is
    not touched: it is reported once, as an error naming the problem, and the store's
    statistics, the summary and the status carry it while it lasts."""
    db = tmp_path / "s.db"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as writer:
        writer.execute("CREATE TABLE mine (x)")
        writer.execute("INSERT INTO mine VALUES (42)")
    with capture_logs() as logs:
        host = await running_host(db, count=1)
        os.replace(other, db)
        before = db.read_bytes()
        assert host.store is not None
        await wait_until(lambda: host.store is not None and host.store.statistics().file_problem != "")
        for _ in range(3):  # more checks: still one line
            await sqlite_store(host)._watch()
    assert "store_file_replaced" == host.store.statistics().file_problem
    replaced = [e for e in logs if e["event"] == "store_file_replaced"]
    assert 1 == len(replaced)
    assert "error" == replaced[0]["log_level"]
    assert "stop it and put the right file back" in replaced[0]["note"]
    assert before == db.read_bytes()
    assert "store_file_replaced" == host.summary().store_problem
    from supervisor.cli.commands import _status_lines

    lines = _status_lines(host.summary(), "here", 0.0)
    assert any("store PROBLEM: store_file_replaced" in line for line in lines)
    await host.shutdown()


async def test_a_deleted_lock_file_is_made_and_locked_again(tmp_path: Path) -> None:
    """A lock file removed under a running store is made and locked again, so a second
    statevisor on the same store is still refused, naming this one."""
    db = tmp_path / "s.db"
    with capture_logs() as logs:
        host = await running_host(db, count=1)
        os.unlink(f"{db}.lock")
        await wait_until(lambda: any(e["event"] == "store_lock_restored" for e in logs))
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        await SQLiteStore.open(str(db))
    await host.shutdown()


async def test_a_lock_taken_by_another_after_its_file_went_is_reported(tmp_path: Path) -> None:
    """If another statevisor took the store after its lock file was removed, the running one
    cannot lock it again: it says so (store_lock_lost, naming the holder) and the statistics
    and metrics carry the problem until the other lets go, when it locks it again."""
    db = tmp_path / "s.db"
    with capture_logs() as logs:
        host = await running_host(db, count=1)
        os.unlink(f"{db}.lock")
        intruder = await asyncio.to_thread(take_ownership, str(db))
        try:
            await wait_until(lambda: "store_lock_lost" in problem(host))
            assert 1.0 == registry_for(host).get_sample_value("statevisor_store_file_problems")
        finally:
            os.close(intruder)
        await wait_until(lambda: any(e["event"] == "store_lock_restored" for e in logs))
    lost = [e for e in logs if e["event"] == "store_lock_lost"]
    assert 1 == len(lost)
    assert f"pid {os.getpid()}" in lost[0]["error"]
    assert host.store is not None
    assert "" == host.store.statistics().file_problem
    assert 0.0 == registry_for(host).get_sample_value("statevisor_store_file_problems")
    await host.shutdown()


def test_a_daemon_whose_store_was_deleted_loses_nothing_to_a_sigkill(tmp_path: Path) -> None:
    """A real daemon: its store files removed (`rm var/store.db*`), then SIGKILLed. Before the
    write-back, the next start found no store and began again with new processes, the old ones'
    work gone. Now it revives both declared processes, the same ones, from where they were."""
    from tests.test_daemon import Daemon, wait_for

    def pids() -> dict[str, str]:
        with sqlite3.connect(daemon.store) as reader:
            return dict(reader.execute("SELECT name, pid FROM processes WHERE ended IS NULL").fetchall())

    daemon = Daemon(tmp_path)
    daemon.start()
    try:
        wait_for(lambda: daemon.ticks().get("root/fast", 0) >= 3, timeout=30)
        before = pids()
        remove_all(daemon.store)
        wait_for(lambda: daemon.store.exists(), timeout=60)  # the daemon checks every 10 s
        wait_for(lambda: len(pids()) == 2 and daemon.ticks().get("root/fast", 0) >= 3, timeout=30)
        reached = daemon.ticks()["root/fast"]
    finally:
        assert daemon.child is not None
        daemon.child.send_signal(signal.SIGKILL)
        daemon.child.communicate(timeout=30)
    daemon.start()
    code, logs = daemon.stop()
    assert 0 == code
    assert [2] == [line["revived"] for line in logs if line["event"] == "recovered"]
    assert before == pids()
    assert daemon.ticks()["root/fast"] >= reached


async def fill_and_prune(db: Path, count: int = 200) -> Node:
    """A host whose store held ``count`` ended processes of ~20 KB each, pruned again."""
    host = Node(machines=[Counter], store=str(db), retention=0.0)
    await host.start()
    for i in range(count):
        handle = await host.spawn(Counter, pid=f"big{i}", state={"blob": "x" * 20_000})
        await handle.call("finish")
    assert host.store is not None
    await sqlite_store(host)._watch()
    assert host.store.statistics().size_bytes > count * 20_000
    await wait_until(lambda: all(h.done() for h in [host.get(f"big{i}") for i in range(count)]))
    await asyncio.sleep(0.01)  # retention 0: pruned once the clock has moved past their ends
    assert count == await host.prune()
    return host


async def test_pruned_space_goes_back_to_the_file_system(tmp_path: Path) -> None:
    """A store made now gives the pages that pruning freed back to the file system, a bounded
    amount per housekeeping round: after a burst of processes has ended and been pruned, the
    file shrinks instead of staying at its high-water mark; its size and free space are in
    the statistics (and the metrics)."""
    db = tmp_path / "s.db"
    host = await fill_and_prune(db)
    assert host.store is not None
    peak = host.store.statistics().size_bytes
    await sqlite_store(host)._watch()
    stats = host.store.statistics()
    assert stats.free_bytes == 0
    assert stats.size_bytes < peak / 10
    assert stats.size_bytes == registry_for(host).get_sample_value("statevisor_store_bytes")
    await host.shutdown()
    assert file_size(db) < peak / 10  # on disk too, once the write-ahead log is folded in


async def test_a_store_made_before_keeps_its_free_pages_and_says_how_many(tmp_path: Path) -> None:
    """A store made before incremental auto-vacuum cannot give pages back without a VACUUM:
    it works as before, reuses its free pages, and reports them (free_bytes)."""
    from supervisor._store.schema import SCHEMA, SCHEMA_VERSION

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.executescript(SCHEMA)
        old.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    host = await fill_and_prune(db)
    assert host.store is not None
    await sqlite_store(host)._watch()
    stats = host.store.statistics()
    assert stats.free_bytes > 200 * 20_000 * 0.9
    assert stats.size_bytes >= stats.free_bytes
    await host.shutdown()


def _modes(db: Path) -> dict[str, int]:
    """The permission bits of the files beside ``db`` whose names start with its own."""
    return {p.name: p.stat().st_mode & 0o777 for p in db.parent.iterdir() if p.name.startswith(db.name)}


async def test_a_new_store_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Under a umask of 0 (which would leave files 0666), the database, its -wal and -shm and
    the lock file are created 0600: no other user can read a checkpoint."""
    db = tmp_path / "s.db"
    old = os.umask(0)
    try:
        host = await running_host(db, count=2)
    finally:
        os.umask(old)
    try:
        assert {"s.db": 0o600, "s.db-wal": 0o600, "s.db-shm": 0o600, "s.db.lock": 0o600} == _modes(db)
    finally:
        await host.shutdown()


async def test_a_store_found_open_to_others_is_tightened_at_open_and_said(tmp_path: Path) -> None:
    """A store whose files others can read (made by an older statevisor, or copied in) is
    tightened to 0600 when opened, with a warning naming the files; a store directory others
    can list is reported, and left as it is (it may be a shared directory)."""
    db = tmp_path / "s.db"
    host = await running_host(db, count=1)
    await host.shutdown()
    _open_up(db.parent, 0o644)
    with capture_logs() as logs:
        store = await SQLiteStore.open(str(db))
        await store.close()
    assert all(mode == 0o600 for mode in _modes(db).values()), _modes(db)
    tightened = [entry for entry in logs if entry["event"] == "store_permissions_tightened"]
    assert 1 == len(tightened)
    assert str(db) in tightened[0]["files"]
    assert "warning" == tightened[0]["log_level"]
    opened = [entry for entry in logs if entry["event"] == "store_directory_open"]
    assert [str(tmp_path)] == [entry["directory"] for entry in opened]
    assert 0o755 == _mode(tmp_path)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _open_up(directory: Path, mode: int) -> None:
    """Give every file in ``directory`` ``mode``, and the directory 0755."""
    for path in directory.iterdir():
        path.chmod(mode)
    directory.chmod(0o755)


def test_private_directory_makes_what_it_creates_owner_only_and_leaves_the_rest(tmp_path: Path) -> None:
    """private_directory() makes a missing directory and its missing parents 0700 under any
    umask, and tells (without changing it) whether an existing one is open to others."""
    from supervisor.lowlevel import private_directory

    old = os.umask(0)
    try:
        assert private_directory(tmp_path / "a" / "b") is False
    finally:
        os.umask(old)
    assert (0o700, 0o700) == ((tmp_path / "a").stat().st_mode & 0o777, (tmp_path / "a" / "b").stat().st_mode & 0o777)
    tmp_path.chmod(0o755)
    assert private_directory(tmp_path) is True
    assert 0o755 == tmp_path.stat().st_mode & 0o777
