"""A cluster member's Prometheus metrics (``statevisor_cluster_*``), read at scrape time.

Per daemon: its standing, the members it sees and their leases, the processes it owns, what it
took over and dropped, fenced writes, its checkpoint writes and their latency, the requests it
routed and served. For the cluster: the same series from every member, summed or maxed in the
queries (the dashboards in ``config/grafana/`` do).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from .member import ClusterMember
from .membership import Standing
from .routing import Router
from .store import Latency


class ClusterCollector(Collector):
    """Everything a member counts. ``router()`` gives the member's router once it has one;
    ``rejoins()`` how often this daemon joined again after losing its lease."""

    def __init__(
        self, member: ClusterMember, router: Callable[[], Router | None], rejoins: Callable[[], int] = lambda: 0
    ) -> None:
        self.member = member
        self.router = router
        self.rejoins = rejoins

    def collect(self) -> Iterator[Any]:
        member = self.member
        membership = member.membership
        info = InfoMetricFamily("statevisor_cluster", "The cluster this daemon is a member of, and its node name")
        info.add_metric([], {"cluster": member.settings.name, "node": member.node_name})
        yield info
        yield GaugeMetricFamily(
            "statevisor_cluster_lease_seconds", "The cluster's lease: a member silent this long is gone",
            value=member.settings.lease,
        )  # fmt: skip
        standing = GaugeMetricFamily(
            "statevisor_cluster_standing", "1 for this daemon's standing in its cluster", labels=["standing"]
        )
        for value in Standing:
            standing.add_metric([str(value)], 1.0 if member.standing is value else 0.0)
        yield standing
        live = membership.live() if membership is not None else []
        yield GaugeMetricFamily("statevisor_cluster_members", "Live members this daemon sees", value=len(live))
        leases = GaugeMetricFamily(
            "statevisor_cluster_lease_remaining_seconds",
            "Seconds left of each live member's lease, as this daemon last saw its heartbeat",
            labels=["member"],
        )
        for name, fields in member.status()["members"].items():
            leases.add_metric([name], float(fields["lease_left"]))
        yield leases
        node = member.node
        yield GaugeMetricFamily(
            "statevisor_cluster_processes_owned", "Processes this daemon owns and runs",
            value=len(node.runtime) if node is not None else 0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "statevisor_cluster_failovers", "Departed members whose processes this daemon took a share of",
            value=member.failovers,
        )  # fmt: skip
        yield CounterMetricFamily(
            "statevisor_cluster_processes_taken", "Processes taken over from departed members", value=member.taken
        )
        yield CounterMetricFamily(
            "statevisor_cluster_processes_dropped", "Copies dropped here because another member had taken them",
            value=member.dropped,
        )  # fmt: skip
        yield CounterMetricFamily(
            "statevisor_cluster_departures", "Members seen leaving or lapsing",
            value=membership.departures if membership is not None else 0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "statevisor_cluster_heartbeats", "Heartbeats of this daemon that landed",
            value=membership.beats if membership is not None else 0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "statevisor_cluster_heartbeat_failures", "Heartbeats of this daemon that did not land",
            value=membership.beat_failures if membership is not None else 0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "statevisor_cluster_last_failover_seconds",
            "Seconds the latest take-over of a departed member's processes took here, from seeing it gone",
            value=member.last_failover_seconds,
        )
        yield CounterMetricFamily(
            "statevisor_cluster_rejoins", "Times this daemon lost its lease and joined again", value=self.rejoins()
        )
        store = member.store
        if store is not None:
            yield CounterMetricFamily(
                "statevisor_cluster_fenced_writes", "Checkpoint writes refused: the process is another member's",
                value=store.fenced,
            )  # fmt: skip
            yield CounterMetricFamily(
                "statevisor_cluster_store_writes", "Checkpoints written to the cluster's store", value=store.writes
            )
            yield CounterMetricFamily(
                "statevisor_cluster_store_write_failures", "Checkpoint writes that failed (NATS unreachable, slow)",
                value=store.failed_writes,
            )  # fmt: skip
            yield _histogram(
                "statevisor_cluster_store_write_seconds", "Latency of checkpoint writes to the cluster's store",
                store.latency(),
            )  # fmt: skip
        router = self.router()
        if router is not None:
            yield CounterMetricFamily(
                "statevisor_cluster_routed_requests", "Control requests sent to the member owning the process",
                value=router.routed,
            )  # fmt: skip
            yield CounterMetricFamily(
                "statevisor_cluster_served_requests", "Control requests other members sent here", value=router.served
            )
            yield CounterMetricFamily(
                "statevisor_cluster_route_failures",
                "Routed requests that failed for the cluster's sake (moving, owner lost, unreachable)",
                value=router.route_failures,
            )
            yield _histogram(
                "statevisor_cluster_routed_seconds",
                "Latency of requests routed to the member owning the process (streams left out)",
                router.latency(),
            )
            p99 = router.latency_p99()
            yield GaugeMetricFamily(
                "statevisor_cluster_routed_latency_p99_seconds",
                "99th percentile latency of the latest routed requests (streams left out)",
                value=p99 if p99 is not None else 0.0,
            )


def _histogram(name: str, documentation: str, latency: Latency) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation)
    buckets = [("+Inf" if bound == float("inf") else repr(bound), count) for bound, count in latency.buckets]
    family.add_metric([], buckets, latency.total)
    return family
