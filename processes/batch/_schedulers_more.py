"""PBS Pro/Torque, LSF and SGE adapters (see :mod:`._schedulers` for the interface).

SGE is tested live against a real Grid Engine (``loopback_sge``) and on its recorded output. PBS
Pro, Torque and LSF cannot run on this machine: their parsers are tested on the output formats
their manuals document, and the PBS one also on output recorded from Slurm's Torque wrappers
(``slurm-wlm-torque``), which sites moving from Torque to Slurm keep (``tests/data/schedulers``).
Pause holds a pending job on each (``qhold``; ``bstop`` on LSF, which suspends a running job
too); resume releases it (``qrls``; ``bresume``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from typing import ClassVar

from ._states import JobState, JobStatus


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
