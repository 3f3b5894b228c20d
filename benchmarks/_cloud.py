"""Cloud scenario: pods through the whole runtime against the fake Kubernetes API server.

Starts the fake API server (``tests/services/kube``, a process of its own, HTTPS) for the run.
No Kubernetes API server can run on the benchmark machines: the figures are of statevisor and
its client against that server, not against a real control plane.

* **Creates**: 500 cloud processes on a node with its SQLite store, each creating its pod
  (``pods_per_s``, until every process has its create's answer), against a plain loop of the
  same client's creates (the cluster's ``KubeApi``: lightkube over the same transport), one
  after another, against the same server (``baseline_per_s``, ``ratio``). The server takes
  5 ms to commit a write, as an API server's etcd does (an fsync of its raft log); concurrent
  writes wait it out together. The same again with writes that take no time at all
  (``loopback_pods_per_s``, ``loopback_baseline_per_s``, ``loopback_ratio``): then the loop is
  bound by the client's own work per request, and the ratio shows what the runtime adds per
  process (a checkpointed spawn, three transitions, a watch event). Pods are held by a
  scheduling gate, as ``sbatch --hold`` holds a job, so the measure is of creating, not of
  running them. No request pacing (``qps = 0``) on either side.
* **Tracking**: the node then holds 1,000 pending pods for a while: ``watch_connections`` (open
  watch requests for their namespace) and ``status_requests_per_pod`` (requests for one pod's
  status, from the server's audit log).
* **A life**: 100 more processes whose pods run ``true`` to the end and are deleted at once
  (ttl 0), in a namespace of their own: ``requests_per_pod`` is every request to the server for
  that namespace (its list and watch included) over the pods.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from supervisor import Handle, Node

from ._harness import BenchOptions, BenchResult, median

HOLD = {"spec": {"schedulingGates": [{"name": "statevisor.io/bench"}]}}  # held, as --hold holds a Slurm job
COMMIT = 0.005  # seconds an etcd commit takes


def _settings(namespace: str, **extra: Any) -> dict[str, Any]:
    return {"cluster": "k", "namespace": namespace, "image": "busybox:1.36", "command": ["true"], **extra}


async def _created(handle: Handle) -> None:
    """Return once the process has its create's answer (its pod's uid)."""
    async for snapshot in handle.watch():
        if "uid" in snapshot.state:
            return


async def _baseline(fake: Any, namespace: str, total: int) -> float:
    from processes.cloud import KubeApi, identity, manifest, parse, parse_cluster, pod_name

    api = KubeApi(parse_cluster("k", fake.cluster_table(namespace=namespace)))
    spec = parse(_settings(namespace, pod_template=HOLD))
    pods = []
    for n in range(total):
        action = f"raw:create:{n}"
        labels, annotations = identity("raw", "raw", action)
        name = pod_name("raw", action)
        pods.append(manifest(spec, name=name, namespace=namespace, labels=labels, annotations=annotations))
    await api.ready()
    try:
        started = time.perf_counter()
        for pod in pods:
            await api.create_pod(namespace, pod)
        return total / (time.perf_counter() - started)
    finally:
        await api.close()


async def _through_node(node: Node, namespace: str, total: int) -> tuple[float, list[Handle]]:
    held = _settings(namespace, pod_template=HOLD)
    started = time.perf_counter()
    handles = [await node.spawn("cloud", held) for _ in range(total)]
    await asyncio.gather(*(_created(h) for h in handles))
    return total / (time.perf_counter() - started), handles


def _namespace(fake: Any, name: str) -> str:
    fake.control("/namespace", {"name": name})
    return name


async def cloud(options: BenchOptions) -> BenchResult:
    from processes.cloud import CloudExecutor, CloudPod, executors, parse_clusters
    from tests.services.kube import FakeKube

    total = options.n(500, minimum=20)
    tracked = options.n(1000, minimum=40)
    lives = options.n(100, minimum=10)
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        fake = FakeKube(Path(directory) / "kube")
        await asyncio.to_thread(fake.start)
        try:
            for repeat in range(min(options.repeats, 3)):
                namespace = _namespace(fake, f"held-{repeat}")
                tables = {"k": fake.cluster_table(namespace=namespace, watch_timeout=600, pod_ttl=0)}
                clusters = parse_clusters(tables)
                made = executors(clusters, Path(directory) / f"cloud{repeat}")
                executor = made["cloud.create"]
                assert isinstance(executor, CloudExecutor)
                node = Node(
                    machines=[CloudPod(clusters, Path(directory) / "logs")],
                    executors=made,
                    store=os.path.join(directory, f"store{repeat}.db"),
                    kill_grace=30.0,
                )
                await node.start()
                try:
                    # The namespace's watch is up before any clock starts.
                    await _created(await node.spawn("cloud", _settings(namespace, pod_template=HOLD)))
                    handles: list[Handle] = []
                    for prefix, latency in (("", COMMIT), ("loopback_", 0.0)):
                        await asyncio.to_thread(fake.control, "/write-latency", {"seconds": latency})
                        note(
                            f"{prefix}baseline_per_s",
                            await _baseline(fake, _namespace(fake, f"raw-{prefix[:4] or 'etcd'}-{repeat}"), total),
                        )
                        rate, made_now = await _through_node(node, namespace, total)
                        note(f"{prefix}pods_per_s", rate)
                        handles += made_now
                    if len(handles) < tracked:
                        handles += (await _through_node(node, namespace, tracked - len(handles)))[1]
                    await asyncio.sleep(3.0)  # the tracking itself: the pods held while their watch goes on
                    note("watch_connections", sum(w.connected for w in executor.watches() if w.namespace == namespace))
                    audit = await asyncio.to_thread(fake.audit)
                    gets = [
                        e
                        for e in audit
                        if e["namespace"] == namespace and e["verb"] == "get" and e["resource"] == "pods"
                    ]
                    note("status_requests_per_pod", len(gets) / len(handles))
                    await asyncio.gather(*(h.kill() for h in node.list(kind="cloud")))

                    life = _namespace(fake, f"life-{repeat}")
                    runs = [await node.spawn("cloud", _settings(life, ttl=0.0)) for _ in range(lives)]
                    await asyncio.gather(*(h.wait(timeout=300) for h in runs))
                    if await _cleared(fake, life):
                        audit = await asyncio.to_thread(fake.audit)
                        note("requests_per_pod", len([e for e in audit if e["namespace"] == life]) / lives)
                finally:
                    await node.shutdown(timeout=30)
        finally:
            await asyncio.to_thread(fake.stop)
    metrics = {name: median(values) for name, values in figures.items()}
    metrics["ratio"] = metrics["pods_per_s"] / metrics["baseline_per_s"]
    metrics["loopback_ratio"] = metrics["loopback_pods_per_s"] / metrics["loopback_baseline_per_s"]
    order = (
        "pods_per_s",
        "baseline_per_s",
        "ratio",
        "loopback_pods_per_s",
        "loopback_baseline_per_s",
        "loopback_ratio",
        "watch_connections",
        "status_requests_per_pod",
        "requests_per_pod",
    )
    result = BenchResult("cloud", {name: metrics[name] for name in order if name in metrics})
    result.lines = [
        f"{total} cloud processes each creating a pod vs a sequential loop of the same client's creates, with "
        f"writes committed in {COMMIT * 1000:g} ms and in no time; then {tracked} pods tracked; then {lives} pods "
        f"run to their end and deleted (medians of {min(options.repeats, 3)})",
        "against the fake Kubernetes API server on loopback (HTTPS), a process of its own",
    ]
    return result


async def _cleared(fake: Any, namespace: str) -> bool:
    """Wait until the namespace's pods are deleted (ttl 0): their deletes are part of their life."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = await asyncio.to_thread(fake.pods)
        if not [p for p in pods if p["metadata"]["namespace"] == namespace]:
            return True
        await asyncio.sleep(0.1)
    return False
