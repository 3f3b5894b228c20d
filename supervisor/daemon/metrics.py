"""Prometheus metrics for a node, read from its counters at scrape time (no cost per transition).

Conventions: one ``statevisor_`` prefix, base units (seconds), counters end in ``_total``,
labels for dimensions (kind, lifecycle), never process ids.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from .._core.actions import TrackedAction
from .._core.process import Process
from .._supervision.node import Node
from .._supervision.summary import LIVE_LIFECYCLES
from ..web._console import WebStatistics
from .log import current_sink
from .metrics_http import MetricsServer, serve_metrics
from .watchdog import LoopWatchdog

ACTION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0, 86400.0)


class ActionObserver:
    """A runtime observer feeding the action latency histogram (the only per-event metric)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "statevisor_action_duration_seconds",
            "Time from dispatch to result of tracked actions",
            ["kind", "action_type", "outcome"],
            buckets=ACTION_BUCKETS,
            registry=registry,
        )

    def transition_error(self, process: Process) -> None:
        return None

    def action_done(self, process: Process, action: TrackedAction, seconds: float, ok: bool) -> None:
        self.latency.labels(process.kind, action.type, "succeeded" if ok else "failed").observe(seconds)

    def terminated(self, process: Process) -> None:
        return None


class NodeCollector(Collector):
    """Everything a node counts, as metric families."""

    def __init__(self, node: Node, connections: Any = None) -> None:
        self.node = node
        self.connections = connections  # a callable giving the control connections, if served

    def collect(self) -> Iterator[Any]:
        summary = self.node.summary()
        info = InfoMetricFamily("statevisor_build", "statevisor version")
        info.add_metric([], {"version": summary.version})
        yield info

        processes = GaugeMetricFamily("statevisor_processes", "Live processes", labels=["kind", "lifecycle"])
        paused_family = GaugeMetricFamily("statevisor_processes_paused", "Live processes paused", labels=["kind"])
        depth = GaugeMetricFamily("statevisor_mailbox_depth", "Inputs queued in mailboxes", labels=["kind"])
        for kind, counts in summary.kinds.items():
            for lifecycle in LIVE_LIFECYCLES:
                processes.add_metric([kind, str(lifecycle)], getattr(counts, str(lifecycle)))
            paused_family.add_metric([kind], counts.paused)
            depth.add_metric([kind], counts.queued_inputs)
        yield processes
        yield paused_family
        yield depth
        if self.connections is not None:
            yield GaugeMetricFamily("statevisor_control_connections", "Open control connections",
                                    value=self.connections())  # fmt: skip

        yield CounterMetricFamily("statevisor_transitions", "Transitions committed", value=summary.transitions)
        yield CounterMetricFamily(
            "statevisor_transition_errors", "Transitions that raised (rolled back)", value=summary.transition_errors
        )
        ended = CounterMetricFamily("statevisor_processes_ended", "Processes that ended", labels=["lifecycle"])
        for how, count in summary.ended.items():
            ended.add_metric([how], count)
        yield ended
        yield CounterMetricFamily("statevisor_restarts", "Restarts by supervisors", value=summary.restarts)
        yield GaugeMetricFamily(
            "statevisor_supervisors_failed",
            "Supervisors that failed (past their restart budget, or a bug): nothing under them is restarted",
            value=len(summary.failed_supervisors),
        )
        sink = current_sink()
        if sink is not None:
            yield CounterMetricFamily(
                "statevisor_log_lines_dropped",
                "Log lines lost: the log's reader did not keep up, or went away",
                value=sink.dropped,
            )
        quarantined = GaugeMetricFamily(
            "statevisor_quarantined_at_start",
            "Checkpoints this start moved to the quarantine, by why (corrupt, unknown_kind, newer_schema, "
            "migration_failed, revive_failed)",
            labels=["why"],
        )
        for why, count in sorted(summary.quarantined_why.items()):
            quarantined.add_metric([why], count)
        yield quarantined
        yield GaugeMetricFamily(
            "statevisor_children_given_up",
            "Declared processes left down after exceeding their own restart budget",
            value=summary.given_up,
        )

        store = self.node.store
        if store is not None:
            s = store.statistics()
            yield CounterMetricFamily("statevisor_checkpoint_batches", "Checkpoint transactions", value=s.batches)
            yield CounterMetricFamily("statevisor_checkpoint_records", "Checkpoints written", value=s.records)
            yield GaugeMetricFamily(
                "statevisor_checkpoint_last_batch_records",
                "Records in the last transaction",
                value=s.last_batch_size,
            )
            yield GaugeMetricFamily(
                "statevisor_checkpoint_last_commit_seconds", "Duration of the last transaction",
                value=s.last_commit_seconds,
            )  # fmt: skip
            yield GaugeMetricFamily("statevisor_checkpoint_queued", "Checkpoints waiting for a transaction",
                                    value=s.queued)  # fmt: skip
            yield GaugeMetricFamily(
                "statevisor_checkpoint_largest_bytes",
                "The largest checkpoint written since start (counted from 1 MiB; 0 below)",
                value=s.largest_record,
            )
            yield GaugeMetricFamily(
                "statevisor_store_bytes",
                "The store's database size, free pages included (every 10 s)",
                value=s.size_bytes,
            )
            yield GaugeMetricFamily(
                "statevisor_store_free_bytes",
                "Free pages in the store's database, given back 16 MiB every 10 s",
                value=s.free_bytes,
            )
            yield GaugeMetricFamily(
                "statevisor_store_file_problems",
                "Problems with the store's files that the daemon could not mend: its file replaced under it, "
                "a write-back that failed, its lock taken by another daemon (0 when fine)",
                value=len(s.file_problem.split(", ")) if s.file_problem else 0,
            )

        capacity = GaugeMetricFamily("statevisor_slots_capacity", "Slots per kind", labels=["kind"])
        used = GaugeMetricFamily("statevisor_slots_used", "Slots in use per kind", labels=["kind"])
        queued = GaugeMetricFamily("statevisor_slots_queued", "Actions waiting for a slot", labels=["kind"])
        for kind, slot in summary.slots.items():
            capacity.add_metric([kind], slot.capacity)
            used.add_metric([kind], slot.used)
            queued.add_metric([kind], slot.queued)
        yield capacity
        yield used
        yield queued


class ExecutorCollector(Collector):
    """Metric families of executors that keep their own (``metric_families()``): process kinds
    add metrics without the runtime knowing them."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        for executor in self.node.runtime.executors.unique():
            families = getattr(executor, "metric_families", None)
            if families is not None:
                yield from families()


class WebCollector(Collector):
    """The web console's counts (read on the loop, where the console keeps them)."""

    def __init__(self, statistics: Callable[[], WebStatistics | None]) -> None:
        self.statistics = statistics

    def collect(self) -> Iterator[Any]:
        stats = self.statistics()
        if stats is None:
            return
        yield GaugeMetricFamily("statevisor_web_streams", "Web console pages open now (their live event streams)",
                                value=stats.streams)  # fmt: skip
        yield CounterMetricFamily("statevisor_web_requests", "Requests the web console answered", value=stats.requests)
        yield CounterMetricFamily("statevisor_web_pushes", "Live updates written to the web console's pages",
                                  value=stats.pushes)  # fmt: skip
        actions = CounterMetricFamily(
            "statevisor_web_actions", "Control actions done from the web console, by action", labels=["action"]
        )
        for action, count in sorted(stats.actions.items()):
            actions.add_metric([action], count)
        yield actions
        refused = CounterMetricFamily("statevisor_web_refused", "Web console requests refused, by reason",
                                      labels=["reason"])  # fmt: skip
        for reason, count in sorted(stats.refused.items()):
            refused.add_metric([reason], count)
        yield refused


SCRAPE_TIMEOUT = 5.0
"""Seconds a scrape waits for the event loop to read the node (Prometheus's default scrape
timeout is 10 s); a loop that does not get to it in time fails the scrape, which says so."""


class OnLoop(Collector):
    """Runs the ``inner`` collectors' ``collect()`` on the event loop's thread, in one callback.

    The HTTP server answers scrapes on a thread of its own, while the runtime's dictionaries
    change on the loop's: read from the server's thread, a scrape during spawning failed with
    "dictionary changed size during iteration" (3 of 57 scrapes under churn). The loop reads its
    own state between two callbacks, so every scrape sees one consistent moment.
    """

    def __init__(self, inner: Sequence[Collector], loop: asyncio.AbstractEventLoop | None) -> None:
        self.inner = inner
        self.loop = loop

    def _read(self) -> list[Any]:
        return [family for collector in self.inner for family in collector.collect()]

    def collect(self) -> Iterator[Any]:
        if self.loop is None or _running_loop() is self.loop:  # no loop, or asked on it (in a coroutine)
            return iter(self._read())
        done: concurrent.futures.Future[list[Any]] = concurrent.futures.Future()

        def read() -> None:
            try:
                done.set_result(self._read())
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(read)
        return iter(done.result(timeout=SCRAPE_TIMEOUT))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class WatchdogCollector(Collector):
    """The loop watchdog's counts, read on the scrape's thread (they are plain numbers)."""

    def __init__(self, watchdog: LoopWatchdog) -> None:
        self.watchdog = watchdog

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(
            "statevisor_loop_stalls",
            "Times the event loop did not answer the watchdog in time (blocked)",
            value=self.watchdog.stalls,
        )
        yield CounterMetricFamily(
            "statevisor_loop_stalled_seconds",
            "Time the event loop spent in stalls",
            value=self.watchdog.stalled_seconds,
        )


def registry_for(
    node: Node,
    connections: Any = None,
    watchdog: LoopWatchdog | None = None,
    web: Callable[[], WebStatistics | None] | None = None,
    extra: Sequence[Collector] = (),
) -> CollectorRegistry:
    """The node's metrics (and ``extra`` collectors': a cluster member's); made on its event
    loop, they are read there at every scrape."""
    registry = CollectorRegistry(auto_describe=False)
    on_loop: list[Collector] = [NodeCollector(node, connections), ExecutorCollector(node)]
    if web is not None:
        on_loop.append(WebCollector(web))
    on_loop.extend(extra)
    registry.register(OnLoop(on_loop, _running_loop()))
    if watchdog is not None:
        registry.register(WatchdogCollector(watchdog))
    node.runtime.observers.append(ActionObserver(registry))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def start_metrics(
    node: Node,
    address: str,
    connections: Any = None,
    watchdog: LoopWatchdog | None = None,
    *,
    web: Callable[[], WebStatistics | None] | None = None,
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
    extra: Sequence[Collector] = (),
) -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (loopback by default), behind ``token`` and ``tls``
    when given; returns the server (``.close()``)."""
    name, _, port = address.rpartition(":")
    try:
        registry = registry_for(node, connections, watchdog, web, extra)
        return serve_metrics(registry, name.strip("[]"), int(port), token=token, tls=tls)
    except OSError as exc:  # the bare error ("Address already in use") does not say which address
        raise OSError(exc.errno, f"metrics on {address} (daemon.metrics): {exc.strerror or exc}") from None
