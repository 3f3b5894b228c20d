"""The loopback Slurm + sshd the batch tests run against (it lives in the package: the slurm
benchmark starts one too), and the Node those tests build on the hosts they declare."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from processes.batch import BatchExecutor, BatchJob, executors, parse_hosts
from supervisor import Node
from tests.services.loopback import wait_for
from tests.services.slurm import Cluster, Sshd, missing_programs

__all__ = ["Cluster", "Sshd", "batch_host", "missing_programs", "spawn_job", "wait_for"]


def batch_host(tables: Mapping[str, Mapping[str, Any]], tmp_path: Path) -> tuple[Node, BatchExecutor]:
    """A Node (not started, no store) running batch processes on the ``[host.NAME]`` ``tables``,
    and its batch executor."""
    hosts = parse_hosts(tables)
    made = executors(hosts, tmp_path / "batch")
    executor = made["batch.submit"]
    assert isinstance(executor, BatchExecutor)
    return Node(machines=[BatchJob(hosts)], executors=made, kill_grace=10.0, store=None), executor


def spawn_job(host: Node, argv: list[str], *, on: str = "cluster", **settings: Any) -> Any:
    """Spawn a batch process running ``argv`` on the declared host ``on``."""
    return host.spawn("batch", {"host": on, "argv": argv, **settings})
