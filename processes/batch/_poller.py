"""Batched polling: one status command per host per poll interval, however many jobs it tracks.

Every process waiting on a job registers a watch here; the poller of the job's host asks the
scheduler about all watched jobs at once, and resolves each watch whose job moved past the state
its process already knows. Jobs that reached a final state (or vanished from the queue, which
means the same) have their exit status read from their status files, again in one command.

Transport failures are retried: the transport spaces the attempts (backoff with jitter). After
``retries`` failed polls in a row the watches fail with the last error, and their processes
pause with it as the reason; resuming them watches again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field
from typing import Any

import structlog

from supervisor import TransportError

from ._hosts import HostSpec
from ._schedulers import Scheduler, Slurm
from ._script import STATUS_READER, parse_status_files
from ._states import JobState, JobStatus, advance
from ._transport import SSHTransport
from .errors import SchedulerError

log = structlog.get_logger("statevisor.batch")


@dataclass(frozen=True, slots=True)
class JobReport:
    """What a watch resolves with: the job's state now (and its exit status once final)."""

    state: JobState
    native: str
    held: bool = False
    exit_code: int | None = None
    vanished: bool = False  # the scheduler no longer lists it (finished; exit from the file)

    def payload(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "native": self.native,
            "held": self.held,
            "exit_code": self.exit_code,
            "vanished": self.vanished,
        }


@dataclass(slots=True)
class _Watch:
    job_id: str
    name: str
    known: JobState
    future: asyncio.Future[JobReport] = field(repr=False)


class HostPoller:
    """Tracks every watched job of one host with one status command per ``poll_interval``."""

    def __init__(self, host: HostSpec, transport: SSHTransport, scheduler: Scheduler) -> None:
        self.host = host
        self.transport = transport
        self.scheduler = scheduler
        self._watches: dict[int, _Watch] = {}
        self._seq = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._accounting: bool | None = None if isinstance(scheduler, Slurm) else False
        self.polls = 0
        self.status_commands = 0
        self.failures = 0  # consecutive failed polls

    def __len__(self) -> int:
        return len(self._watches)

    async def wait(self, job_id: str, name: str, known: JobState) -> JobReport:
        """The job's state once it differs from ``known`` (or is final)."""
        future: asyncio.Future[JobReport] = asyncio.get_running_loop().create_future()
        self._seq += 1
        key = self._seq
        self._watches[key] = _Watch(job_id, name, known, future)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        else:
            self._wake.set()  # a new job: do not let it wait a whole interval for its first look
        try:
            return await future
        finally:
            self._watches.pop(key, None)

    async def _run(self) -> None:
        while self._watches:
            self._wake.clear()
            pause = self.host.poll_interval
            try:
                await self.poll()
                self.failures = 0
            except (TransportError, SchedulerError, ValueError) as exc:
                # A controller restarting, sshd gone, a garbled line: all retried alike, with
                # backoff, until the budget says the processes should pause and say why.
                self.failures += 1
                log.warning("batch_poll_failed", host=self.host.name, error=str(exc), failures=self.failures)
                if self.failures > self.host.retries:
                    self._fail_all(exc)
                    self.failures = 0
                    continue
                pause = min(self.host.backoff_max, pause * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
            except Exception as exc:  # a bug: the jobs' waits fail with it, never hang on a dead poller
                log.exception("batch_poll_crashed", host=self.host.name)
                self._fail_all(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=pause)

    async def poll(self) -> None:
        """One status command for every watched job; resolve the watches whose job moved."""
        watches = list(self._watches.values())
        if not watches:
            return
        job_ids = sorted({w.job_id for w in watches}, key=_job_order)
        self.polls += 1
        statuses = await self._status(job_ids)
        ended: dict[str, JobReport] = {}
        for watch in watches:
            if watch.future.done():
                continue
            status = statuses.get(watch.job_id)
            if status is None:
                report = JobReport(JobState.COMPLETED, "vanished", vanished=True)
            else:
                report = JobReport(advance(watch.known, status.state), status.native, status.held, status.exit_code)
            if report.state.final:
                ended[watch.job_id] = report
            elif report.state is not watch.known:
                watch.future.set_result(report)
        if ended:
            await self._finish(ended, watches)

    async def _status(self, job_ids: list[str]) -> dict[str, JobStatus]:
        scheduler = self.scheduler
        if isinstance(scheduler, Slurm) and self._accounting is not False:
            self.status_commands += 1
            done = await self.transport.run(scheduler.accounting(job_ids), check=False)
            if done.exit_status == 0:
                self._accounting = True
                return scheduler.parse_accounting(done.stdout)
            if scheduler.accounting_disabled(done.stderr):
                self._accounting = False  # no accounting here: squeue from now on
                log.info("batch_no_accounting", host=self.host.name)
            else:
                raise SchedulerError("sacct", done.exit_status, done.stderr)
        self.status_commands += 1
        done = await self.transport.run(scheduler.status(job_ids), check=False)
        if done.exit_status != 0:
            if scheduler.unknown_jobs(done.exit_status, done.stderr):
                return scheduler.parse_status(done.stdout)
            raise SchedulerError(" ".join(scheduler.status(job_ids)[:3]) + " ...", done.exit_status, done.stderr)
        return scheduler.parse_status(done.stdout)

    async def _finish(self, ended: dict[str, JobReport], watches: list[_Watch]) -> None:
        """Read the exit status files of the jobs that ended, then resolve their watches."""
        names = {w.job_id: w.name for w in watches if w.job_id in ended}
        paths = {job_id: self.host.status_path(name) for job_id, name in names.items()}
        done = await self.transport.run(["sh", "-c", STATUS_READER, "sh", *paths.values()], check=False)
        codes = parse_status_files(done.stdout)
        for watch in watches:
            report = ended.get(watch.job_id)
            if report is None or watch.future.done():
                continue
            code = codes.get(paths[watch.job_id])
            exit_code = code if code is not None else report.exit_code
            state = report.state
            if state is JobState.COMPLETED and exit_code not in (0, None):
                state = JobState.FAILED
            if report.vanished and code is None and exit_code is None:
                # Gone from the queue without a status file: cancelled before it ran, or its
                # node died. Either way it did not complete.
                state = JobState.FAILED
            watch.future.set_result(JobReport(state, report.native, report.held, exit_code, report.vanished))

    def _fail_all(self, exc: Exception) -> None:
        for watch in list(self._watches.values()):
            if not watch.future.done():
                watch.future.set_exception(exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def __repr__(self) -> str:
        return (
            f"<HostPoller {self.host.name} watches={len(self._watches)} polls={self.polls} "
            f"status_commands={self.status_commands} failures={self.failures}>"
        )


def _job_order(job_id: str) -> tuple[int, str]:
    head = job_id.split(".", 1)[0]
    return (int(head) if head.isdigit() else 0, job_id)
