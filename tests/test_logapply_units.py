"""The log-apply kind without NATS: the embedded SQLite log, snapshots, replica recovery,
atomic apply, error policies, clear errors for bad entries, settings and gaps, and the
simulated log (duplicates, holes, lost acknowledgements, crashes) with invariants per step, and
log-apply processes inside ``Simulation`` on its simulated executors."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from processes.logapply import (
    AckLost,
    Applier,
    KeyValue,
    LogApply,
    LogApplyClient,
    Replica,
    SimulatedLog,
    SimulatedLogApply,
    SnapshotStore,
    SQLiteEntryLog,
    decode_entry,
    encode_entry,
    executors,
    state_hash,
)
from processes.logapply._settings import parse
from processes.logapply.errors import ApplyFailed, EntryLogError, EntryRejected, LogGap, SnapshotError
from supervisor import AtomicValue, Node, SettingsError, Simulation, StateMutationError
from tests.helpers import file_size


def kv_replica(directory: Path, **options: Any) -> Replica:
    return Replica(
        "m", KeyValue(), SQLiteEntryLog(directory / "log.db"), SnapshotStore(directory / "snapshots"), **options
    )


async def test_sqlite_log_appends_in_order_and_deduplicates_message_ids(tmp_path: Path) -> None:
    """Indexes start at 1 without holes; an id appended again returns its first index and adds
    nothing; bounds and follow agree with what was appended."""
    log = SQLiteEntryLog(tmp_path / "log.db")
    await log.open()
    first = await asyncio.gather(*(log.append(f"e{i}".encode(), f"id{i}") for i in range(100)))
    assert list(range(1, 101)) == first
    assert 7 == await log.append(b"again", "id6")
    assert (1, 100) == await log.bounds()
    async for batch in log.follow(95):
        assert [(i, f"e{i - 1}".encode()) for i in range(96, 101)] == batch
        break
    await log.close()


async def test_sqlite_log_cuts_its_write_ahead_log_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of proposals grows the log's write-ahead file; once the burst is checkpointed it
    is cut back to WAL_SIZE_LIMIT (small here) instead of staying that size for good."""
    from processes.logapply import _sqlite_log

    monkeypatch.setattr(_sqlite_log, "WAL_SIZE_LIMIT", 1 << 20)
    log = SQLiteEntryLog(tmp_path / "log.db")
    await log.open()
    try:
        await asyncio.gather(*(log.append(b"x" * 50_000) for _ in range(120)))
        wal = tmp_path / "log.db-wal"
        assert file_size(wal) > 4 << 20
        for _ in range(20):  # the transactions after the burst's checkpoint reset the file
            await log.append(b"small")
            if file_size(wal) <= 1 << 20:
                break
        assert file_size(wal) <= 1 << 20
        assert (1, log.appended) == await log.bounds()  # every entry kept, burst and all
    finally:
        await log.close()


async def test_sqlite_log_batches_with_and_without_message_ids_share_one_index_sequence(tmp_path: Path) -> None:
    """A batch of plain appends and a batch mixing ids (one repeated inside the batch) and plain
    appends are written by different paths; indexes continue across them without holes, the
    repeated id answers with its first index, and the rows read back after a reopen are exact."""
    log = SQLiteEntryLog(tmp_path / "log.db")
    await log.open()
    plain = await asyncio.gather(*(log.append(f"p{i}".encode()) for i in range(5)))
    mixed = await asyncio.gather(
        log.append(b"a", "id-a"), log.append(b"b"), log.append(b"a-again", "id-a"), log.append(b"c", "id-c")
    )
    after = await asyncio.gather(*(log.append(f"q{i}".encode()) for i in range(3)))
    assert [1, 2, 3, 4, 5] == plain
    assert [6, 7, 6, 8] == list(mixed)
    assert [9, 10, 11] == after
    # Batches over one multi-row statement's worth of rows (whole chunks plus a remainder).
    large = await asyncio.gather(*(log.append(f"r{i}".encode()) for i in range(600)))
    large_ids = await asyncio.gather(*(log.append(f"s{i}".encode(), f"id-s{i}") for i in range(300)))
    assert list(range(12, 612)) == large
    assert list(range(612, 912)) == large_ids
    assert log.appended == 911
    await log.close()
    again = SQLiteEntryLog(tmp_path / "log.db")
    await again.open()
    async for batch in again.follow(0):
        expected = [f"p{i}".encode() for i in range(5)] + [b"a", b"b", b"c"] + [f"q{i}".encode() for i in range(3)]
        expected += [f"r{i}".encode() for i in range(600)] + [f"s{i}".encode() for i in range(300)]
        assert list(enumerate(expected, start=1)) == batch
        break
    assert 612 == await again.append(b"again", "id-s0")  # the id is still known: its first index
    await again.close()


async def test_sqlite_log_is_one_writer_and_survives_reopen_with_compaction(tmp_path: Path) -> None:
    """A second open of the same file is refused with a clear error; after compaction and a
    reopen, bounds say which entries remain and follow starts at the first of them."""
    log = SQLiteEntryLog(tmp_path / "log.db")
    await log.open()
    for i in range(10):
        await log.append(bytes([i]))
    other = SQLiteEntryLog(tmp_path / "log.db")
    with pytest.raises(EntryLogError, match="another process has this log open"):
        await other.open()
    await log.compact(6)
    await log.close()
    again = SQLiteEntryLog(tmp_path / "log.db")
    await again.open()
    assert (7, 10) == await again.bounds()
    async for batch in again.follow(0):
        assert [7, 8, 9, 10] == [i for i, _ in batch]
        break
    assert 11 == await again.append(b"x")
    await again.close()


def test_atomic_value_rolls_back_a_raising_change() -> None:
    """A change that raises leaves the value exactly as before (nested containers too); changes
    outside change() are refused."""
    value = AtomicValue({"a": {"b": [1, 2]}, "n": 1})

    def half_done(root: dict[Any, Any]) -> None:
        root["a"]["b"].append(3)
        root["n"] = 2
        del root["a"]
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        value.apply(half_done)
    with pytest.raises(KeyError), value.change() as root:
        root.pop("missing")
    assert {"a": {"b": [1, 2]}, "n": 1} == value.root
    with pytest.raises(StateMutationError):
        value.root["n"] = 5
    assert 3 == value.apply(lambda root, k: root.setdefault(k, 3), "m")


def test_entries_that_are_not_msgpack_are_rejected_with_where() -> None:
    """encode_entry names what is wrong: a set is not a msgpack value."""
    with pytest.raises(EntryRejected, match="entry: set is neither bytes nor a msgpack value"):
        encode_entry({1, 2})
    assert encode_entry(b"raw") != encode_entry("raw")


def test_settings_errors_name_the_key() -> None:
    """Unknown apps, logs, policies and missing NATS servers are refused naming the setting."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"app": "nope"}, "app"),
        ({"app": "kv", "log": "kafka"}, "log"),
        ({"app": "kv", "log": "jetstream"}, "servers"),
        ({"app": "kv", "on_error": "ignore"}, "on_error"),
        ({"app": "kv", "snapshot_every": 0}, "snapshot_every"),
        ({"app": "kv", "stream": "a.b"}, "stream"),
        ({"app": "kv", "replicas": 7}, "replicas"),
        ({"app": "kv", "lanes": 65}, "lanes"),
        ({"app": "kv", "lanes": 0}, "lanes"),
        ({"app": "kv", "colour": "red"}, "colour"),
    ]
    for settings, key in cases:
        with pytest.raises(SettingsError) as caught:
            parse(settings)
        assert key == caught.value.key, settings


async def test_a_raising_apply_changes_nothing_and_is_that_entrys_result(tmp_path: Path) -> None:
    """on_error = skip: the entry's outcome is the error, the state is as before it, and the
    machine goes on with the next entry."""
    replica = kv_replica(tmp_path)
    await replica.start()
    await replica.propose({"op": "set", "key": "a", "value": 1})
    before = replica.status()["hash"]
    index, (ok, error) = await replica.propose({"op": "add", "key": "a", "by": "x"})
    assert (2, False) == (index, ok)
    assert "TypeError" in error
    assert before == replica.status()["hash"]
    assert (3, (True, 1)) == await replica.propose({"op": "add", "key": "a", "by": 1})
    assert 2 == await replica.read("a")
    await replica.close()


class Strict(Applier):
    name = "strict-test"

    def apply(self, state: dict[Any, Any], entry: Any) -> Any:
        state["seen"] = state.get("seen", 0) + 1
        if entry == "poison":
            raise ValueError("poison entry")
        return state["seen"]


async def test_on_error_stop_halts_the_replica_at_that_entry(tmp_path: Path) -> None:
    """on_error = stop: the replica stops at the raising entry (state without it) and every
    waiting proposer hears why; later entries are not applied."""
    replica = Replica("m", Strict(), SQLiteEntryLog(tmp_path / "log.db"), on_error="stop")
    await replica.start()
    assert (1, (True, 1)) == await replica.propose("ok")
    with pytest.raises(EntryLogError, match="stopped at entry 2: apply raised ValueError: poison entry"):
        await replica.propose("poison")
    assert 1 == replica.applied
    assert 1 == replica.value.root["seen"]
    await replica.close()


async def test_recovery_is_the_latest_snapshot_plus_replay(tmp_path: Path) -> None:
    """Snapshots every 50 entries; after a restart the replica has the same state hash and
    applied index, loaded from the newest snapshot and replaying only the entries after it;
    the log was compacted behind the previous snapshot."""
    replica = kv_replica(tmp_path, snapshot_every=50)
    await replica.start()
    for i in range(230):
        await replica.propose({"op": "add", "key": f"k{i % 7}", "by": i})
    expected = replica.status()
    await replica.close()
    assert [200, 150, 100] == SnapshotStore(tmp_path / "snapshots").indexes()
    again = kv_replica(tmp_path, snapshot_every=50)
    await again.start()
    assert (230, expected["hash"]) == (again.applied, again.status()["hash"])
    assert 200 == again.snapshot_index
    assert (151, 230) == await again.log.bounds()
    await again.close()


async def test_a_corrupt_snapshot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    """The newest snapshot is damaged: recovery reports it, loads the previous one and replays
    from there to the same state."""
    replica = kv_replica(tmp_path, snapshot_every=40)
    await replica.start()
    for i in range(100):
        await replica.propose({"op": "set", "key": i % 13, "value": i})
    expected = replica.status()["hash"]
    await replica.close()
    store = SnapshotStore(tmp_path / "snapshots")
    newest = store.path(store.indexes()[0])
    blob = bytearray(newest.read_bytes())
    blob[-5] ^= 0xFF
    newest.write_bytes(bytes(blob))
    again = kv_replica(tmp_path, snapshot_every=1000)
    await again.start()
    assert expected == again.status()["hash"]
    assert 40 == again.snapshot_index
    assert ["snapshot 80: checksum mismatch (torn or corrupted)"] == again.rejected_snapshots
    await again.close()


async def test_a_gap_in_the_log_is_a_clear_error(tmp_path: Path) -> None:
    """Entries compacted away with no snapshot covering them: the replica refuses to start,
    naming the missing indexes (never applying on from a later entry)."""
    log = SQLiteEntryLog(tmp_path / "log.db")
    await log.open()
    for i in range(20):
        await log.append(encode_entry({"op": "set", "key": "a", "value": i}))
    await log.compact(10)
    await log.close()
    replica = kv_replica(tmp_path)
    with pytest.raises(LogGap, match=r"entries 1\.\.10 are no longer in the log"):
        await replica.start()
    await replica.close()
    # With snapshots that exist but are all unreadable, the error says so.
    store = SnapshotStore(tmp_path / "snapshots")
    store.write(5, b"not a state")
    replica = kv_replica(tmp_path)
    with pytest.raises(SnapshotError, match="snapshot 5"):
        await replica.start()
    await replica.close()


async def test_simulated_log_with_duplicates_holes_lost_acks_and_crashes() -> None:
    """Seeded runs: entries delivered twice, batches that skip ahead, acknowledgements lost,
    and the replica dropped and recovered at random points. After every step every acknowledged
    proposal is applied exactly once and the state equals a model built from the log."""
    for seed in range(5):
        rng = random.Random(seed)
        log = SimulatedLog(seed, duplicate_rate=0.2, hole_rate=0.2, ack_loss_rate=0.1)
        replica = Replica("sim", KeyValue(), log)
        await replica.start()
        acknowledged: set[int] = set()
        for n in range(300):
            entry = {"op": "add", "key": f"p{n}", "by": 1}
            while True:
                try:
                    await replica.propose(entry, msg_id=f"m{n}")
                    break
                except AckLost:
                    continue  # retried under the same id: must not append again
            acknowledged.add(n)
            if rng.random() < 0.05:  # crash: the replica's memory is gone, the log is not
                await replica.close()
                replica = Replica("sim", KeyValue(), log)
                await replica.start()
            await replica.caught_up()
            state = replica.value.root
            assert all(state.get(f"p{k}") == 1 for k in acknowledged), (seed, n)
            assert len(log.entries) == len(acknowledged), "an entry was appended twice"
        model = KeyValue()
        expected: dict[Any, Any] = {}
        for data in log.entries:
            model.apply(expected, decode_entry(data))
        assert state_hash(expected) == replica.status()["hash"]
        assert log.duplicates_sent > 0, "duplicates were not exercised"
        assert log.holes_sent > 0, "holes were not exercised"
        await replica.close()


async def test_a_logapply_process_proposes_reads_and_reports_through_its_handle(tmp_path: Path) -> None:
    """Through a Node: propose returns the apply result, a raising apply is ApplyFailed with its
    index, read(sync=True) sees every committed entry, and status carries applied/hash."""
    host = Node(machines=[LogApply()], executors=executors(tmp_path / "la"), store=str(tmp_path / "store.db"))
    await host.start()
    handle = await host.spawn("logapply", {"app": "kv"}, name="kv")
    client = LogApplyClient(handle)
    assert None is await client.propose({"op": "set", "key": "a", "value": 1})
    assert 1 == await client.propose({"op": "add", "key": "a", "by": 2})
    with pytest.raises(ApplyFailed) as failed:
        await client.propose({"op": "nope", "key": "a"})
    assert 3 == failed.value.index
    assert 3 == await client.read("a", sync=True)
    status = await client.status()
    assert (3, 1) == (status["applied"], status["apply_errors"])
    await handle.kill()
    await host.shutdown(timeout=5)


async def test_a_logapply_process_with_bad_settings_is_refused_naming_the_key(tmp_path: Path) -> None:
    """Spawning with an unknown app is refused with the setting named; a process that reaches
    its start with it anyway (spawned on the bare runtime) fails naming it."""
    host = Node(machines=[LogApply()], executors=executors(tmp_path / "la"), store=None)
    await host.start()
    with pytest.raises(SettingsError, match="app: expected one of the registered appliers"):
        await host.spawn("logapply", {"app": "nope"})
    assert [] == host.list()
    handle = host.runtime.spawn(host.machines["logapply"], {"app": "nope"})
    done = await handle.wait(timeout=10)
    assert "app: expected one of the registered appliers" in (done.error or "")
    await host.shutdown(timeout=5)


def simulate_logapply(seed: int) -> tuple[Any, SimulatedLogApply, dict[str, list[tuple[Any, Any]]]]:
    """Three log-apply processes under crashes and lost acknowledgements, 40 proposals each
    (every entry distinct) interleaved with reads; invariants checked after every step."""
    world = SimulatedLogApply(commit_latency=(0.001, 0.2), failure_rate=0.05, ack_loss_rate=0.05)
    asked: dict[str, list[tuple[Any, Any]]] = {}  # pid -> [(entry, its SimCall)]

    def replies_match_the_log(sim: Simulation) -> None:
        for pid, calls in asked.items():
            log = world.log(pid)
            for entry, call in calls:
                if call.done() and call.error is None and call.value["ok"]:
                    done = call.value["value"]
                    assert log[done["index"] - 1] == entry, f"{pid}: reply names entry {done['index']}"

    def state_is_the_log_applied_in_order(sim: Simulation) -> None:
        for pid in asked:
            replayed: dict[Any, Any] = {}
            for entry in world.log(pid):
                KeyValue().apply(replayed, entry)
            assert world.state(pid) == replayed, pid

    sim = Simulation(
        [LogApply],
        seed=seed,
        executors=world.executors,
        crash_every=60,
        invariants=[replies_match_the_log, state_is_the_log_applied_in_order],
    )
    pids = [sim.spawn(LogApply, {"app": "kv"}) for _ in range(3)]
    for pid in pids:
        asked[pid] = []
    for n in range(40):
        for pid in pids:
            entry = {"op": "set", "key": f"k{n % 7}", "value": f"{pid}/{n}"}
            asked[pid].append((entry, sim.call(pid, {"op": "propose", "entry": entry})))
            if n % 5 == 0:
                sim.call(pid, {"op": "read", "query": f"k{n % 7}"})
        sim.run(20)
        if n % 8 == 7:
            sim.crash()  # besides the random ones: proposals are in flight at every one of these
    sim.run_until_idle()
    return sim, world, asked


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_logapply_commits_each_proposal_at_most_once_across_crashes(seed: int) -> None:
    """In simulation, log-apply processes under crashes, failed appends and lost acks: no
    entry is committed twice (a proposal re-issued after a crash keeps its id), every ok reply
    names the entry it proposed, the state is the log applied in order, status reports its
    hash; the same seed gives the same trace, another seed another."""
    sim, world, asked = simulate_logapply(seed)
    trace = sim.trace_hash
    assert sim.crashes >= 5
    sim.crash_every = None  # the status calls below must not be lost to a crash
    for pid, calls in asked.items():
        log = world.log(pid)
        values = [entry["value"] for entry in log]
        assert len(values) == len(set(values)), f"{pid}: an entry was committed twice"
        answered = [entry for entry, call in calls if call.done() and call.error is None and call.value["ok"]]
        assert answered, f"{pid}: no proposal was answered"
        assert all(entry in log for entry in answered)
        assert {str(e["value"]) for e in log} <= {str(e["value"]) for e, _ in calls}
        status = sim.call(pid, {"op": "status"})
        sim.run_until_idle()
        assert status.done(), status
        assert status.value["ok"], status
        assert status.value["value"]["hash"] == state_hash(world.state(pid))
        assert status.value["value"]["applied"] == len(log)
    assert trace == simulate_logapply(seed)[0].trace_hash
    assert trace != simulate_logapply(seed + 100)[0].trace_hash
