"""Scheduler adapters: the commands to run and the parsers for what they print.

An adapter does no I/O: it builds argv lists and parses text, so every parser is tested on
recorded output without a cluster. Output formats are always given explicitly on the command
line (and the transport unsets the environment variables that would override them), so a user's
``SQUEUE_FORMAT`` cannot break parsing.

Every job is submitted with a name that carries its action id (see :func:`job_name`), which is
how a restarted daemon finds a job it may have submitted just before it crashed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import ClassVar, Protocol

from ._states import JobState, JobStatus


def job_name(action_id: str) -> str:
    """A scheduler-safe job name unique to the action: ``sv-`` + a digest of its id.

    Digests keep it short (PBS allows 15 characters in some versions, LSF and SGE dislike
    ``/`` and ``:``); the exact ids travel in the job's comment, where the scheduler has one.
    """
    return "sv-" + hashlib.sha256(action_id.encode()).hexdigest()[:12]


class Scheduler(Protocol):
    name: str

    def submit(self, name: str, comment: str, work_dir: str, options: Sequence[str]) -> list[str]:
        """argv that submits the script given on stdin."""
        ...

    def parse_submit(self, stdout: str) -> str:
        """The job id the submit command printed."""
        ...

    def status(self, job_ids: Sequence[str]) -> list[str]:
        """argv that reports every job in ``job_ids`` (one command, however many)."""
        ...

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        """Jobs by id; a job the scheduler no longer lists is absent."""
        ...

    def unknown_jobs(self, exit_status: int | None, stderr: str) -> bool:
        """Whether a failed status command only means "none of these jobs is known any more"."""
        ...

    def find(self, name: str) -> list[str]:
        """argv that lists the jobs named ``name``."""
        ...

    def parse_find(self, stdout: str, name: str) -> list[str]:
        """The ids of the jobs named ``name`` that :meth:`find` listed."""
        ...

    def cancel(self, job_ids: Sequence[str]) -> list[str]: ...

    def hold(self, job_id: str) -> list[str]: ...

    def release(self, job_id: str) -> list[str]: ...


class Slurm:
    """Slurm: ``sbatch``/``squeue``/``scancel``/``scontrol``; ``sacct`` where accounting runs.

    Pause holds a pending job (``scontrol uhold``) and resume releases it; a running job runs on
    (``scontrol suspend`` needs operator rights on most clusters).
    """

    name = "slurm"
    _FORMAT = "%i|%T|%r"

    _STATES: ClassVar[dict[str, JobState]] = {
        "PENDING": JobState.QUEUED,
        "REQUEUED": JobState.QUEUED,
        "REQUEUE_HOLD": JobState.QUEUED,
        "REQUEUE_FED": JobState.QUEUED,
        "RESV_DEL_HOLD": JobState.QUEUED,
        "CONFIGURING": JobState.ACTIVE,
        "RUNNING": JobState.ACTIVE,
        "COMPLETING": JobState.ACTIVE,
        "SUSPENDED": JobState.ACTIVE,
        "STOPPED": JobState.ACTIVE,
        "SIGNALING": JobState.ACTIVE,
        "STAGE_OUT": JobState.ACTIVE,
        "RESIZING": JobState.ACTIVE,
        "COMPLETED": JobState.COMPLETED,
        "CANCELLED": JobState.CANCELED,
        "FAILED": JobState.FAILED,
        "TIMEOUT": JobState.FAILED,
        "NODE_FAIL": JobState.FAILED,
        "OUT_OF_MEMORY": JobState.FAILED,
        "BOOT_FAIL": JobState.FAILED,
        "DEADLINE": JobState.FAILED,
        "PREEMPTED": JobState.FAILED,
        "SPECIAL_EXIT": JobState.FAILED,
        "REVOKED": JobState.CANCELED,
    }

    def submit(self, name: str, comment: str, work_dir: str, options: Sequence[str]) -> list[str]:
        return [
            "sbatch",
            "--parsable",
            f"--job-name={name}",
            f"--comment={comment}",
            f"--chdir={work_dir}",
            f"--output={work_dir}/{name}.out",
            f"--error={work_dir}/{name}.err",
            *options,
        ]

    def parse_submit(self, stdout: str) -> str:
        # --parsable prints "<id>" or "<id>;<cluster>"
        first = stdout.strip().splitlines()[0] if stdout.strip() else ""
        job_id = first.split(";", 1)[0]
        if not job_id.isdigit():
            raise ValueError(f"sbatch printed no job id: {stdout.strip()!r}")
        return job_id

    def status(self, job_ids: Sequence[str]) -> list[str]:
        return ["squeue", "--noheader", "--states=all", f"--jobs={','.join(job_ids)}", f"--format={self._FORMAT}"]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        jobs: dict[str, JobStatus] = {}
        for line in stdout.splitlines():
            if not line.strip():
                continue
            parts = line.strip().split("|")
            if len(parts) != 3:
                raise ValueError(f"squeue line not in the format {self._FORMAT!r}: {line!r}")
            job_id, native, reason = parts
            if "_" in job_id or "+" in job_id:
                continue  # array elements and heterogeneous components: we submit neither
            jobs[job_id] = JobStatus(
                job_id, self._map(native), native, held=reason.startswith("JobHeld"), reason=reason
            )
        return jobs

    def unknown_jobs(self, exit_status: int | None, stderr: str) -> bool:
        return "Invalid job id specified" in stderr

    def find(self, name: str) -> list[str]:
        return ["squeue", "--noheader", "--states=all", f"--name={name}", f"--format={self._FORMAT}"]

    def parse_find(self, stdout: str, name: str) -> list[str]:
        return list(self.parse_status(stdout))

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return ["scancel", *job_ids]

    def hold(self, job_id: str) -> list[str]:
        # uhold: a user hold, which the job's owner can release (root's plain hold is an admin hold)
        return ["scontrol", "uhold", job_id]

    def release(self, job_id: str) -> list[str]:
        return ["scontrol", "release", job_id]

    # sacct: where accounting runs, it still knows jobs squeue has forgotten
    def accounting(self, job_ids: Sequence[str]) -> list[str]:
        return [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={','.join(job_ids)}",
            "--format=JobID,State,ExitCode",
        ]

    def parse_accounting(self, stdout: str) -> dict[str, JobStatus]:
        jobs: dict[str, JobStatus] = {}
        for line in stdout.splitlines():
            if not line.strip():
                continue
            parts = line.strip().split("|")
            if len(parts) != 3:
                raise ValueError(f"sacct line not in the format JobID|State|ExitCode: {line!r}")
            job_id, native, exit_code = parts
            word = native.split()[0] if native else ""  # "CANCELLED by 0"
            code, _, _signal = exit_code.partition(":")
            jobs[job_id] = JobStatus(job_id, self._map(word), native, exit_code=int(code) if code.isdigit() else None)
        return jobs

    def accounting_disabled(self, stderr: str) -> bool:
        return "accounting storage is disabled" in stderr

    def _map(self, native: str) -> JobState:
        try:
            return self._STATES[native]
        except KeyError:
            raise ValueError(f"unknown Slurm job state {native!r}") from None


def unknown_state(scheduler: str, native: str) -> ValueError:
    return ValueError(f"unknown {scheduler} job state {native!r}")


_JOB_ID = re.compile(r"^\d+(\.[\w.-]+)?$")


def check_job_id(job_id: str) -> str:
    """Job ids go on command lines: accept only what schedulers print (digits, ``.server``)."""
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return job_id
