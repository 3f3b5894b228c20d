"""Scheduler adapters: the commands to run and the parsers for what they print.

An adapter does no I/O: it builds argv lists and parses text, so every parser is tested on
recorded output without a cluster. Output formats are always given explicitly on the command
line (and the transport unsets the environment variables that would override them), so a user's
``SQUEUE_FORMAT`` cannot break parsing.

Every job is submitted with a name that carries its action id (see :func:`job_name`), which is
how a restarted daemon finds a job it may have submitted just before it crashed.

The adapters: Slurm, and PBS Pro/Torque, LSF and SGE. Slurm and SGE are tested live against a
real single-node Slurm and a real Grid Engine, and on their recorded output. PBS Pro, Torque
and LSF cannot run on this machine: their parsers are tested on the output formats their
manuals document, and the PBS one also on output recorded from Slurm's Torque wrappers
(``slurm-wlm-torque``), which sites moving from Torque to Slurm keep (``tests/data/schedulers``).
Pause holds a pending job on each (``scontrol uhold``; ``qhold``; ``bstop`` on LSF, which suspends
a running job too); resume releases it (``scontrol release``; ``qrls``; ``bresume``).
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ElementTree
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


class PBS:
    """PBS Pro and Torque share ``qsub``/``qstat -f``/``qdel``/``qhold``/``qrls``.

    ``qstat -f`` lists finished jobs only while the server keeps them (``keep_completed`` on
    Torque, history on PBS Pro); after that the job's status file gives its exit status.
    """

    name = "pbs"
    _STATES: ClassVar[dict[str, JobState]] = {
        "Q": JobState.QUEUED,
        "H": JobState.QUEUED,
        "W": JobState.QUEUED,
        "T": JobState.QUEUED,
        "M": JobState.QUEUED,
        "R": JobState.ACTIVE,
        "E": JobState.ACTIVE,
        "S": JobState.ACTIVE,
        "U": JobState.ACTIVE,
        "B": JobState.ACTIVE,
        "C": JobState.COMPLETED,  # Torque: completed (Exit_status says how)
        "F": JobState.COMPLETED,  # PBS Pro: finished (Exit_status says how)
        "X": JobState.COMPLETED,
    }

    def submit(self, name: str, comment: str, work_dir: str, options: Sequence[str]) -> list[str]:
        return ["qsub", "-N", name, "-o", f"{work_dir}/{name}.out", "-e", f"{work_dir}/{name}.err", *options]

    def parse_submit(self, stdout: str) -> str:
        job_id = stdout.strip()
        if not re.fullmatch(r"\d+(\[\])?(\.[\w.-]+)?", job_id):
            raise ValueError(f"qsub printed no job id: {job_id!r}")
        return job_id

    def status(self, job_ids: Sequence[str]) -> list[str]:
        return ["qstat", "-f", *job_ids]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        jobs: dict[str, JobStatus] = {}
        for block in re.split(r"(?m)^Job Id:\s*", stdout)[1:]:
            lines = block.splitlines()
            job_id = lines[0].strip()
            attributes: dict[str, str] = {}
            key = ""
            # PBS Pro and Torque indent attributes by four spaces and wrap long values onto
            # tab-indented lines; Slurm's Torque wrappers (slurm-wlm-torque) indent attributes
            # by a tab and never wrap. Which one a block is decides what a tab line means.
            wraps = any(line.startswith("    ") for line in lines[1:])
            for line in lines[1:]:
                if key and wraps and line.startswith("\t"):
                    attributes[key] += line.strip()  # a long value wrapped onto the next line
                elif " = " in line and line[:1] in (" ", "\t"):
                    key, _, value = line.strip().partition(" = ")
                    attributes[key] = value.strip()
            native = attributes.get("job_state", "")
            if native not in self._STATES:
                raise ValueError(f"unknown PBS job state {native!r} for job {job_id}")
            state = self._STATES[native]
            code = attributes.get("Exit_status", attributes.get("exit_status"))
            exit_code = int(code) if code is not None and code.lstrip("-").isdigit() else None
            if state is JobState.COMPLETED and exit_code is not None and exit_code != 0:
                state = JobState.CANCELED if exit_code in (-12, 271) else JobState.FAILED  # qdel'd
            held = native == "H" or attributes.get("Hold_Types", "n") not in ("n", "")
            jobs[job_id] = JobStatus(job_id, state, native, held=held, exit_code=exit_code)
        return jobs

    def unknown_jobs(self, exit_status: int | None, stderr: str) -> bool:
        return all("Unknown Job Id" in line or "Job has finished" in line for line in stderr.strip().splitlines())

    def find(self, name: str) -> list[str]:
        return ["qselect", "-N", name]

    def parse_find(self, stdout: str, name: str) -> list[str]:
        return [line.strip() for line in stdout.splitlines() if line.strip()]

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]

    def hold(self, job_id: str) -> list[str]:
        return ["qhold", job_id]

    def release(self, job_id: str) -> list[str]:
        return ["qrls", job_id]


class LSF:
    """IBM Spectrum LSF: ``bsub``/``bjobs -o``/``bkill``/``bstop``/``bresume``."""

    name = "lsf"
    _FORMAT = "jobid stat exit_code delimiter='|'"
    _STATES: ClassVar[dict[str, JobState]] = {
        "PEND": JobState.QUEUED,
        "PSUSP": JobState.QUEUED,
        "WAIT": JobState.QUEUED,
        "PROV": JobState.QUEUED,
        "RUN": JobState.ACTIVE,
        "USUSP": JobState.ACTIVE,
        "SSUSP": JobState.ACTIVE,
        "UNKWN": JobState.ACTIVE,
        "DONE": JobState.COMPLETED,
        "EXIT": JobState.FAILED,
        "ZOMBI": JobState.FAILED,
    }

    def submit(self, name: str, comment: str, work_dir: str, options: Sequence[str]) -> list[str]:
        return [
            "bsub", "-J", name, "-Jd", comment, "-cwd", work_dir,
            "-o", f"{work_dir}/{name}.out", "-e", f"{work_dir}/{name}.err", *options,
        ]  # fmt: skip

    def parse_submit(self, stdout: str) -> str:
        found = re.search(r"Job <(\d+)> is submitted", stdout)
        if found is None:
            raise ValueError(f"bsub printed no job id: {stdout.strip()!r}")
        return found.group(1)

    def status(self, job_ids: Sequence[str]) -> list[str]:
        return ["bjobs", "-noheader", "-a", "-o", self._FORMAT, *job_ids]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        jobs: dict[str, JobStatus] = {}
        for line in stdout.splitlines():
            line = line.strip()
            if not line or line.startswith("Job <") or line == "No job found":
                continue  # bjobs mixes "Job <N> is not found" into its output
            parts = line.split("|")
            if len(parts) != 3:
                raise ValueError(f"bjobs line not in the format {self._FORMAT!r}: {line!r}")
            job_id, native, code = (p.strip() for p in parts)
            if native not in self._STATES:
                raise ValueError(f"unknown LSF job state {native!r} for job {job_id}")
            exit_code = int(code) if code.isdigit() else (0 if native == "DONE" else None)
            jobs[job_id] = JobStatus(job_id, self._STATES[native], native, held=native == "PSUSP", exit_code=exit_code)
        return jobs

    def unknown_jobs(self, exit_status: int | None, stderr: str) -> bool:
        lines = stderr.strip().splitlines()
        return all(re.search(r"is not found|No job found", line) for line in lines)

    def find(self, name: str) -> list[str]:
        return ["bjobs", "-noheader", "-a", "-J", name, "-o", self._FORMAT]

    def parse_find(self, stdout: str, name: str) -> list[str]:
        return list(self.parse_status(stdout))

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return ["bkill", *job_ids]

    def hold(self, job_id: str) -> list[str]:
        return ["bstop", job_id]

    def release(self, job_id: str) -> list[str]:
        return ["bresume", job_id]


class SGE:
    """(Son of / Univa / Altair) Grid Engine: ``qsub -terse``/``qstat -xml``/``qdel``/``qhold``/``qrls``.

    ``qstat`` lists pending and running jobs only; a job that left it has finished, and its
    status file gives the exit status (``qacct`` is often not readable by users).
    """

    name = "sge"

    def submit(self, name: str, comment: str, work_dir: str, options: Sequence[str]) -> list[str]:
        return [
            "qsub", "-terse", "-N", name, "-wd", work_dir,
            "-o", f"{work_dir}/{name}.out", "-e", f"{work_dir}/{name}.err", *options,
        ]  # fmt: skip

    def parse_submit(self, stdout: str) -> str:
        job_id = stdout.strip().split(".", 1)[0]  # array jobs print "N.1-10:1"
        if not job_id.isdigit():
            raise ValueError(f"qsub -terse printed no job id: {stdout.strip()!r}")
        return job_id

    def status(self, job_ids: Sequence[str]) -> list[str]:
        # qstat cannot select several ids in one call; it lists our user's jobs, we pick ours.
        return ["qstat", "-xml"]

    def parse_status(self, stdout: str) -> dict[str, JobStatus]:
        jobs: dict[str, JobStatus] = {}
        try:
            root = ElementTree.fromstring(stdout)
        except ElementTree.ParseError as exc:
            raise ValueError(f"qstat -xml printed no XML: {exc}") from None
        for job in root.iter("job_list"):
            job_id = job.findtext("JB_job_number", "").strip()
            native = job.findtext("state", "").strip()
            if not job_id or not native:
                raise ValueError(f"qstat -xml job entry without a number or state: {ElementTree.tostring(job)!r}")
            if "E" in native:
                state = JobState.FAILED  # an error state: it will not run without an operator
            elif "d" in native:
                state = JobState.CANCELED
            elif any(c in native for c in "rtsSTR"):
                state = JobState.ACTIVE
            elif "q" in native or "w" in native or "h" in native:
                state = JobState.QUEUED
            else:
                raise ValueError(f"unknown SGE job state {native!r} for job {job_id}")
            jobs[job_id] = JobStatus(job_id, state, native, held="h" in native)
        return jobs

    def unknown_jobs(self, exit_status: int | None, stderr: str) -> bool:
        return False  # qstat -xml lists what exists; it does not fail for jobs that do not

    def find(self, name: str) -> list[str]:
        return ["qstat", "-xml"]

    def parse_find(self, stdout: str, name: str) -> list[str]:
        try:
            root = ElementTree.fromstring(stdout)
        except ElementTree.ParseError as exc:
            raise ValueError(f"qstat -xml printed no XML: {exc}") from None
        return [
            job.findtext("JB_job_number", "").strip()
            for job in root.iter("job_list")
            if job.findtext("JB_name", "").strip() == name
        ]

    def cancel(self, job_ids: Sequence[str]) -> list[str]:
        return ["qdel", *job_ids]

    def hold(self, job_id: str) -> list[str]:
        return ["qhold", job_id]

    def release(self, job_id: str) -> list[str]:
        return ["qrls", job_id]
