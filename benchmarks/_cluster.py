"""Cluster scenario: durable transitions of one daemon on the cluster's store, a member's
failover, and a call routed through a member that does not own the process.

Store: ``window`` processes on one node with a :class:`ClusterStore` (3-node NATS, R3), each
taking an effect per transition (a checkpoint written before the effect leaves), so ``window``
writes are in flight; the baseline is plain nats-py: ``window`` tasks each updating a key of its
own on the revision it last wrote (``kv.update``, a compare-and-set like ours), values the size
of our checkpoints. The two alternate, on fresh buckets each time.

Routed calls: on a quiet cluster of three daemons, calls to idle processes of member b through
member a (routed over NATS) against the same calls straight to b, one at a time; p99 of each.

Failover: three real daemons (lease 3 s); 1,000 steppers (tests/cluster_kit.py: each step a
tracked effect applied to a ledger by its action id) are spawned while only member b runs, so b
owns them all; then a and c join, b is SIGKILLed, and the time is from the kill to the last
survivor's log saying its share runs (``failover`` events, logged once the processes taken are
restored). Then every process finishes: the ledger's missing effects are the lost ones, effects
applied under a second action id the duplicated ones.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ._harness import BenchOptions, BenchResult, median, percentile

WINDOW = 256
LEASE = 3.0


def _acknowledge_at_once(connection: Any) -> None:
    """The store's checkpoint publishes answered at once, as if the servers had acknowledged them:
    the same workload with the runtime and the store's own code and no JetStream write."""
    sequence = itertools.count(1)

    async def publish(*args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(stream="", seq=next(sequence), duplicate=False)

    connection.js.publish = publish


async def _ours(urls: list[str], total: int, *, written: bool = True) -> tuple[float, int]:
    """Durable transitions/s of one node on the cluster store; the size of a checkpoint. Not
    ``written``: the same with every checkpoint publish acknowledged at once (the ceiling)."""
    from supervisor import ActionSucceeded, Context, Control, Input, Machine, Node
    from supervisor.cluster.connection import ClusterConnection
    from supervisor.cluster.settings import ClusterSettings
    from supervisor.cluster.store import ClusterStore

    per_process = max(1, total // WINDOW)
    done = asyncio.Event()
    finished = [0]

    class Pinger(Machine[dict[str, Any]]):
        kind = "pinger"

        async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
            if isinstance(input, Control):
                state["n"] = 0
            elif isinstance(input, ActionSucceeded):
                state["n"] += 1
            if state["n"] < per_process:
                ctx.track("noop", None)
            else:
                finished[0] += 1
                if finished[0] == WINDOW:
                    done.set()
                ctx.finish(state["n"])

    async def noop(action: Any) -> None:
        return None

    settings = ClusterSettings(servers=tuple(urls), name="b" + secrets.token_hex(4), node="bench", lease=10.0)
    connection = await ClusterConnection.open(settings)
    store = ClusterStore(connection, secrets.token_hex(8))
    node = Node(machines=[Pinger()], executors={"noop": noop}, store=store)
    await node.start()
    # Spawned held, then started together: the spawns' own writes are not what is measured.
    handles = await asyncio.gather(*(node.spawn(Pinger, start=False) for _ in range(WINDOW)))
    if not written:
        _acknowledge_at_once(connection)
    started = time.perf_counter()
    await asyncio.gather(*(handle.start() for handle in handles))
    await done.wait()
    seconds = time.perf_counter() - started
    size = len(handles[0]._process.checkpoint().blob)
    await node.shutdown()
    await connection.close()
    # Each process: its start made durable, then per_process transitions each written before its effect.
    return WINDOW * (per_process + 1) / seconds, size


async def _raw(urls: list[str], total: int, size: int) -> float:
    """Plain nats-py: ``WINDOW`` tasks, each updating its own key on its last revision."""
    import nats
    from nats.js.api import KeyValueConfig, StorageType

    connection = await nats.connect(servers=urls)
    js = connection.jetstream()
    bucket = "raw" + secrets.token_hex(4)
    kv = await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, replicas=3, storage=StorageType.FILE))
    per_task = max(1, total // WINDOW) + 1
    value = b"x" * size

    async def writer(key: str) -> None:
        revision = 0
        for _ in range(per_task):
            revision = await kv.update(key, value, last=revision)

    started = time.perf_counter()
    await asyncio.gather(*(writer(f"k{i}") for i in range(WINDOW)))
    seconds = time.perf_counter() - started
    await js.delete_key_value(bucket)
    await connection.close()
    return WINDOW * per_task / seconds


async def _calls(client: Any, pids: list[str], count: int) -> list[float]:
    handles = [await client.get(pid) for pid in pids[: min(len(pids), 50)]]
    took = []
    for i in range(count):
        started = time.perf_counter()
        await handles[i % len(handles)].call("done", timeout=10)
        took.append(time.perf_counter() - started)
    return took


def _stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


async def _routed_calls(root: Path, nats: Any, calls: int) -> dict[str, float]:
    """p99 of calls through a member that does not own the process, and straight to its owner,
    on a quiet cluster (idle processes: each waits on a long effect)."""
    from tests.cluster_daemons import DaemonCluster

    members = DaemonCluster(root, nats, lease=LEASE)
    try:
        members.start_all()
        async with members.client("a") as via_a:
            state = {"steps": 1, "pause": 3600.0, "done": 0}
            handles = await asyncio.gather(*[via_a.spawn("stepper", state) for _ in range(60)])
            owners = {row["pid"]: row["owner"] for row in await via_a.collect("list", chunked=True)}
            on_b = [h.pid for h in handles if owners.get(h.pid) == "b"]
            async with members.client("b") as via_b:
                routed = await _calls(via_a, on_b, calls)
                direct = await _calls(via_b, on_b, calls)
        return {
            "remote_call_p99_ms": percentile(routed, 0.99) * 1000,
            "remote_call_p50_ms": percentile(routed, 0.5) * 1000,
            "direct_call_p99_ms": percentile(direct, 0.99) * 1000,
        }
    finally:
        members.close()


async def _failover(root: Path, nats: Any, count: int) -> dict[str, float]:
    from tests.cluster_daemons import DaemonCluster

    members = DaemonCluster(root, nats, lease=LEASE)
    try:
        members.start("b")
        steps = 20  # a second each: effects in flight at the kill
        async with members.client("b") as client:
            state = {"steps": steps, "pause": 1.0, "done": 0}
            pids: list[str] = []
            for start in range(0, count, 100):
                batch = [client.spawn("stepper", state) for _ in range(min(100, count - start))]
                pids += [h.pid for h in await asyncio.gather(*batch)]
        for node in ("a", "c"):
            members.start(node)
        killed = time.time()
        members.kill("b")
        deadline = time.monotonic() + 120
        taken, last = 0, killed
        while time.monotonic() < deadline:
            events = [e for n in ("a", "c") for e in members.events(n) if e.get("event") == "failover"]
            taken = sum(int(e.get("taken", 0)) for e in events)
            if taken >= count:
                last = max(_stamp(e) for e in events)
                break
            await asyncio.sleep(0.2)
        if taken < count:
            raise RuntimeError(f"bench cluster: only {taken} of {count} processes were taken over in 120 s")
        for _ in range(600):  # a second each: every process finishes
            if len(members.effects()) >= count * steps:
                break
            await asyncio.sleep(1.0)
        applied = members.effects()
        expected = {(pid, step) for pid in pids for step in range(steps)}
        return {
            "failover_seconds": last - killed,
            "lost": float(len(expected - set(applied))),
            "duplicated": float(len(members.duplicates())),
        }
    finally:
        members.close()


async def cluster(options: BenchOptions) -> BenchResult:
    from tests.services.nats import NatsCluster, nats_server

    if nats_server() is None:
        raise RuntimeError("bench cluster needs nats-server 2.9.21 or later (the test command unpacks one)")
    total = options.n(20_000, minimum=2_000)
    count = options.n(1_000, minimum=50)
    calls = options.n(2_000, minimum=100)
    ours: list[float] = []
    raw: list[float] = []
    unwritten: list[float] = []
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        root = Path(directory)
        nats = NatsCluster(root / "nats")
        nats.start()
        try:
            size = 0
            for repeat in range(max(1, min(options.repeats, 3))):
                if repeat % 2 == 0:
                    rate, size = await _ours(nats.urls, total)
                    ours.append(rate)
                    raw.append(await _raw(nats.urls, total, size))
                else:
                    raw.append(await _raw(nats.urls, total, size or 200))
                    rate, size = await _ours(nats.urls, total)
                    ours.append(rate)
                unwritten.append((await _ours(nats.urls, total, written=False))[0])
            routed = await _routed_calls(root / "calls", nats, calls)
            failover = await _failover(root / "daemons", nats, count)
        finally:
            nats.stop()
    durable, baseline = median(ours), median(raw)
    result = BenchResult(
        "cluster",
        {
            "durable_transitions_per_s": durable,
            "baseline_per_s": baseline,
            "ratio": durable / baseline,
            "unwritten_transitions_per_s": median(unwritten),
            "unwritten_ratio": median(unwritten) / baseline,
            **failover,
            **routed,
            "remote_call_ratio": routed["remote_call_p99_ms"] / routed["direct_call_p99_ms"],
            "lease_seconds": LEASE,
            "processes_failed_over": float(count),
        },
    )
    result.lines = [
        f"store: {WINDOW} processes, an effect per transition ({total} transitions), on a 3-node NATS cluster (R3), "
        f"vs nats-py kv.update by {WINDOW} tasks (compare-and-set on their last revision); medians of {len(ours)}",
        "unwritten: the same store workload with every checkpoint publish acknowledged at once (no JetStream "
        "write): the ceiling of the ratio that the runtime and the store's own code leave",
        f"failover: {count} processes owned by the member SIGKILLed, lease {LEASE:g} s; from the kill to the last "
        "survivor's failover event (its share restored and running)",
        f"routed calls: {calls} calls, one at a time, through a member that does not own the process vs straight to "
        "its owner",
        json.dumps({"checkpoint_bytes": size}),
    ]
    return result
