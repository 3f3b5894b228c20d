"""Log-apply scenario: applied entries/s on the embedded log and on a 3-node JetStream, and the
time a machine with 1,000,000 applied entries takes to recover and serve reads.

Embedded: key-value entries proposed by 1,000 concurrent proposers through a replica on its SQLite log
(group commit, ``synchronous=FULL``); the baseline inserts the same encoded entries into a bare
SQLite table in transactions of the size our group commit made (same pragmas), nothing else.
JetStream: the baseline is plain nats-py: 8 concurrent publishers (each awaiting its
acknowledgement) publish the same entries, with no headers, then an ordered consumer reads them
all; ours proposes them through a replica whose writer has 8 lanes (fenced, deduplicated
appends) and waits until all are applied. The two alternate on each of two clusters (this
machine's figures vary by a third from run to run). Needs
``nats-server`` (Debian package) for the JetStream part.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from ._harness import BenchOptions, BenchResult, median

_LANES = 8  # appends in flight: our writer's lanes, and the baseline's concurrent publishers


def _kv(n: int) -> dict[str, Any]:
    return {"op": "add", "key": f"k{n % 10_000}", "by": 1}


async def _pipelined(replica: Any, total: int, in_flight: int) -> None:
    """Propose ``total`` entries with ``in_flight`` outstanding: a fixed pool of proposers.

    Not a semaphore over ``total`` tasks: asyncio's Semaphore scans its waiters on every
    release, which made the driver itself quadratic (21,000/s here instead of 73,000/s).
    """
    numbers = iter(range(total))

    async def proposer() -> None:
        for n in numbers:
            await replica.propose(_kv(n))

    await asyncio.gather(*(proposer() for _ in range(in_flight)))


def _skip_log_writes(log: Any) -> None:
    """Make the embedded log's writer thread write nothing, and everything else unchanged: each
    batch is still taken, handed to the writer thread, given its indexes, remembered for the
    followers and applied. What is left is the replica's own cost of an entry."""

    def commit(inserts: tuple[str, str], rows: list[Any], *, begun: bool = False) -> None:
        if begun:  # a batch with message ids looked them up in a transaction of its own
            log._writer.execute("ROLLBACK")
        if rows:
            log._last = rows[-1][0]
        log.appended += len(rows)
        log.commits += 1

    log._commit = commit


async def _proposed(directory: Path, total: int, *, write: bool = True) -> tuple[float, int]:
    """Entries/s of ``total`` kv entries proposed 1,000 in flight, and the mean group-commit size."""
    from processes.logapply import KeyValue, Replica, SnapshotStore, SQLiteEntryLog

    gc.collect()  # not the collector's work on the garbage an earlier run left behind
    log = SQLiteEntryLog(directory / "log.db")
    replica = Replica("bench", KeyValue(), log, SnapshotStore(directory / "snapshots"), snapshot_every=100_000)
    await replica.start()
    if not write:
        _skip_log_writes(log)
    started = time.perf_counter()
    await _pipelined(replica, total, 1000)
    rate = total / (time.perf_counter() - started)
    batch = max(1, log.appended // max(log.commits, 1))
    await replica.close()
    return rate, batch


async def _embedded(directory: Path, total: int) -> tuple[float, float, float]:
    """Ours, the raw baseline, and ours with the log's writes skipped (the replica's ceiling)."""
    from processes.logapply import encode_entry

    ours, batch = await _proposed(directory / "written", total)
    unwritten, _ = await _proposed(directory / "unwritten", total, write=False)

    entries = [encode_entry(_kv(n)) for n in range(total)]
    db = sqlite3.connect(directory / "raw.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL)")
    started = time.perf_counter()
    for start in range(0, total, batch):
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO entries VALUES (?, ?)",
            ((start + i + 1, e) for i, e in enumerate(entries[start : start + batch])),
        )
        db.execute("COMMIT")
    raw = total / (time.perf_counter() - started)
    db.close()
    return ours, raw, unwritten


async def _jetstream(directory: Path, total: int, pairs: int) -> tuple[list[float], list[float]]:
    """``pairs`` runs of ours and of the baseline on one 3-node cluster, each on a fresh stream,
    in alternating order (ours first in every other pair): three servers and two processes share
    two cores here, and whichever runs second in a pair was measured to be neither favoured nor
    hurt consistently, so alternating keeps any drift out of the ratio."""
    from tests.services.nats import NatsCluster

    cluster = NatsCluster(directory / "nats")
    await asyncio.to_thread(cluster.start)
    ours: list[float] = []
    raw: list[float] = []
    try:
        for pair in range(pairs):
            if pair % 2:
                ours.append(await _jetstream_ours(cluster.urls, f"ours{pair}", total))
                raw.append(await _jetstream_raw(cluster.urls, f"raw{pair}", total))
            else:
                raw.append(await _jetstream_raw(cluster.urls, f"raw{pair}", total))
                ours.append(await _jetstream_ours(cluster.urls, f"ours{pair}", total))
    finally:
        await asyncio.to_thread(cluster.stop)
    return ours, raw


async def _jetstream_raw(servers: list[str], stream: str, total: int) -> float:
    """Plain nats-py: 8 concurrent publishers awaiting their acks, then an ordered consumer."""
    import nats

    from processes.logapply import encode_entry

    entries = [encode_entry(_kv(n)) for n in range(total)]
    connection = await nats.connect(servers=servers)
    js = connection.jetstream(timeout=10)
    deadline = time.monotonic() + 30
    while True:  # the meta leader may still be being elected
        try:
            await js.add_stream(name=stream, subjects=[f"{stream}.>"], num_replicas=3)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)
    started = time.perf_counter()
    remaining = iter(entries)

    async def publisher() -> None:
        for data in remaining:
            await js.publish(f"{stream}.w", data)

    await asyncio.gather(*(publisher() for _ in range(_LANES)))
    received = 0
    done = asyncio.Event()

    async def got(message: Any) -> None:
        nonlocal received
        received += 1
        if received == total:
            done.set()

    subscription = await js.subscribe(f"{stream}.>", cb=got, ordered_consumer=True)
    await done.wait()
    rate = total / (time.perf_counter() - started)
    await subscription.unsubscribe()
    await connection.close()
    return rate


async def _jetstream_ours(servers: list[str], stream: str, total: int) -> float:
    """Proposed through a replica (8 lanes: fenced, deduplicated appends), until all applied."""
    from processes.logapply import JetStreamEntryLog, KeyValue, Replica

    replica = Replica("bench", KeyValue(), JetStreamEntryLog(servers, stream, writer="bench", lanes=_LANES))
    await replica.start()
    started = time.perf_counter()
    await _pipelined(replica, total, 1000)
    await replica.caught_up(total)
    rate = total / (time.perf_counter() - started)
    await replica.close()
    return rate


async def _recovery(directory: Path, total: int, every: int) -> tuple[float, float]:
    from processes.logapply import KeyValue, Replica, SnapshotStore, SQLiteEntryLog

    def make() -> Replica:
        return Replica(
            "recover", KeyValue(), SQLiteEntryLog(directory / "log.db", synchronous="NORMAL"),
            SnapshotStore(directory / "snapshots"), snapshot_every=every,
        )  # fmt: skip

    replica = make()
    await replica.start()
    await _pipelined(replica, total, 2000)
    await replica.close()

    async def recover() -> float:
        started = time.perf_counter()
        again = make()
        await again.start()
        await again.read("k1")
        seconds = time.perf_counter() - started
        assert again.applied == total, (again.applied, total)
        await again.close()
        return seconds

    at_snapshot = await recover()
    # The worst case: the newest snapshot is gone (or corrupt), so recovery loads the one
    # before and replays a whole interval of entries from the log.
    store = SnapshotStore(directory / "snapshots")
    store.path(store.indexes()[0]).unlink()
    return at_snapshot, await recover()


async def logapply(options: BenchOptions) -> BenchResult:
    from tests.services.nats import nats_server

    total = options.n(100_000, minimum=500)
    js_total = options.n(5_000, minimum=100)
    recovered = options.n(1_000_000, minimum=1_000)
    ours: list[float] = []
    raw: list[float] = []
    unwritten: list[float] = []
    js_ours: list[float] = []
    js_raw: list[float] = []
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        root = Path(directory)
        for repeat in range(min(options.repeats, 3)):
            e, b, u = await _embedded(root / f"embedded{repeat}", total)
            ours.append(e)
            raw.append(b)
            unwritten.append(u)
        if nats_server() is None:
            raise RuntimeError("bench logapply needs nats-server (Debian package nats-server) for the JetStream part")
        for repeat in range(2):  # two clusters: a cluster's own luck (leader placement) is averaged too
            j, r = await _jetstream(root / f"js{repeat}", js_total, pairs=max(1, (options.repeats + 1) // 2))
            js_ours += j
            js_raw += r
        recovery, replayed = await _recovery(root / "recovery", recovered, max(recovered // 10, 100))
    entries, baseline = median(ours), median(raw)
    jetstream, jetstream_raw = median(js_ours), median(js_raw)
    result = BenchResult(
        "logapply",
        {
            "entries_per_s": entries,
            "baseline_per_s": baseline,
            "ratio": entries / baseline,
            "unwritten_entries_per_s": median(unwritten),
            "unwritten_ratio": median(unwritten) / baseline,
            "jetstream_entries_per_s": jetstream,
            "jetstream_baseline_per_s": jetstream_raw,
            "jetstream_ratio": jetstream / jetstream_raw,
            "recovery_seconds": recovery,
            "recovery_replay_seconds": replayed,
        },
    )
    result.lines = [
        f"embedded: {total} kv entries proposed 1,000 in flight vs raw SQLite inserts in batches of our group-commit "
        f"size (synchronous=FULL); medians of {len(ours)}",
        "unwritten: the same proposals with the log's writer skipping SQLite: the replica's own ceiling, whose ratio",
        "to the baseline bounds what any change to how the log uses SQLite could reach",
        f"jetstream (3 nodes, R3): {js_total} entries through a replica (8 lanes) vs nats-py with 8 publishers, "
        f"then consumed; medians of {len(js_ours)} runs each, in alternating order on 2 clusters",
        f"recovery: {recovered} applied entries, snapshots every {max(recovered // 10, 100)}: start to serving reads "
        f"(replay: the newest snapshot removed, so one interval is replayed from the log)",
        f"cpu count {os.cpu_count()}",
    ]
    return result
