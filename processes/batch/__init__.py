"""The batch kind: HPC jobs on Slurm (and PBS, LSF, SGE) clusters, over SSH.

Build it with :func:`executors` (one per daemon: it owns the SSH connections) and
:class:`BatchJob` (the process type), both from the configuration's ``[host.NAME]`` tables.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Executor
from supervisor.lowlevel import KindSetup

from ._executor import CANCEL, SUBMIT, WAIT, BatchExecutor
from ._hosts import SCHEDULERS, HostSpec, parse_host, parse_hosts
from ._machine import BatchJob, Phase
from ._poller import HostPoller, JobReport
from ._schedulers import LSF, PBS, SGE, Scheduler, Slurm, job_name
from ._script import job_script
from ._settings import JobSpec, parse
from ._sim import SimulatedBatch
from ._states import JobState, JobStatus, advance
from ._transport import Completed, SSHTransport
from .errors import HostKeyMismatch, HostUnreachable, SchedulerError


def executors(hosts: dict[str, HostSpec], state_dir: Path) -> dict[str, Executor]:
    """One executor for every batch action type, sharing connections and pollers."""
    executor = BatchExecutor(hosts, state_dir)
    return {SUBMIT: executor, WAIT: executor, CANCEL: executor}


class BatchKind:
    """The batch kind as a daemon builds it: the clusters' login hosts from the configuration's
    ``[host.NAME]`` tables (one SSH connection each, shared by every job), its records (job
    scripts, owed cancels, submit journals) under ``<run_dir>/batch``."""

    machine = BatchJob
    tables = ("host",)
    action_types = (SUBMIT, WAIT, CANCEL)

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        parse_hosts(tables.get("host", {}), base)

    def build(self, setup: KindSetup) -> tuple[BatchJob, Mapping[str, Executor]]:
        hosts = parse_hosts(setup.tables.get("host", {}), setup.config_dir)
        return BatchJob(hosts), executors(hosts, setup.run_dir / "batch")


KIND = BatchKind()
"""The entry point of group ``statevisor.kinds`` named ``batch``."""


__all__ = [
    "KIND", "BatchKind",
    "HostKeyMismatch", "HostUnreachable", "SchedulerError",
    "CANCEL", "LSF", "PBS", "SCHEDULERS", "SGE", "SUBMIT", "WAIT", "BatchExecutor", "BatchJob", "Completed",
    "HostPoller", "HostSpec", "JobReport", "JobSpec", "JobState", "JobStatus", "Phase", "SSHTransport",
    "Scheduler", "SimulatedBatch", "Slurm", "advance", "executors", "job_name", "job_script", "parse",
    "parse_host", "parse_hosts",
]  # fmt: skip
