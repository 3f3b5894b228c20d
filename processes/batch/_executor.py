"""The batch executor: submits jobs idempotently, watches them in batches, cancels them for sure.

Two tracked actions make a job's life:

* ``batch.submit`` stages input files up (SFTP, size and SHA-256 checked) and submits the job
  script so that it lands once, whatever breaks (see :mod:`._submit` and :mod:`._claim`).
* ``batch.wait`` resolves when the job's state moves past the one its process knows (see
  :mod:`._poller`), and on the final state fetches output files back.

Kill cancels the job when the host answers within a few seconds; when it does not, the cancel is
recorded as owed (in a file, so a daemon restart still owes it) and settled in the background
once the host is back. Kill never waits on the retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import structlog

from supervisor import TrackedAction, TransportError, UntrackedAction

from ._hosts import HostSpec
from ._owed import OwedCancels
from ._poller import HostPoller
from ._states import JobState
from ._submit import BatchHost, Submitter
from ._transport import SSHTransport
from .errors import SchedulerError

log = structlog.get_logger("statevisor.batch")

SUBMIT = "batch.submit"
LATE_SUBMIT_WINDOW = 120.0
"""Seconds a cancel keeps looking for the job of a submit that was in flight when it came."""
WAIT = "batch.wait"
CANCEL = "batch.cancel"
"""Untracked: cancel a job whose process was killed with no action in flight (see on_kill)."""

_CANCEL_WAIT = 3.0  # how long kill waits for a reachable host to confirm a cancel


class BatchExecutor:
    """Executes ``batch.submit`` and ``batch.wait`` for every declared host."""

    idempotent = True
    uses_slot = False  # a job waits in the scheduler's queue, not in ours

    def __init__(self, hosts: dict[str, HostSpec], state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.submits = Submitter(self.state_dir / "submits")
        transports: dict[tuple[Any, ...], SSHTransport] = {}
        self.hosts: dict[str, BatchHost] = {}
        for name in _jump_order(hosts):
            spec = hosts[name]
            jump = self.hosts[spec.jump].transport if spec.jump else None
            # One connection per (address, port, user, route): two names for one login share it.
            key = (spec.address, spec.port, spec.user, spec.jump)
            transport = transports.get(key) or transports.setdefault(key, SSHTransport(spec, jump=jump))
            self.hosts[name] = BatchHost(spec, transport)
        self.owed = OwedCancels(self.state_dir / "owed-cancels.json")
        self._settling: asyncio.Task[None] | None = None
        self._cancels: dict[str, tuple[list[str], asyncio.Future[None]]] = {}
        self._flushing: set[asyncio.Task[None]] = set()

    # --- the executor protocol --------------------------------------------------------------

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        payload = action.payload
        host = self._host(payload["host"])
        self._settle_soon()
        if action.type == CANCEL:
            await self._cancel_or_owe(host, payload["target"])
            return None
        assert isinstance(action, TrackedAction)
        if action.type == SUBMIT:
            return await self.submits.submit(host, action.id, payload)
        if action.type == WAIT:
            return await self._wait(host, payload)
        raise ValueError(f"batch executor got an action of type {action.type!r}")

    async def cancel(self, action: TrackedAction) -> None:
        payload = action.payload
        host = self.hosts.get(payload.get("host", ""))
        if host is None:
            return
        job_id = payload.get("job_id") if action.type == WAIT else self.submits.journaled(action.id)
        if action.type == SUBMIT and not job_id and self.submits.journal_path(action.id).exists():
            # The submit got as far as sbatch and may still be in flight: a job of its name
            # can appear after the search below looked. Keep looking for a while.
            self._owe(host.spec.name, f"late:{payload['name']}:{time.time() + LATE_SUBMIT_WINDOW:.0f}")
        await self._cancel_or_owe(host, job_id or f"name:{payload['name']}")

    async def _cancel_or_owe(self, host: BatchHost, target: str) -> None:
        if host.transport.connected:
            try:
                await asyncio.wait_for(asyncio.shield(self._cancel_batched(host, target)), timeout=_CANCEL_WAIT)
                return
            except (TransportError, SchedulerError, TimeoutError) as exc:
                log.warning("batch_cancel_deferred", host=host.spec.name, job=target, error=str(exc) or repr(exc))
        self._owe(host.spec.name, target)

    def _cancel_batched(self, host: BatchHost, target: str) -> asyncio.Future[None]:
        """Cancels asked for within a few milliseconds of each other (killing many processes
        at once) go out as one scancel/qdel/bkill with every job id."""
        batch = self._cancels.get(host.spec.name)
        if batch is None:
            batch = self._cancels[host.spec.name] = ([], asyncio.get_running_loop().create_future())
            asyncio.get_running_loop().call_later(0.02, self._flush_cancels, host)
        batch[0].append(target)
        return batch[1]

    def _flush_cancels(self, host: BatchHost) -> None:
        targets, future = self._cancels.pop(host.spec.name)

        async def flush() -> None:
            try:
                await self._cancel_on(host, targets)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(None)

        task = asyncio.get_running_loop().create_task(flush())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)
        future.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)  # retrieved

    async def pause(self, action: TrackedAction) -> None:
        await self._hold(action, hold=True)

    async def resume(self, action: TrackedAction) -> None:
        await self._hold(action, hold=False)

    async def close(self) -> None:
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.gather(self._settling, return_exceptions=True)
        for host in self.hosts.values():
            await host.poller.close()
        for transport in {id(h.transport): h.transport for h in self.hosts.values()}.values():
            await transport.close()

    # --- wait -------------------------------------------------------------------------------

    async def _wait(self, host: BatchHost, payload: dict[str, Any]) -> dict[str, Any]:
        job_id = payload["job_id"]
        known = JobState(payload["known"])
        if job_id.startswith("gone:"):
            report_state, exit_code = await self._gone_status(host, payload["name"])
            result: dict[str, Any] = {
                "state": str(report_state),
                "native": "vanished",
                "held": False,
                "exit_code": exit_code,
                "vanished": True,
            }
        else:
            report = await host.poller.wait(job_id, payload["name"], known)
            result = report.payload()
        if JobState(result["state"]).final:
            for remote, local in payload.get("stage_out", ()):
                await host.transport.get(host.remote(remote), Path(local))
            if payload.get("submit_id"):
                self.submits.journal_path(payload["submit_id"]).unlink(missing_ok=True)
        return result

    async def _gone_status(self, host: BatchHost, name: str) -> tuple[JobState, int | None]:
        text = await host.status_file(name) or ""
        code = int(text) if text.lstrip("-").isdigit() else None
        return (JobState.COMPLETED if code == 0 else JobState.FAILED), code

    # --- cancel and hold --------------------------------------------------------------------

    async def _cancel_on(self, host: BatchHost, targets: list[str]) -> list[str]:
        """Cancel ``targets`` (job ids, ``name:N``, ``late:N:deadline``); returns the late ones
        still to look for (not found yet, deadline not passed)."""
        job_ids, lingering = [], []
        for target in targets:
            if target.startswith(("name:", "late:")):
                kind, name, deadline = [*target.split(":", 2), ""][:3]
                found = await self.submits.find(host, name)
                if found is not None and not found.startswith("gone:"):
                    job_ids.append(found)
                elif kind == "late" and deadline.isdigit() and time.time() < int(deadline):
                    lingering.append(target)
            elif not target.startswith("gone:"):
                job_ids.append(target)
        if not job_ids:
            return lingering
        argv = host.scheduler.cancel(job_ids)
        done = await host.transport.run(argv, check=False)
        if (
            done.exit_status != 0
            and not host.scheduler.unknown_jobs(done.exit_status, done.stderr)
            and "already completing or completed" not in done.stderr
        ):
            raise SchedulerError(" ".join(argv), done.exit_status, done.stderr)
        log.info("batch_jobs_cancelled", host=host.spec.name, jobs=job_ids)
        return lingering

    async def _hold(self, action: TrackedAction, *, hold: bool) -> None:
        if action.type != WAIT or action.payload.get("known") not in (JobState.QUEUED, JobState.NEW):
            return  # only a pending job can be held; a running one runs on (see the batch page of the manual)
        host = self.hosts.get(action.payload["host"])
        job_id = action.payload["job_id"]
        if host is None or job_id.startswith("gone:"):
            return
        scheduler = host.scheduler
        argv = scheduler.hold(job_id) if hold else scheduler.release(job_id)
        await host.transport.run(argv, check=False)

    # --- owed cancels -----------------------------------------------------------------------

    def _owe(self, host: str, target: str) -> None:
        self.owed.add(host, target)
        log.warning("batch_cancel_owed", host=host, job=target)
        self._settle_soon()

    def _settle_soon(self) -> None:
        if self.owed and (self._settling is None or self._settling.done()):
            with contextlib.suppress(RuntimeError):  # no running loop (constructed outside one)
                self._settling = asyncio.get_running_loop().create_task(self._settle())

    async def _settle(self) -> None:
        while self.owed:
            for name, targets in list(self.owed.items()):
                host = self.hosts.get(name)
                if host is None:
                    del self.owed[name]  # the host is no longer declared: nothing to cancel on
                    continue
                try:
                    lingering = await self._cancel_on(host, list(targets))
                except (TransportError, SchedulerError):
                    continue  # the transport spaces the next attempt
                targets[:] = lingering
                if not targets:
                    del self.owed[name]
                self.owed.save()
            if self.owed:
                await asyncio.sleep(min(h.spec.poll_interval for h in self.hosts.values()))

    # --- helpers ----------------------------------------------------------------------------

    def _host(self, name: str) -> BatchHost:
        try:
            return self.hosts[name]
        except KeyError:
            declared = ", ".join(sorted(self.hosts)) or "none"
            raise ValueError(f"no [host.{name}] is declared (hosts: {declared})") from None

    @property
    def submitted(self) -> int:
        """Jobs this executor submitted (each once: see :class:`Submitter`)."""
        return self.submits.submitted

    @property
    def found_existing(self) -> int:
        """Submits that found their job already there (landed by an earlier attempt)."""
        return self.submits.found_existing

    def transport(self, host: str) -> SSHTransport:
        return self._host(host).transport

    def poller(self, host: str) -> HostPoller:
        return self._host(host).poller

    def __repr__(self) -> str:
        owed = sum(len(v) for v in self.owed.values())
        return (
            f"<BatchExecutor hosts={len(self.hosts)} submitted={self.submits.submitted} "
            f"found_existing={self.submits.found_existing} claims_met={self.submits.claims_met} owed_cancels={owed}>"
        )


def _jump_order(hosts: dict[str, HostSpec]) -> list[str]:
    """Host names, each after its jump host (parse_hosts has ruled out cycles)."""
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered:
            return
        jump = hosts[name].jump
        if jump is not None:
            visit(jump)
        ordered.append(name)

    for name in hosts:
        visit(name)
    return ordered
