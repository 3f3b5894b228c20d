"""Durability scenarios: checkpoint throughput and recovery time (issue: supervision/checkpoints)."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import tempfile
import time
from typing import Any

from supervisor._core.codec import encode_fields
from supervisor._core.lifecycle import Lifecycle
from supervisor._core.snapshot import ProcessRecord
from supervisor._store.schema import UPSERT
from supervisor._store.sqlite import SQLiteStore
from supervisor._supervision.node import Node

from ._core import _Counter, _Idle
from ._harness import BenchOptions, BenchResult, median


def _skip_writes(store: SQLiteStore) -> None:
    """Make the store's writer thread write nothing, and everything else unchanged: each batch is
    still encoded, queued, built into statements, handed to the writer thread, counted and
    settled. What is left is the runtime's own cost of a durable transition."""

    def write(statements: list[tuple[str, list[Any]]], rows: int) -> None:
        store._batches += 1
        store._records += rows

    store._write = write  # type: ignore[method-assign]


async def _durable_rate(
    directory: str, processes: int, steps: int, *, mode: str, write: bool = True
) -> tuple[float, list[bytes], float, float]:
    """Transitions/s of ``processes`` counters doing ``steps`` transitions each.

    every: driven by casts, every commit waits for its own checkpoint row before the next input.
    calls: driven by calls; each reply waits for its transition's checkpoint (a round trip each).
    folded: driven by casts in the default mode; effect-free commits fold into the next checkpoint.
    ``write=False``: the store's writer skips SQLite (see ``_skip_writes``), once spawned.
    """
    gc.collect()  # not the collector's work on the garbage an earlier run left behind
    path = os.path.join(directory, f"checkpoint-{time.monotonic_ns()}.db")
    host = Node(machines=[_Counter], store=path, synchronous="FULL", checkpoint_every_commit=mode == "every")
    await host.start()
    handles = [await host.spawn(_Counter, {"n": 0}) for _ in range(processes)]
    store = host.store
    assert isinstance(store, SQLiteStore)
    if not write:
        _skip_writes(store)
    before = store.statistics()

    async def drive(handle: Any) -> None:
        for i in range(steps):
            if mode == "calls":
                await handle.call("add")
            else:
                await handle.cast(i)
        await handle.call("sync")

    started = time.perf_counter()
    await asyncio.gather(*(drive(h) for h in handles))
    elapsed = time.perf_counter() - started
    after = store.statistics()
    transitions = processes * (steps + 1)
    blobs = [h._process.checkpoint().blob for h in handles]
    batch = (after.records - before.records) / max(1, after.batches - before.batches)
    rows_per_transition = (after.records - before.records) / transitions
    await host.shutdown()
    return transitions / elapsed, blobs, batch, rows_per_transition


async def _no_runtime_rate(directory: str, processes: int, steps: int) -> float:
    """Transitions/s of bare tasks, one per counter, that each change a dict, encode it as a
    checkpoint and await the real store's ``save``: no process, journal, context or handle.
    The best a durable transition through this store could do, whatever the runtime costs."""
    gc.collect()
    store = await SQLiteStore.open(os.path.join(directory, f"no-runtime-{time.monotonic_ns()}.db"), synchronous="FULL")

    async def counter(pid: str, transitions: int) -> None:
        state = {"n": 0}
        for version in range(1, transitions + 1):
            state["n"] += 1
            await store.save(
                encode_fields(pid, pid, _Counter.kind, version, "main", state, [], [], Lifecycle.RUNNING, None, None,
                              False, {}, None, 1, [])
            )  # fmt: skip

    await asyncio.gather(*(counter(f"p{i}", 1) for i in range(processes)))  # as spawning writes each once
    started = time.perf_counter()
    await asyncio.gather(*(counter(f"p{i}", steps + 1) for i in range(processes)))
    rate = processes * (steps + 1) / (time.perf_counter() - started)
    await store.close()
    return rate


def _raw_sqlite_rate(directory: str, blobs: list[bytes], rows: int) -> float:
    """The same bytes, the same durability (WAL, synchronous=FULL), in batches of one row per
    process: the best a group commit of these processes could do."""
    path = os.path.join(directory, f"raw-{time.monotonic_ns()}.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE processes (pid TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, lifecycle TEXT "
        "NOT NULL, version INTEGER NOT NULL, updated REAL NOT NULL, ended REAL, record BLOB NOT NULL)"
    )
    written = 0
    started = time.perf_counter()
    version = 0
    while written < rows:
        version += 1
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(UPSERT, [(str(i), "n", "k", "running", version, now, None, b) for i, b in enumerate(blobs)])
        db.execute("COMMIT")
        written += len(blobs)
    elapsed = time.perf_counter() - started
    db.close()
    return written / elapsed


async def checkpoint(options: BenchOptions) -> BenchResult:
    processes = options.n(1000, minimum=20)
    steps = max(2, int(20 * min(1.0, options.scale * 4)))
    strict, calls, folded, baselines, batches, rows, unwritten, bare = [], [], [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        for _ in range(options.repeats):
            rate, blobs, batch, per_transition = await _durable_rate(directory, processes, steps, mode="every")
            strict.append(rate)
            batches.append(batch)
            rows.append(per_transition)
            calls.append((await _durable_rate(directory, processes, steps, mode="calls"))[0])
            folded.append((await _durable_rate(directory, processes, steps, mode="folded"))[0])
            unwritten.append((await _durable_rate(directory, processes, steps, mode="every", write=False))[0])
            bare.append(await _no_runtime_rate(directory, processes, steps))
            baselines.append(await asyncio.to_thread(_raw_sqlite_rate, directory, blobs, processes * (steps + 1)))
    result = BenchResult(
        "checkpoint",
        {
            "durable_transitions_per_s": median(strict),
            "baseline_per_s": median(baselines),
            "ratio": median(strict) / median(baselines),
            "rows_per_transition": median(rows),
            "mean_batch_size": median(batches),
            "call_round_trip_transitions_per_s": median(calls),
            "folded_transitions_per_s": median(folded),
            "unwritten_transitions_per_s": median(unwritten),
            "unwritten_ratio": median(unwritten) / median(baselines),
            "no_runtime_transitions_per_s": median(bare),
            "no_runtime_ratio": median(bare) / median(baselines),
        },
    )
    result.lines = [
        f"{processes} counter processes x {steps} casts, checkpoint_every_commit: each transition's",
        "checkpoint row is durable (WAL, synchronous=FULL) before the process takes its next input",
        "baseline: raw SQLite upserts of the same record bytes, same durability, one batch per round",
        "call_round_trip: driven by call(); each reply waits for its transition's checkpoint",
        "folded: the default mode, driven by casts; effect-free commits fold into the next checkpoint",
        "unwritten: as durable, but the writer thread skips SQLite: the runtime's own ceiling, whose",
        "ratio to the baseline bounds what any change to how we use SQLite could reach",
        "no_runtime: bare tasks that change a dict, encode it and await the store's save, with no runtime at",
        "all: the ratio to the baseline bounds what any change to the runtime could reach",
    ]
    return result


async def _fill(path: str, count: int) -> None:
    store = await SQLiteStore.open(path, synchronous="OFF")
    state = {"n": 0, "label": "bench"}
    records = [
        ProcessRecord(pid=f"p{i:06d}", name=f"p{i:06d}", kind=_Idle.kind, version=1, phase="main", state=state,
                      lifecycle=Lifecycle.RUNNING, meta={"mode": "auto"})
        for i in range(count)
    ]  # fmt: skip
    for start in range(0, count, 5000):
        await asyncio.gather(*(store.save_record(r) for r in records[start : start + 5000]))
    await store.close()


def _raw_load(path: str) -> float:
    import msgpack  # type: ignore[import-untyped]

    started = time.perf_counter()
    db = sqlite3.connect(path)
    for (blob,) in db.execute("SELECT record FROM processes WHERE ended IS NULL"):
        msgpack.unpackb(blob, raw=False)
    db.close()
    return time.perf_counter() - started


async def recovery(options: BenchOptions) -> BenchResult:
    count = options.n(100_000, minimum=200)
    seconds, raw, shutdowns = [], [], []
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        for repeat in range(max(1, options.repeats // 2)):
            path = os.path.join(directory, f"recovery-{repeat}.db")
            await _fill(path, count)
            raw.append(await asyncio.to_thread(_raw_load, path))
            host = Node(machines=[_Idle], store=path)
            started = time.perf_counter()
            report = await host.start()
            handles = host.list()
            for handle in handles:
                await handle._process.wait_ready()
            seconds.append(time.perf_counter() - started)
            assert count == report.revived == len(handles), (count, report.revived, len(handles))
            del handles
            started = time.perf_counter()
            await host.shutdown(timeout=10)
            shutdowns.append(time.perf_counter() - started)
    result = BenchResult(
        "recovery",
        {
            "restore_seconds": median(seconds),
            "baseline_seconds": median(raw),
            "ratio": median(raw) / median(seconds),
            "shutdown_seconds": median(shutdowns),
        },
    )
    result.lines = [
        f"{count} live processes in the store; time from Node.start() until every one is revived and restored",
        "baseline: raw SELECT of the same rows and msgpack decoding of record and state",
        "shutdown_seconds: Node.shutdown(timeout=10) of them all (the daemon's default bound)",
    ]
    return result
