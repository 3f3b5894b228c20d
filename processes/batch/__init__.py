"""The batch kind: HPC jobs on Slurm (and PBS, LSF, SGE) clusters, over SSH.

Build it with :func:`executors` (one per daemon: it owns the SSH connections) and
:class:`BatchJob` (the process type), both from the configuration's ``[host.NAME]`` tables.
"""

from pathlib import Path

from supervisor import Executor

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


__all__ = [
    "HostKeyMismatch", "HostUnreachable", "SchedulerError",
    "CANCEL", "LSF", "PBS", "SCHEDULERS", "SGE", "SUBMIT", "WAIT", "BatchExecutor", "BatchJob", "Completed",
    "HostPoller", "HostSpec", "JobReport", "JobSpec", "JobState", "JobStatus", "Phase", "SSHTransport",
    "Scheduler", "SimulatedBatch", "Slurm", "advance", "executors", "job_name", "job_script", "parse",
    "parse_host", "parse_hosts",
]  # fmt: skip
