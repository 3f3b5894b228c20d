"""Submitting a job so that it lands once: the journal, the claim, the search by name.

Before submitting, the action id is noted in a local journal; an execution that finds the note
(a daemon crash, a retry after a broken connection) first asks the scheduler for a job of that
name. The submit itself runs under a claim on the host (:mod:`._claim`), so that an attempt
whose outcome was lost, and that lands late, and a new attempt cannot both submit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shlex
import time
from pathlib import Path
from typing import Any

import structlog

from supervisor import TransportError

from ._claim import (
    PROBE_INTERVAL,
    SETTLE_SECONDS,
    ClaimPaths,
    Outcome,
    Verdict,
    claimed,
    incomplete,
    parse_outcome,
    parse_probe,
    script_input,
)
from ._hosts import HostSpec
from ._poller import HostPoller
from ._schedulers import LSF, PBS, SGE, Scheduler, Slurm, check_job_id
from ._transport import SSHTransport
from .errors import HostKeyMismatch, SchedulerError

log = structlog.get_logger("statevisor.batch")

ADAPTERS: dict[str, type[Scheduler]] = {"slurm": Slurm, "pbs": PBS, "lsf": LSF, "sge": SGE}

_TRANSIENT = re.compile(
    r"contact slurm controller|timed out|temporarily unavailable|try again|connection refused|"
    r"Socket timed out|Zero Bytes were transmitted",
    re.IGNORECASE,
)


class BatchHost:
    """What the executor keeps per host: its transport, scheduler and poller."""

    def __init__(self, spec: HostSpec, transport: SSHTransport) -> None:
        self.spec = spec
        self.transport = transport
        self.scheduler: Scheduler = ADAPTERS[spec.scheduler]()
        self.poller = HostPoller(spec, transport, self.scheduler)
        self.ready = False  # the remote work directory exists

    def remote(self, path: str) -> str:
        """``path`` on the host: relative ones are in its work directory."""
        return path if path.startswith("/") else f"{self.spec.work_dir}/{path}"

    async def status_file(self, name: str) -> str | None:
        """What job ``name``'s script wrote to its status file (its exit status); None: no file."""
        done = await self.transport.run(["cat", self.spec.status_path(name)], check=False)
        return done.stdout.strip() if done.exit_status == 0 else None


class Submitter:
    """Submits jobs, each once, and keeps count."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory  # the journal: one file per submit action in flight
        self.submitted = 0
        self.found_existing = 0
        self.claims_met = 0  # submit attempts that found an earlier attempt's claim

    async def submit(self, host: BatchHost, action_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        name = payload["name"]
        journal = self.journal_path(action_id)
        known = self.journaled(action_id)
        if known:
            return {"job_id": known, "found": True}
        maybe_submitted = journal.exists()  # an earlier execution got as far as submitting
        if not maybe_submitted:
            journal.parent.mkdir(parents=True, exist_ok=True)
            journal.write_text("")
        paths = ClaimPaths.of(host.spec.work_dir, name)
        attempt = 0
        while True:
            refused = False  # the submit command ran under the claim and was refused
            try:
                await self._prepare(host)
                if maybe_submitted:
                    found = await self.find(host, name)
                    if found:
                        return self._found(journal, host, found, name)
                for local, remote in payload.get("stage_in", ()):
                    await host.transport.put(Path(local), host.remote(remote))
                argv = host.scheduler.submit(name, payload["comment"], host.spec.work_dir, payload.get("options", ()))
                maybe_submitted = True  # from here a broken connection leaves it unknown
                script = script_input(payload["script"])
                done = await host.transport.run(paths.submit_argv(argv), input=script, check=False, label=argv[0])
                if incomplete(done.exit_status, done.stderr):
                    raise TransportError(host.spec.name, "the job script arrived incomplete; nothing was submitted")
                if claimed(done.exit_status, done.stderr):
                    self.claims_met += 1
                    log.info("batch_submit_claimed", host=host.spec.name, name=name)
                    earlier = await self._settle_claim(host, paths, name)
                    if earlier is None:
                        continue  # nothing landed and the claim is free again: submit
                    if isinstance(earlier, str):
                        return self._found(journal, host, earlier, name)
                    outcome: Outcome | None = earlier  # an earlier attempt's submit ended: its outcome is ours
                    if earlier.exit_status == 0:
                        job_id = check_job_id(host.scheduler.parse_submit(earlier.stdout))
                        return self._found(journal, host, job_id, name)
                else:
                    outcome = parse_outcome(done.stdout)
                if outcome is None:  # the wrapper itself failed (no sh, work dir not writable)
                    raise SchedulerError("sh (submit wrapper)", done.exit_status, done.stderr or done.stdout)
                if outcome.exit_status != 0:
                    refused = True
                    raise SchedulerError(shlex.join(argv), outcome.exit_status, outcome.stderr or outcome.stdout)
                job_id = check_job_id(host.scheduler.parse_submit(outcome.stdout))
            except HostKeyMismatch:
                raise
            except (TransportError, SchedulerError) as exc:
                attempt += 1
                transient = isinstance(exc, TransportError) or bool(_TRANSIENT.search(exc.output))
                if refused:
                    # The submit command ran and was refused: nothing landed, so its claim is
                    # freed for the next attempt (or for nobody).
                    with contextlib.suppress(TransportError, SchedulerError):
                        await host.transport.run(paths.free_argv())
                if not transient:
                    journal.unlink(missing_ok=True)  # refused: nothing was submitted
                    raise
                if attempt > host.spec.retries:
                    if isinstance(exc, SchedulerError):  # the scheduler, not the job, is the problem
                        raise TransportError(host.spec.name, f"the scheduler does not answer: {exc}") from None
                    raise
                log.warning("batch_submit_retry", host=host.spec.name, name=name, attempt=attempt, error=str(exc))
                if not isinstance(exc, TransportError):
                    await asyncio.sleep(min(host.spec.backoff_max, 0.5 * 2**attempt))
                continue
            journal.write_text(job_id)
            self.submitted += 1
            return {"job_id": job_id, "found": False}

    def _found(self, journal: Path, host: BatchHost, job_id: str, name: str) -> dict[str, Any]:
        self.found_existing += 1
        journal.write_text(job_id)
        log.info("batch_job_found", host=host.spec.name, job=job_id, name=name)
        return {"job_id": job_id, "found": True}

    async def _settle_claim(self, host: BatchHost, paths: ClaimPaths, name: str) -> Outcome | str | None:
        """What became of the attempt holding ``name``'s claim (see :mod:`._claim`): its submit's
        outcome, the id of a job it landed (found by name), or None once the claim is free."""
        unsure_since = time.monotonic()
        while True:
            verdict, outcome = parse_probe((await host.transport.run(paths.probe_argv())).stdout)
            if outcome is not None:
                return outcome
            if verdict is Verdict.FREE:
                return None
            if verdict is Verdict.RUNNING:
                unsure_since = time.monotonic()
            waited = time.monotonic() - unsure_since
            if verdict is Verdict.DEAD or waited > SETTLE_SECONDS:
                found = await self.find(host, name)
                if found:
                    return found
                log.warning("batch_claim_freed", host=host.spec.name, name=name, owner=str(verdict), waited=waited)
                await host.transport.run(paths.free_argv())
                return None
            await asyncio.sleep(PROBE_INTERVAL)

    async def find(self, host: BatchHost, name: str) -> str | None:
        done = await host.transport.run(host.scheduler.find(name), check=False)
        if done.exit_status != 0 and not host.scheduler.unknown_jobs(done.exit_status, done.stderr):
            raise SchedulerError(" ".join(host.scheduler.find(name)), done.exit_status, done.stderr)
        ids = host.scheduler.parse_find(done.stdout, name)
        if ids:
            return check_job_id(ids[0])
        # Not in the queue. Its status file says whether it ran and has been forgotten since.
        if await host.status_file(name) is not None:
            return f"gone:{name}"
        return None

    async def _prepare(self, host: BatchHost) -> None:
        if not host.ready:
            await host.transport.run(["mkdir", "-p", "--", host.spec.work_dir])
            host.ready = True

    def journal_path(self, action_id: str) -> Path:
        return self.directory / hashlib.sha256(action_id.encode()).hexdigest()[:32]

    def journaled(self, action_id: str) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            return self.journal_path(action_id).read_text().strip() or None
        return None

    def __repr__(self) -> str:
        return (
            f"<Submitter submitted={self.submitted} found_existing={self.found_existing} claims_met={self.claims_met}>"
        )
