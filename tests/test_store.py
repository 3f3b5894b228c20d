"""The SQLite checkpoint store: durability, recovery, quarantine, full disk, locks, retention."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import supervisor._supervision.retention
from supervisor import (
    Call,
    Cast,
    Context,
    Input,
    Lifecycle,
    Machine,
    Node,
    ProcessRecord,
    SQLiteStore,
    StoreError,
    decode_record,
    encode_record,
)
from supervisor._store.errors import CheckpointRejected, StoreLocked
from tests.helpers import Gate, Recorder, file_size, sqlite_store, wait_for_snapshot, wait_until
from tests.machines import Counter, Worker


def worker_host(path: Path, executor: Any, **options: Any) -> Node:
    return Node(machines=[Worker, Counter], executors={"work": executor}, store=str(path), **options)


async def leave_workers(path: Path, count: int) -> None:
    """A store holding ``count`` live workers ``w0``…, as a host shut down gracefully leaves it."""
    host = worker_host(path, Recorder())
    await host.start()
    for i in range(count):
        await host.spawn(Worker, pid=f"w{i}")
    await host.shutdown()


async def test_records_round_trip_through_the_codec() -> None:
    """encode_record/decode_record keep every field of a record."""
    from supervisor import TimerRecord, TrackedAction

    record = ProcessRecord(
        pid="p", name="n", kind="k", version=3, phase="main", state={"a": 1, "nested": {"l": [1, b"x"]}},
        pending=(TrackedAction("p:1:0", "work", {"x": 1}, "p"),), timers=(TimerRecord("t", 12.5, None),),
        lifecycle=Lifecycle.WAITING, result=None, error=None, paused=True, meta={"mode": "auto"},
    )  # fmt: skip
    assert record == decode_record(encode_record(record).blob)


async def test_spawned_processes_come_back_after_a_restart_with_their_state(tmp_path: Path) -> None:
    """A host restarted on the same store revives every live process, with its state and id."""
    db = tmp_path / "s.db"
    first = worker_host(db, Recorder())
    await first.start()
    handle = await first.spawn(Worker, pid="w1", name="one")
    await handle.cast(("work", 7))
    await wait_for_snapshot(handle, lambda s: "done" in s.state)
    await first.shutdown()

    second = worker_host(db, Recorder())
    report = await second.start()
    assert 1 == report.revived
    revived = second.find("one")
    assert "w1" == revived.pid
    assert {"w1:2:0": 7} == revived.snapshot().state["done"]
    await second.shutdown()


async def test_graceful_shutdown_leaves_work_running_for_the_next_start(tmp_path: Path) -> None:
    """Shutdown does not cancel external work: the next start re-issues the action under the
    same id (an idempotent executor re-attaches) and the process carries on."""
    db = tmp_path / "s.db"
    gate = Gate()
    first = worker_host(db, gate)
    await first.start()
    handle = await first.spawn(Worker, pid="w")
    await handle.cast(("work", 1))
    await wait_until(lambda: len(gate.started) == 1)
    await first.shutdown(timeout=5)
    assert [] == gate.cancelled  # nothing was asked to stop
    assert not handle.done()

    recorder = Recorder()
    second = worker_host(db, recorder)
    await second.start()
    revived = second.get("w")
    assert not revived.snapshot().paused  # shutdown drains; it must not checkpoint a pause
    snapshot = await wait_for_snapshot(revived, lambda s: "done" in s.state)
    assert [gate.started[0].id] == [a.id for a in recorder.executed]
    assert {gate.started[0].id: 1} == snapshot.state["done"]
    await second.shutdown()


async def test_killed_and_finished_processes_are_not_revived(tmp_path: Path) -> None:
    """Terminal states are durable: a killed or finished process stays ended after a restart."""
    db = tmp_path / "s.db"
    first = worker_host(db, Recorder())
    await first.start()
    killed = await first.spawn(Worker, pid="k")
    finished = await first.spawn(Counter, pid="f")
    await killed.kill("on purpose")
    await finished.call("finish")
    await finished.wait(timeout=5)
    await first.shutdown()
    second = worker_host(db, Recorder())
    assert 0 == (await second.start()).revived
    assert second.store is not None
    assert Lifecycle.KILLED == (await second.store.get("k")).lifecycle  # type: ignore[union-attr]
    assert Lifecycle.FINISHED == (await second.store.get("f")).lifecycle  # type: ignore[union-attr]
    await second.shutdown()


async def test_corrupt_checkpoint_is_quarantined_and_the_others_start(tmp_path: Path) -> None:
    """One unreadable record is quarantined with the reason; every other process comes back."""
    db = tmp_path / "s.db"
    await leave_workers(db, 3)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE processes SET record = ? WHERE pid = 'w1'", (b"\xc1garbage",))

    second = worker_host(db, Recorder())
    report = await second.start()
    assert 2 == report.revived
    assert ["w1"] == [q.pid for q in report.quarantined]
    assert "not msgpack" in report.quarantined[0].reason
    assert {"w0", "w2"} == {h.pid for h in second.list()}
    assert second.store is not None
    kept = await second.store.quarantined()
    assert b"\xc1garbage" == kept[0].record
    await second.shutdown()
    third = worker_host(db, Recorder())
    assert 2 == (await third.start()).revived  # quarantined once, not again
    await third.shutdown()


async def test_unknown_kind_is_quarantined_with_a_clear_reason(tmp_path: Path) -> None:
    """A checkpoint whose process type is no longer registered is quarantined, naming the kind."""
    db = tmp_path / "s.db"
    first = worker_host(db, Recorder())
    await first.start()
    await first.spawn(Counter, pid="c")
    await first.shutdown()
    second = Node(machines=[Worker], store=str(db))
    report = await second.start()
    assert "no process type registered for kind 'counter'" in report.quarantined[0].reason
    await second.shutdown()


async def test_full_disk_pauses_the_process_with_the_reason_and_loses_nothing(tmp_path: Path) -> None:
    """When the database cannot grow (SQLITE_FULL), the process pauses saying why, its action is
    held back; once space is back, resume() writes the checkpoint and the work goes on."""
    db = tmp_path / "s.db"
    recorder = Recorder()
    host = worker_host(db, recorder)
    host.runtime.store_retry_delays = (0.001,)
    await host.start()
    handle = await host.spawn(Worker, pid="w", state={"pad": ""})
    assert host.store is not None
    page_count = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    sqlite_store(host).max_page_count = page_count
    await handle.cast(("work", "x" * 200_000))
    held = await wait_for_snapshot(handle, lambda s: s.paused)
    assert "checkpoint failed" in (held.pause_reason or "")
    assert "full" in (held.pause_reason or "")
    assert [] == recorder.executed  # write-ahead: not handed out before it is durable
    sqlite_store(host).max_page_count = 1_000_000
    await handle.resume()
    done = await wait_for_snapshot(handle, lambda s: "done" in s.state)
    assert 1 == len(recorder.executed)
    assert done.pause_reason is None
    await host.shutdown()


async def test_a_second_host_on_the_same_store_is_refused(tmp_path: Path) -> None:
    """Only one statevisor owns a store: the second gets StoreLocked naming the holder's pid."""
    import os

    db = tmp_path / "s.db"
    first = worker_host(db, Recorder())
    await first.start()
    with pytest.raises(StoreLocked, match=f"pid {os.getpid()}"):
        await worker_host(db, Recorder()).start()
    await first.shutdown()
    again = worker_host(db, Recorder())
    await again.start()
    await again.shutdown()


async def test_a_foreign_writer_holding_the_lock_pauses_processes_until_released(tmp_path: Path) -> None:
    """A writer that keeps SQLite locked past the busy timeout yields StoreLocked; the process
    pauses with that reason and carries on after the lock is released and it is resumed."""
    db = tmp_path / "s.db"
    recorder = Recorder()
    host = Node(machines=[Worker], executors={"work": recorder}, store=str(db), busy_timeout=0.05)
    host.runtime.store_retry_delays = ()
    await host.start()
    handle = await host.spawn(Worker, pid="w")
    foreign = sqlite3.connect(db, isolation_level=None)
    foreign.execute("BEGIN EXCLUSIVE")
    await handle.cast(("work", 1))
    held = await wait_for_snapshot(handle, lambda s: s.paused)
    assert "locked by another writer" in (held.pause_reason or "")
    foreign.execute("COMMIT")
    foreign.close()
    await handle.resume()
    await wait_for_snapshot(handle, lambda s: "done" in s.state)
    await host.shutdown()


async def test_an_effect_free_commit_whose_group_commit_failed_is_written_once_the_store_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group commit of effect-free changes (nobody waits for it) that meets a locked store is
    owed, logged once, and written when a retry finds the store free: the committed state of a
    process that goes idle afterwards must not stay unwritten until its next transition, for a
    crash hours later to lose."""
    from structlog.testing import capture_logs

    import supervisor._store.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "DIRTY_RETRY_SECONDS", 0.05)
    db = tmp_path / "s.db"
    host = Node(machines=[Counter], store=str(db), busy_timeout=0.05)
    await host.start()
    assert host.store is not None
    handle = await host.spawn(Counter, pid="c", state={"n": 0})
    await handle.call("get")

    def stored_n() -> int:
        with sqlite3.connect(db) as reader:
            blob = reader.execute("SELECT record FROM processes WHERE pid = 'c'").fetchone()[0]
        return int(decode_record(blob).state["n"])

    foreign = sqlite3.connect(db, isolation_level=None)
    foreign.execute("BEGIN EXCLUSIVE")
    try:
        with capture_logs() as logged:
            await handle.cast(5)  # effect-free: only the next group commit writes it
            await wait_until(lambda: any(e["event"] == "checkpoints_owed" for e in logged))
            foreign.execute("COMMIT")
            await wait_until(lambda: stored_n() == 5)
            await wait_until(lambda: any(e["event"] == "checkpoints_caught_up" for e in logged))
        owed = next(e for e in logged if e["event"] == "checkpoints_owed")
        assert 1 == owed["processes"]
        assert "locked" in owed["error"]
        assert 1 == len([e for e in logged if e["event"] == "checkpoints_owed"])  # once per outage
    finally:
        foreign.close()
        await host.shutdown()


async def test_store_errors_name_the_store(tmp_path: Path) -> None:
    """Opening a store in a missing directory is a StoreError naming the path."""
    with pytest.raises(StoreError, match="does not exist"):
        await SQLiteStore.open(str(tmp_path / "missing" / "s.db"))


async def test_a_record_that_would_not_load_back_is_rejected_not_written(tmp_path: Path) -> None:
    """With verify_writes the store decodes what it writes; a record that would not load back
    is refused with CheckpointRejected and nothing is written."""
    store = await SQLiteStore.open(str(tmp_path / "s.db"), verify_writes=True)
    bad = ProcessRecord(pid="p", name="p", kind="k", version=1, phase="main", state=[1])  # type: ignore[arg-type]
    with pytest.raises(CheckpointRejected, match="state is not a map"):
        await store.save_record(bad)
    assert await store.get("p") is None
    await store.close()


async def test_retention_prunes_only_old_terminal_records(tmp_path: Path) -> None:
    """prune() deletes terminal records older than the retention; live and recent ones stay."""
    db = tmp_path / "s.db"
    host = worker_host(db, Recorder(), retention=0.0)
    await host.start()
    live = await host.spawn(Worker, pid="live")
    ended = await host.spawn(Counter, pid="ended")
    await ended.call("finish")
    await ended.wait(timeout=5)
    await ended._process.wait_persisted(5)
    await asyncio.sleep(0.01)
    assert 1 == await host.prune()
    assert host.store is not None
    assert await host.store.get("ended") is None
    assert await host.store.get("live") is not None
    assert not live.done()
    await host.shutdown()


async def test_the_host_prunes_on_its_own_while_it_runs(tmp_path: Path) -> None:
    """A started host prunes by itself, every tenth of its retention (1 s at the least): an
    ended process's checkpoint goes without anyone calling prune()."""
    db = tmp_path / "s.db"
    host = worker_host(db, Recorder(), retention=0.0)
    await host.start()
    ended = await host.spawn(Counter, pid="ended")
    await ended.call("finish")
    await ended._process.wait_persisted(5)
    assert 1 == await ended_rows(db)

    async with asyncio.timeout(5):
        while await ended_rows(db):  # noqa: ASYNC110 - a fact of the file, polled
            await asyncio.sleep(0.05)
    await host.shutdown()


async def ended_rows(db: Path) -> int:
    def count() -> int:
        with contextlib.closing(sqlite3.connect(db)) as reader:
            return int(reader.execute("SELECT count(*) FROM processes WHERE ended IS NOT NULL").fetchone()[0])

    return await asyncio.to_thread(count)


async def test_periodic_pruning_outlives_a_failed_prune() -> None:
    """A prune that fails (store busy or full) is logged as prune_failed and tried again at
    the next interval; the periodic task does not die of it."""
    from structlog.testing import capture_logs

    calls = 0

    async def prune() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreLocked("s.db", "locked by another writer")
        return 0

    with capture_logs() as logs:
        task = asyncio.create_task(supervisor._supervision.retention.prune_periodically(prune, 0.001))
        await wait_until(lambda: calls >= 3)
        task.cancel()
    assert ["prune_failed"] == [e["event"] for e in logs]
    assert "locked by another writer" in logs[0]["error"]


def test_the_prune_interval_is_a_tenth_of_the_retention_within_bounds() -> None:
    """Pruning runs every tenth of the retention, never more often than each second nor less
    often than each hour: a record outlives its retention by 10% at most."""
    interval = supervisor._supervision.retention.prune_interval
    assert 1.0 == interval(0.0)
    assert 60.0 == interval(600.0)
    assert 3600.0 == interval(7 * 86_400.0)


async def test_prune_goes_in_batches_oldest_first_and_deletes_a_corrupt_ended_record_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store hands out at most ``limit`` expired records per call, oldest first, with the
    final records of those that decode; a record that does not decode is deleted all the same,
    not kept forever, and a live process's record is never deleted. The host goes a batch at a
    time until one comes back short, so its count covers every batch."""
    db = tmp_path / "s.db"
    host = worker_host(db, Recorder(), retention=0.0)
    await host.start()
    for i in range(10):
        handle = await host.spawn(Counter, pid=f"c{i}")
        await handle.call("finish")
        await handle.wait(timeout=5)
        await handle._process.wait_persisted(5)
    live = await host.spawn(Counter, pid="live")
    await live._process.wait_persisted(5)
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE processes SET record = ? WHERE pid = 'c0'", (b"\xc1garbage",))
    await asyncio.sleep(0.01)  # retention 0: pruned once the clock has moved past their ends
    store = host.store
    assert store is not None

    expired = await store.expired(1e12, limit=4)
    assert ["c0", "c1", "c2", "c3"] == expired.pids
    assert ["c1", "c2", "c3"] == [r.pid for r in expired.records]  # c0 does not decode
    assert 4 == await store.delete_ended([*expired.pids, "live"])
    assert await store.get("live") is not None

    monkeypatch.setattr(supervisor._supervision.retention, "PRUNE_BATCH", 4)
    assert 6 == await host.prune()  # 4, then 2: the rest, in one call of the host
    assert all([await store.get(f"c{i}") is None for i in range(10)])
    assert await store.get("live") is not None
    await host.shutdown()


class FileOwner(Counter):
    """Owns the file its state names; a state naming none makes its hook raise."""

    def owned_logs(self, state: dict[str, Any]) -> list[str]:
        return [state["file"]]


async def test_a_raising_owned_logs_hook_stops_neither_pruning_nor_the_other_deletions(tmp_path: Path) -> None:
    """Pruning asks each pruned process's machine for its own logs: a hook that raises for one
    process is logged and skipped; that record is pruned all the same, and the other process's
    file is deleted."""
    host = Node(machines=[FileOwner], store=str(tmp_path / "s.db"), retention=0.0)
    await host.start()
    owned = tmp_path / "owned.log"
    owned.write_text("x")
    for pid, state in (("good", {"file": str(owned)}), ("bad", {})):
        handle = await host.spawn(FileOwner, state, pid=pid)
        await handle.call("finish")
        await handle.wait(timeout=5)
        await handle._process.wait_persisted(5)
    await asyncio.sleep(0.01)  # retention 0: pruned once the clock has moved past their ends
    assert 2 == await host.prune()
    assert not owned.exists()
    await host.shutdown()


async def test_a_prune_cut_short_leaves_records_without_files_never_files_without_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruning deletes a process's files before its record: when the record's deletion fails
    (as a crash between the two would leave it), the record is still there and the next prune
    takes it; no file is left that no record names."""
    host = Node(machines=[FileOwner], store=str(tmp_path / "s.db"), retention=0.0)
    await host.start()
    owned = tmp_path / "owned.log"
    owned.write_text("x")
    handle = await host.spawn(FileOwner, {"file": str(owned)}, pid="p")
    await handle.call("finish")
    await handle.wait(timeout=5)
    await handle._process.wait_persisted(5)
    await asyncio.sleep(0.01)  # retention 0: pruned once the clock has moved past its end
    store = host.store
    assert store is not None

    async def cut_short(pids: list[str]) -> int:
        raise StoreError(store.path, "cut short")

    with monkeypatch.context() as patch:
        patch.setattr(store, "delete_ended", cut_short)
        with pytest.raises(StoreError):
            await host.prune()
    assert not owned.exists()
    assert await store.get("p") is not None
    assert 1 == await host.prune()
    assert await store.get("p") is None
    await host.shutdown()


async def test_a_failed_periodic_prune_is_retried_not_the_end_of_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host prunes on its own every retention/10 (at least 1 s): a prune that fails (the
    store locked by another writer for a while) is logged and tried again at the next
    interval, instead of ending retention for the rest of the daemon's life."""
    host = worker_host(tmp_path / "s.db", Recorder(), retention=0.0)
    await host.start()
    store = host.store
    assert store is not None
    failures: list[float] = []
    expired = store.expired

    async def locked_once(ended_before: float, *, limit: int = 1000) -> Any:
        if not failures:
            failures.append(ended_before)
            raise StoreLocked(store.path, "locked by another writer")
        return await expired(ended_before, limit=limit)

    monkeypatch.setattr(store, "expired", locked_once)
    handle = await host.spawn(Counter, pid="ended")
    await handle.call("finish")
    await handle.wait(timeout=5)
    await handle._process.wait_persisted(5)
    async with asyncio.timeout(10):  # the pruner's interval here is 1 s: two rounds needed
        while not failures or await store.get("ended") is not None:  # noqa: ASYNC110 - a fact with no event
            await asyncio.sleep(0.05)
    assert 1 == len(failures)
    assert await store.get("ended") is None
    await host.shutdown()


async def test_group_commit_batches_concurrent_checkpoints(tmp_path: Path) -> None:
    """Checkpoints of many processes that commit together go into few transactions, and the
    checkpoints of one process's calls handled back to back coalesce into its latest one."""
    host = Node(machines=[Counter], store=str(tmp_path / "s.db"))
    await host.start()
    handles = [await host.spawn(Counter, pid=f"c{i}") for i in range(200)]
    assert host.store is not None
    before = host.store.statistics()
    await asyncio.gather(*(h.call("get") for h in handles for _ in range(3)))
    after = host.store.statistics()
    records = after.records - before.records
    assert 200 <= records < 200 * 3
    assert after.batches - before.batches < 200 / 5
    await host.shutdown()


async def test_a_reply_is_sent_only_once_its_state_is_durable(tmp_path: Path) -> None:
    """A commit whose effects leave the process (here a reply) waits for its checkpoint: when the
    caller has the reply, the store already holds that version."""
    host = Node(machines=[Counter], store=str(tmp_path / "s.db"))
    await host.start()
    handle = await host.spawn(Counter, pid="c")
    await handle.cast(5)
    assert 5 == await handle.call("get")
    assert host.store is not None
    stored = await host.store.get("c")
    assert stored is not None
    assert handle.snapshot().version == stored.version
    assert {"n": 5} == stored.state
    await host.shutdown()


async def test_effect_free_commits_reach_the_store_without_waiting(tmp_path: Path) -> None:
    """A commit with no outside effect (a cast that only changes state) does not wait for the
    disk; the next group commit writes the process's latest state."""
    host = Node(machines=[Counter], store=str(tmp_path / "s.db"))
    await host.start()
    handle = await host.spawn(Counter, pid="c")
    for _ in range(10):
        await handle.cast(1)
    assert host.store is not None
    store = host.store

    async def stored_n() -> int:
        record = await store.get("c")
        return -1 if record is None else int(record.state.get("n", 0))

    async with asyncio.timeout(10):
        while await stored_n() != 10:  # noqa: ASYNC110 - the file raises no event
            await asyncio.sleep(0.005)
    assert not handle._process.dirty
    await host.shutdown()


async def test_listing_filters_by_kind_lifecycle_and_paused(tmp_path: Path) -> None:
    """Node.list filters live processes by kind, lifecycle and the paused flag."""
    gate = Gate()
    host = worker_host(tmp_path / "s.db", gate)
    await host.start()
    w = await host.spawn(Worker, pid="w")
    c = await host.spawn(Counter, pid="c")
    await w.cast(("work", 1))
    await wait_for_snapshot(w, lambda s: s.lifecycle is Lifecycle.WAITING)
    await c.pause()
    assert [w] == host.list(kind="worker")
    assert [w] == host.list(lifecycle=Lifecycle.WAITING)
    assert [c] == host.list(paused=True)
    assert {w, c} == set(host.list())
    await host.stop("c")
    assert [w] == host.list()
    gate.release.set()
    await host.shutdown()


async def test_a_process_pipelines_checkpoints_but_no_effect_leaves_before_its_own(tmp_path: Path) -> None:
    """A process handles its next inputs while a checkpoint is in flight (many of its
    transitions share one group commit), yet every action, when its executor starts it, is
    already in the durable record, and the actions start in the order they were issued."""
    db = tmp_path / "s.db"
    seen: list[tuple[str, bool]] = []
    host: Node

    class Checking:
        idempotent = False

        async def execute(self, action: Any) -> Any:
            # Read the file on a connection of our own, before any await: what is committed
            # now (the store's own reads queue behind its writes, so they would always agree).
            with sqlite3.connect(db) as reader:
                row = reader.execute("SELECT record FROM processes WHERE pid = 'w'").fetchone()
            record = None if row is None else decode_record(row[0])
            durable = record is not None and (
                action.id in {a.id for a in record.pending} or action.id in record.state.get("done", {})
            )
            seen.append((action.id, durable))
            return action.payload

        async def cancel(self, action: Any) -> None:
            return None

    host = worker_host(db, Checking())
    await host.start()
    handle = await host.spawn(Worker, pid="w")
    assert host.store is not None
    batches = host.store.statistics().batches
    for n in range(50):
        handle.try_cast(("work", n))
    done = await wait_for_snapshot(handle, lambda s: len(s.state.get("done", {})) == 50)
    assert [(i, True) for i in done.state["issued"]] == seen
    assert host.store.statistics().batches - batches < 50, "every transition waited for its own commit"
    await host.shutdown()


class SelfPausing(Worker):
    """Pauses itself on "stop" with a reason; counts the RESUMED events resume() delivers."""

    kind = "selfpausing"

    async def transition(self, state: dict[str, Any], input: Any, ctx: Any) -> None:
        from supervisor import Cast, Control, ControlEvent

        match input:
            case Cast("stop"):
                ctx.pause("waiting for the operator (resume to retry)")
            case Control(event=ControlEvent.RESUMED):
                state["resumed"] = state.get("resumed", 0) + 1
            case _:
                await super().transition(state, input, ctx)


def stored(db: Path, pid: str) -> ProcessRecord:
    with sqlite3.connect(db) as connection:
        (blob,) = connection.execute("SELECT record FROM processes WHERE pid = ?", (pid,)).fetchone()
    return decode_record(blob)


async def test_pauses_are_durable_and_a_self_pause_keeps_its_reason_across_a_restart(tmp_path: Path) -> None:
    """An operator's pause and a process's own pause (with its reason) reach the store without
    any transition; a host restarted on the store brings both back paused, the self-paused one
    with its reason, and resuming it delivers RESUMED to the machine; a resume is durable too."""
    db = tmp_path / "s.db"
    first = Node(machines=[Worker, SelfPausing], executors={"work": Recorder()}, store=str(db))
    await first.start()
    operator = await first.spawn(Worker, pid="op")
    itself = await first.spawn(SelfPausing, pid="self")
    await operator.pause()
    await itself.cast("stop")
    await wait_until(lambda: stored(db, "op").paused and stored(db, "self").paused)
    assert (None, "waiting for the operator (resume to retry)") == (
        stored(db, "op").pause_reason, stored(db, "self").pause_reason
    )  # fmt: skip
    await first.shutdown()

    second = Node(machines=[Worker, SelfPausing], executors={"work": Recorder()}, store=str(db))
    await second.start()
    op, me = second.find("op"), second.find("self")
    assert (True, None) == (op.snapshot().paused, op.snapshot().pause_reason)
    assert (True, "waiting for the operator (resume to retry)") == (me.snapshot().paused, me.snapshot().pause_reason)
    await me.resume()
    await wait_for_snapshot(me, lambda s: s.state.get("resumed") == 1)
    await op.resume()
    await wait_until(lambda: not stored(db, "op").paused and not stored(db, "self").paused)
    await second.shutdown()


async def test_recovery_leaves_the_collector_on_and_nothing_frozen_and_another_freeze_alone(tmp_path: Path) -> None:
    """Recovery pauses the garbage collector and hands its objects to the oldest generation;
    afterwards the collector is on again, nothing of ours stays frozen (frozen cycles would
    never be collected), and objects someone else froze stay frozen."""
    db = tmp_path / "s.db"
    await leave_workers(db, 50)
    second = worker_host(db, Recorder())
    assert 50 == (await second.start()).revived
    assert gc.isenabled()
    assert 0 == gc.get_freeze_count()
    await second.shutdown()

    gc.freeze()  # someone else's freeze
    try:
        frozen = gc.get_freeze_count()
        third = worker_host(db, Recorder())
        assert 50 == (await third.start()).revived
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0.9 * frozen  # a few frozen objects die meanwhile; unfrozen: 0
        await third.shutdown()
    finally:
        gc.unfreeze()


async def test_the_write_ahead_log_is_cut_back_after_a_burst(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite keeps its write-ahead log file at its high-water mark; the store caps what stays
    on disk once a burst is checkpointed (WAL_SIZE_LIMIT, small here), so a burst of large
    checkpoints does not leave a log file that size for as long as the daemon runs."""
    import supervisor._store.sqlite

    monkeypatch.setattr(supervisor._store.sqlite, "WAL_SIZE_LIMIT", 1 << 20)
    path = tmp_path / "s.db"
    store = await SQLiteStore.open(str(path))
    try:
        big = {"blob": "x" * 60_000}
        burst = [
            ProcessRecord(pid=f"p{i}", name=f"p{i}", kind="counter", version=1, phase="main", state=big)
            for i in range(100)
        ]  # fmt: skip
        await asyncio.gather(*(store.save_record(r) for r in burst))
        wal = Path(f"{path}-wal")
        assert file_size(wal) > 4 << 20
        small = ProcessRecord(pid="small", name="small", kind="counter", version=1, phase="main", state={"n": 1})
        for _ in range(20):  # the next transactions after the burst's checkpoint reset the log
            await store.save_record(small)
            if file_size(wal) <= 1 << 20:
                break
        assert file_size(wal) <= 1 << 20
        assert file_size(path) > 5 << 20  # the burst's rows themselves are all kept
    finally:
        await store.close()


class Stubborn:
    """An executor whose action ignores cancellation until released (a backend that hangs)."""

    idempotent = True

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[Any] = []

    async def execute(self, action: Any) -> Any:
        self.started.append(action)
        while True:
            try:
                await self.release.wait()
                return "done"
            except asyncio.CancelledError:
                continue

    async def cancel(self, action: Any) -> None:
        return None


async def test_shutdown_keeps_to_its_own_timeout_when_a_task_will_not_stop(tmp_path: Path) -> None:
    """A shutdown's bound is its timeout, whatever kill_grace is: an action task that ignores
    its cancellation is abandoned (counted, logged) once the shutdown's time is up. Every
    process's tasks are waited for in one wait bounded by what is left of the timeout, where
    each process used to wait up to kill_grace on its own (here 1,000 s)."""
    stubborn = Stubborn()
    host = Node(machines=[Worker], executors={"work": stubborn}, store=str(tmp_path / "s.db"), kill_grace=1000.0)
    await host.start()
    handles = [await host.spawn(Worker, pid=f"w{i}") for i in range(3)]
    for handle in handles:
        await handle.cast(("work", 1))
    await wait_until(lambda: len(stubborn.started) == 3)
    await asyncio.wait_for(host.shutdown(timeout=0.5), 30)
    assert 3 == host.runtime.statistics().abandoned_tasks
    assert 0 == len(host.runtime)
    stubborn.release.set()
    await wait_until(lambda: host.runtime.statistics().abandoned_tasks == 0)


class Hoarder(Machine[dict[str, Any]]):
    """Keeps every message it is cast in its state (the mistake the warning is about)."""

    kind = "hoarder"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast(str(text)):
                state["history"] = state.get("history", "") + text
            case Call("size"):
                ctx.reply(input, len(state.get("history", "")))


async def test_a_process_whose_checkpoints_grow_large_is_warned_about_each_time_they_quadruple(
    tmp_path: Path,
) -> None:
    """A state that keeps growing (history kept in it) makes every checkpoint write it whole:
    past 1 MiB the store warns, naming the process and the size, then again only when the size
    has quadrupled (at 2 MB, not at 5 MB, again at 9 MB); the statistics keep the largest."""
    from structlog.testing import capture_logs

    host = Node(machines=[Hoarder], store=str(tmp_path / "s.db"))
    await host.start()
    assert host.store is not None
    handle = await host.spawn(Hoarder, pid="grows")
    try:
        with capture_logs() as logged:
            for megabytes in (0.5, 2, 5, 9):
                await handle.cast("x" * (int(megabytes * 1_000_000) - await handle.call("size")))
                await handle.call("size")  # a reply: the state it answers from is durable first
        warned = [e for e in logged if e["event"] == "large_checkpoint"]
        assert [2, 9] == [e["bytes"] // 1_000_000 for e in warned]
        assert {("grows", "hoarder")} == {(e["pid"], e["kind"]) for e in warned}
        assert host.store.statistics().largest_record >= 9_000_000
        await handle.kill("enough")
        await handle._process.wait_persisted(5)
        assert "grows" not in sqlite_store(host)._large  # nothing kept for an ended process
    finally:
        await host.shutdown()


async def test_a_shutdown_is_bounded_when_the_store_writer_hangs_and_says_so(tmp_path: Path) -> None:
    """A store whose writer hangs (a disk that stopped answering; here its write blocks) does
    not hold a shutdown past its bound nor make it raise: shutdown returns False within its
    timeout and logs store_not_closed naming the store."""
    import threading

    from structlog.testing import capture_logs

    host = Node(machines=[Counter], store=str(tmp_path / "s.db"), kill_grace=0.5)
    await host.start()
    assert host.store is not None
    handle = await host.spawn(Counter, {"n": 0})
    await handle.call("get")
    disk = threading.Event()
    write = sqlite_store(host)._write

    def hung(*args: Any) -> None:
        disk.wait(timeout=60)  # released at the end of the test
        write(*args)

    sqlite_store(host)._write = hung  # type: ignore[method-assign,assignment]
    await handle.cast(1)  # effect-free: its group commit is what hangs
    try:
        with capture_logs() as logged:
            clean = await asyncio.wait_for(host.shutdown(timeout=1.0), 30)
        assert clean is False
        (event,) = [e for e in logged if e["event"] == "store_not_closed"]
        assert str(tmp_path / "s.db") == event["store"]
    finally:
        disk.set()
