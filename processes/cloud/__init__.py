"""The cloud kind: each process runs one pod on a Kubernetes cluster, created on demand.

Build it with :func:`executors` (one per daemon: it owns the clusters' clients, watches and
records) and :class:`CloudPod` (the process type), both from the configuration's
``[kubernetes.NAME]`` tables.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Executor
from supervisor.lowlevel import KindSetup

from ._api import KubeApi, RateLimit, backoff, classify, request_verb
from ._clusters import ClusterSpec, check_credentials, load_config, parse_cluster, parse_clusters
from ._executor import ACTION_TYPES, CREATE, DELETE, RELEASE, WAIT, CloudExecutor
from ._logs import LogCollector, timestamp_ns
from ._machine import CloudPod, Phase
from ._reaper import Delete, DeleteJournal, Reaper
from ._settings import PodSettings, identity, manifest, merge, parse, pod_name, selector
from ._sim import SimulatedCloud
from ._status import PodView, Problem, Waiting
from ._watch import PodWatch
from .errors import (
    AlreadyExists,
    ApiRefused,
    ApiUnreachable,
    CredentialsRejected,
    Expired,
    Forbidden,
    KubeconfigError,
    NotFound,
    PodConflict,
    QuotaExceeded,
)


def executors(clusters: Mapping[str, ClusterSpec], state_dir: Path) -> dict[str, Executor]:
    """One executor for every cloud action type, sharing clients, watches and records."""
    executor = CloudExecutor(clusters, state_dir)
    return dict.fromkeys(ACTION_TYPES, executor)


class CloudKind:
    """The cloud kind as a daemon builds it: the clusters from the configuration's
    ``[kubernetes.NAME]`` tables (one client, and one watch per namespace, each), pods' logs
    under the daemon's ``log_dir``, its records (owed deletes) under ``<run_dir>/cloud``."""

    machine = CloudPod
    tables = ("kubernetes",)
    action_types = ACTION_TYPES

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        for spec in parse_clusters(tables.get("kubernetes", {}), base).values():
            check_credentials(spec)

    def build(self, setup: KindSetup) -> tuple[CloudPod, Mapping[str, Executor]]:
        clusters = parse_clusters(setup.tables.get("kubernetes", {}), setup.config_dir)
        return CloudPod(clusters, setup.log_dir), executors(clusters, setup.run_dir / "cloud")


KIND = CloudKind()
"""The entry point of group ``statevisor.kinds`` named ``cloud``."""


__all__ = [
    "KIND", "CloudKind",
    "AlreadyExists", "ApiRefused", "ApiUnreachable", "CredentialsRejected", "Expired", "Forbidden",
    "KubeconfigError", "NotFound", "PodConflict", "QuotaExceeded",
    "ACTION_TYPES", "CREATE", "DELETE", "RELEASE", "WAIT", "CloudExecutor", "CloudPod", "ClusterSpec", "Delete",
    "DeleteJournal", "KubeApi", "LogCollector", "Phase", "PodSettings", "PodView", "PodWatch", "Problem",
    "RateLimit", "Reaper", "SimulatedCloud", "Waiting", "backoff", "check_credentials", "classify", "executors",
    "identity", "load_config", "manifest", "merge", "parse", "parse_cluster", "parse_clusters", "pod_name",
    "request_verb", "selector", "timestamp_ns",
]  # fmt: skip
