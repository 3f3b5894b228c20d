"""The cloud executor: creates each action's pod once, follows every pod through one watch per
namespace, keeps their logs, and deletes them for sure.

Three tracked actions make a pod's life, and one untracked action a kill's leftovers:

* ``cloud.create`` looks the action's pod up by label in its namespace's watch (a list when the
  watch starts: no request of its own), adopts it if it is there, and only then creates it; a
  create that meets ``AlreadyExists`` adopts the pod when its labels are the action's, and
  refuses (:class:`PodConflict`) otherwise. The pod's name derives from the action id, so two
  creates of one action can never make two pods.
* ``cloud.wait`` resolves when the pod's status means something new to its process (see
  :mod:`._status`), from the watch alone; once the pod has ended, after its log is whole.
* ``cloud.release`` hands the ended pod to the reaper, to be deleted ``ttl`` seconds later.
* ``cloud.delete`` (untracked): a killed process's pod when nothing was in flight to cancel.

A kill deletes the pod (with the process's ``stop_grace``) when the API server accepts it within
the cluster's ``kill_timeout``, and otherwise owes the delete (:mod:`._reaper`). Pausing a
process whose pod is not created yet holds the create; a pod cannot be suspended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor import TrackedAction, TransportError, UntrackedAction

from ._api import KubeApi
from ._clusters import ClusterSpec
from ._logs import LogCollector
from ._reaper import Delete, DeleteJournal, Reaper
from ._settings import OURS, selector
from ._status import PodView
from ._watch import PodWatch
from .errors import AlreadyExists, ApiRefused, NotFound, PodConflict

log = structlog.get_logger("statevisor.cloud")

CREATE = "cloud.create"
WAIT = "cloud.wait"
RELEASE = "cloud.release"
DELETE = "cloud.delete"
"""Untracked: delete a killed process's pod when no action was in flight to cancel (see on_kill)."""
ACTION_TYPES = (CREATE, WAIT, RELEASE, DELETE)

LINGER = 120.0
"""Seconds a kill that met a create in flight keeps looking for the pod that create may still make."""
IDENTITY = (OURS + "owner", OURS + "pid", OURS + "action")


class Cluster:
    """What the executor keeps per cluster: its client, its watches (one per namespace and
    owner) and its pods' logs."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.api = KubeApi(spec)
        self.logs = LogCollector(self.api)
        self.watches: dict[tuple[str, str], PodWatch] = {}

    def watch(self, namespace: str, owner: Mapping[str, str]) -> PodWatch:
        labels = selector(owner.get(OURS + "owner", self.spec.owner))
        key = (namespace, labels[OURS + "owner"])
        watch = self.watches.get(key)
        if watch is None:
            watch = self.watches[key] = PodWatch(self.api, namespace, labels)
            watch.on_change.append(lambda view: self.logs.seen(view, namespace))
        watch.start()
        return watch

    async def close(self) -> None:
        for watch in self.watches.values():
            await watch.close()
        await self.logs.close()
        await self.api.close()

    def __repr__(self) -> str:
        return f"<Cluster {self.spec.name} watches={len(self.watches)} {self.api!r}>"


class CloudExecutor:
    """Executes the cloud kind's actions for every declared cluster."""

    idempotent = True
    uses_slot = False  # a pod waits in the cluster's scheduler, not in ours

    def __init__(self, clusters: Mapping[str, ClusterSpec], state_dir: Path) -> None:
        self.clusters = {name: Cluster(spec) for name, spec in clusters.items()}
        self.state_dir = Path(state_dir)
        self.reaper = Reaper(DeleteJournal(self.state_dir / "deletes.jsonl"), self._api, self._watch)
        self.created = 0  # pods this executor created
        self.adopted = 0  # creates that found their pod there already
        self._held: dict[str, asyncio.Event] = {}  # create actions of paused processes
        self.holding = 0  # creates waiting for their process to be resumed
        self.reaper.start()  # deletes an earlier daemon owed (needs a running loop: else at the first action)

    # --- the executor protocol --------------------------------------------------------------

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        self.reaper.start()  # what an earlier daemon owed is settled once this one works
        payload = action.payload
        if action.type == DELETE:
            await self._delete_or_owe(payload, linger=float(payload.get("linger", 0.0)))
            return None
        assert isinstance(action, TrackedAction)
        if action.type == CREATE:
            return await self._create(action)
        if action.type == WAIT:
            return await self._wait(payload)
        if action.type == RELEASE:
            return await self._release(payload)
        raise ValueError(f"cloud executor got an action of type {action.type!r}")

    async def cancel(self, action: TrackedAction) -> None:
        payload = action.payload
        if action.type == CREATE:
            self._unhold(action.id)
            # The create may be on its way to the server: delete by name, and keep looking.
            meta = payload["manifest"]["metadata"]
            spec = payload["manifest"]["spec"]
            target = {
                "cluster": payload["cluster"],
                "namespace": payload["namespace"],
                "pod": meta["name"],
                "owner": selector(meta["labels"][OURS + "owner"]),
                "grace": spec.get("terminationGracePeriodSeconds"),
            }
            await self._delete_or_owe(target, linger=LINGER)
        elif action.type == WAIT:
            await self._delete_or_owe(payload)
        elif action.type == RELEASE:
            await self._release(payload)  # the pod has ended: it is only deleted later, as planned

    async def pause(self, action: TrackedAction) -> None:
        if action.type == CREATE:
            self._held.setdefault(action.id, asyncio.Event())

    async def resume(self, action: TrackedAction) -> None:
        self._unhold(action.id)

    def _unhold(self, action_id: str) -> None:
        held = self._held.pop(action_id, None)
        if held is not None:
            held.set()

    async def close(self) -> None:
        await self.reaper.close()
        for cluster in self.clusters.values():
            await cluster.close()

    # --- create -----------------------------------------------------------------------------

    async def _create(self, action: TrackedAction) -> dict[str, Any]:
        payload = action.payload
        cluster = self._cluster(payload["cluster"])
        namespace = payload["namespace"]
        manifest = payload["manifest"]
        labels = manifest["metadata"]["labels"]
        identity = {key: labels[key] for key in IDENTITY}
        watch = cluster.watch(namespace, labels)
        await watch.wait_synced()
        found = watch.find(identity)
        if found is not None:
            self.adopted += 1
            log.info("cloud_pod_adopted", cluster=cluster.spec.name, namespace=namespace, pod=found.name)
            return {"adopted": True, **found.report()}
        held = self._held.get(action.id)
        if held is not None:  # paused before its pod exists: the pod is not created meanwhile
            self.holding += 1
            try:
                await held.wait()
            finally:
                self.holding -= 1
        name = manifest["metadata"]["name"]
        try:
            view = PodView.of(await cluster.api.create_pod(namespace, manifest))
            self.created += 1
            adopted = False
        except AlreadyExists:
            view = PodView.of(await cluster.api.get_pod(namespace, name))
            if any(view.labels.get(k) != v for k, v in identity.items()):
                raise PodConflict(name, namespace, dict(view.labels)) from None
            self.adopted += 1  # an earlier attempt's create landed (a timeout, a cut connection)
            adopted = True
        watch.learn(view)
        return {"adopted": adopted, **(watch.pods.get(view.name) or view).report()}

    # --- wait -------------------------------------------------------------------------------

    async def _wait(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        cluster = self._cluster(payload["cluster"])
        namespace, name = payload["namespace"], payload["pod"]
        watch = cluster.watch(namespace, payload["owner"])
        cluster.logs.track(namespace, name, Path(payload["log"]), payload["log_max_bytes"], payload["log_backups"])
        view = await watch.wait(name, payload["known"])
        cluster.logs.seen(view, namespace)
        report = view.report()
        if view.final:
            report["logs"] = await cluster.logs.finish(view, namespace)
            cluster.logs.forget(namespace, name)
        return report

    # --- release and delete ---------------------------------------------------------------

    async def _release(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        now = time.time()
        ttl = float(payload["ttl"])
        entry = Delete(
            payload["cluster"],
            payload["namespace"],
            payload["pod"],
            dict(payload["owner"]),
            why=payload.get("why", "ttl"),
            due=now + ttl,
            grace=payload.get("grace"),
        )
        await self.reaper.owe(entry)
        return {"delete_at": entry.due}

    async def _delete_or_owe(self, payload: Mapping[str, Any], *, linger: float = 0.0) -> None:
        cluster = self.clusters.get(payload.get("cluster", ""))
        if cluster is None:
            return
        now = time.time()
        entry = Delete(
            cluster.spec.name,
            payload["namespace"],
            payload["pod"],
            dict(payload["owner"]),
            why="kill",
            due=now,
            grace=payload.get("grace"),
            linger=now + linger if linger else 0.0,
        )
        if cluster.api.healthy:
            try:
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancellation
                # that comes as its inner call completes (a kill's bound racing the delete's answer).
                async with asyncio.timeout(cluster.spec.kill_timeout):
                    await cluster.api.delete_pod(entry.namespace, entry.name, entry.grace, retries=0)
                entry.done_once = True
            except NotFound:
                entry.done_once = True
            except (TransportError, ApiRefused, OSError, TimeoutError) as exc:
                log.warning(
                    "cloud_delete_owed",
                    cluster=entry.cluster,
                    namespace=entry.namespace,
                    pod=entry.name,
                    error=str(exc) or type(exc).__name__,
                )
        if entry.done_once and not linger:
            log.info("cloud_pod_deleted", cluster=entry.cluster, namespace=entry.namespace, pod=entry.name, why="kill")
            return
        await self.reaper.owe(entry)

    # --- helpers ----------------------------------------------------------------------------

    def _cluster(self, name: str) -> Cluster:
        try:
            return self.clusters[name]
        except KeyError:
            declared = ", ".join(sorted(self.clusters)) or "none"
            raise ValueError(f"no [kubernetes.{name}] is declared (clusters: {declared})") from None

    def _api(self, name: str) -> KubeApi | None:
        cluster = self.clusters.get(name)
        return cluster.api if cluster is not None else None

    def _watch(self, name: str, namespace: str, owner: dict[str, str]) -> PodWatch | None:
        cluster = self.clusters.get(name)
        return cluster.watch(namespace, owner) if cluster is not None else None

    def watches(self) -> Iterator[PodWatch]:
        for cluster in self.clusters.values():
            yield from cluster.watches.values()

    # --- metrics ----------------------------------------------------------------------------

    def metric_families(self) -> Iterator[Any]:
        pods = GaugeMetricFamily(
            "statevisor_cloud_pods", "Pods the watches see, by phase", labels=["cluster", "namespace", "phase"]
        )
        requests = CounterMetricFamily(
            "statevisor_cloud_api_requests",
            "Requests to the API server by verb and status code (error: no answer)",
            labels=["cluster", "verb", "code"],
        )
        restarts = CounterMetricFamily(
            "statevisor_cloud_watch_restarts",
            "Watches started over: expired (410, a new list) or error (reconnected)",
            labels=["cluster", "namespace", "why"],
        )
        connections = GaugeMetricFamily(
            "statevisor_cloud_watch_connections", "Watch requests open", labels=["cluster", "namespace"]
        )
        owed = GaugeMetricFamily(
            "statevisor_cloud_deletes_owed",
            "Pod deletes due and not yet accepted by the API server",
            labels=["cluster"],
        )
        scheduled = GaugeMetricFamily(
            "statevisor_cloud_deletes_scheduled", "Finished pods waiting for their ttl", labels=["cluster"]
        )
        streams = GaugeMetricFamily("statevisor_cloud_log_streams", "Pod logs followed live", labels=["cluster"])
        for name, cluster in self.clusters.items():
            for (verb, code), count in sorted(cluster.api.counts.items()):
                requests.add_metric([name, verb, code], count)
            for watch in cluster.watches.values():
                for phase, count in sorted(watch.phases().items()):
                    pods.add_metric([name, watch.namespace, phase], count)
                for why in ("expired", "error"):
                    restarts.add_metric([name, watch.namespace, why], watch.restarts[why])
                connections.add_metric([name, watch.namespace], 1 if watch.connected else 0)
            owed.add_metric([name], self.reaper.owed(name))
            scheduled.add_metric([name], self.reaper.scheduled(name))
            streams.add_metric([name], cluster.logs.following)
        yield from (pods, requests, restarts, connections, owed, scheduled, streams)

    def __repr__(self) -> str:
        return (
            f"<CloudExecutor clusters={len(self.clusters)} created={self.created} adopted={self.adopted} "
            f"owed_deletes={len(self.reaper.journal)}>"
        )
