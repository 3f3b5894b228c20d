"""The shell executor: runs a command for a ``shell.run`` action, idempotently, and controls it.

The run monitor (:mod:`._monitor`) starts the commands and collects their exit status; the
executor asks it over :class:`._link.MonitorLink` and watches. ``execute`` is idempotent by the
run monitor's journal (see :mod:`._journal`): executing an action id a second time (after a daemon
crash) attaches to the command that the first execution started, or reads how it ended, and
never starts it again. ``cancel`` (kill) stops the command's whole process group: the stop
signal, ``stop_grace`` seconds, then SIGKILL. ``pause``/``resume`` send SIGSTOP/SIGCONT to the
group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from supervisor import TrackedAction, UntrackedAction
from supervisor.lowlevel import rotate_log, tail_lines

from ._journal import ended_entry, marker
from ._launch import (
    become_subreaper,
    find_by_marker,
    is_our_child,
    reap_child,
    reap_orphans,
    signal_group,
    start_time,
    wait_exit,
)
from ._link import MonitorLink, MonitorLost
from ._outcome import Outcome, Started
from ._request import run_request
from ._settings import CommandSpec
from .errors import CommandLost

log = structlog.get_logger("statevisor.shell")

RUN = "shell.run"
"""The tracked action that runs one command to its end."""

CLEANUP = "shell.cleanup"
"""The untracked action that removes a run directory once its result is durable."""

_NEVER = Started(-1, -1, 0.0)  # a run with no note of its start

KEEPER_GRACE = 2.0
"""How long a command's recorded end is waited for after it ended unwatched (see ``_keeper``)."""


@dataclass(slots=True)
class _Run:
    action_id: str
    spec: CommandSpec
    started: Started
    request: dict[str, Any] | None = field(default=None, repr=False)
    reason: str = "exited"
    ending: asyncio.Future[Outcome] | None = field(default=None, repr=False)
    stopping: asyncio.Task[None] | None = field(default=None, repr=False)
    # Whether the logs may have been rotated since the command started: unknown (True) for a
    # run this executor attached to, False for one it started until it rotates one of its logs.
    rotated: bool = True


class ShellExecutor:
    """Executes ``shell.run`` (tracked) and ``shell.cleanup`` (untracked) actions."""

    idempotent = True

    def __init__(self, runs: Path, *, rotate_every: float = 0.25) -> None:
        self.runs = Path(runs).resolve()
        self.rotate_every = rotate_every
        self.monitor = MonitorLink(self.runs)
        self._home = os.getcwd()  # a command without cwd runs where the daemon was started
        self._active: dict[str, _Run] = {}
        self._groups: dict[int, float] = {}  # process groups whose orphans we still reap -> until
        self._reaping: asyncio.TimerHandle | None = None
        self._rotator: asyncio.Task[None] | None = None
        self.subreaper = become_subreaper()
        self.spawned = 0
        self.attached = 0

    # --- the executor protocol --------------------------------------------------------------

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        if action.type == CLEANUP:
            await self.monitor.forget(str(action.payload))
            return None
        assert isinstance(action, TrackedAction)
        current = self._active.get(action.id)
        if current is not None and current.ending is not None:
            # Executed again while this executor still watches it (a restore racing a watch).
            return self._result(current, await asyncio.shield(current.ending))
        spec = CommandSpec.from_payload(action.payload)
        run = await self._begin(action.id, spec)
        self._active[action.id] = run
        self._ensure_rotator()
        try:
            outcome = await self._watch(run)
        finally:
            if self._active.get(action.id) is run:
                del self._active[action.id]
        result = self._result(run, outcome)
        await self._rotate(run)  # a fast writer may have overshot the cap since the last check
        return result

    async def cancel(self, action: TrackedAction) -> None:
        run = await self._find_run(action)
        if run is None:
            return
        run.reason = "killed"
        await self._stop(run)

    async def pause(self, action: TrackedAction) -> None:
        run = await self._find_run(action)
        if run is not None:
            signal_group(run.started.pid, signal.SIGSTOP)

    async def resume(self, action: TrackedAction) -> None:
        run = await self._find_run(action)
        if run is not None:
            signal_group(run.started.pid, signal.SIGCONT)

    async def close(self) -> None:
        """Stop the log rotator and let go of the monitor (host shutdown). Commands run on;
        the next start re-attaches."""
        if self._reaping is not None:
            self._reaping.cancel()
            self._reaping = None
        if self._rotator is not None:
            self._rotator.cancel()
            await asyncio.gather(self._rotator, return_exceptions=True)
        await self.monitor.close(wait=not self._active)

    # --- starting and attaching -------------------------------------------------------------

    async def _begin(self, action_id: str, spec: CommandSpec) -> _Run:
        """Have the monitor start the run, or find it started; the run, with its ending."""
        request = run_request(action_id, spec, self._home)
        reply, exited = await self.monitor.run(action_id, request)
        kind = reply["kind"]
        run = _Run(action_id, spec, _NEVER, request)
        loop = asyncio.get_running_loop()
        if kind == "setup":
            log.warning("command_setup_failed", action=action_id, step=reply["what"], detail=reply["detail"])
            run.ending = loop.create_future()
            run.ending.set_result(Outcome.setup_failed(reply["what"], time.time()))
            return run
        if kind in ("started", "running"):
            run.started = Started(*reply["started"])
            if kind == "started":
                self.spawned += 1
                run.rotated = False
            else:
                self.attached += 1
            run.ending = loop.create_task(self._ending(run, exited))
            return run
        # "exists": claimed before, and not running under the current monitor.
        started = Started(*reply["started"]) if reply["started"] else None
        if reply["ended"] is not None:
            run.started = started or _NEVER
            run.ending = loop.create_future()
            run.ending.set_result(Outcome.from_event(reply["ended"]))
            return run
        if started is not None and _gone(started):
            # Ended while no monitor watched it. Its keeper may have recorded how, or be about
            # to: settled here, before a timeout long past could be taken for the reason it ended.
            run.started = started
            run.ending = loop.create_future()
            run.ending.set_result(await self._recorded_end(run))
            return run
        run.started = started if started is not None else self._find_unnoted(action_id)
        self.attached += 1
        run.ending = loop.create_task(self._ending(run, None))
        return run

    def _find_unnoted(self, action_id: str) -> Started:
        """The command of a run whose monitor died between claiming it and noting the spawn:
        the command, if it started, names the run in its environment."""
        pid = find_by_marker(marker(str(self.runs), action_id))
        ticks = start_time(pid) if pid is not None else None
        if pid is None or ticks is None:
            raise CommandLost(
                f"the run monitor died while starting the command of {action_id!r}; whether it "
                "ran is unknown, so it is not started again"
            )
        return Started(pid, ticks, time.time())

    async def _ending(self, run: _Run, exited: asyncio.Future[dict[str, Any]] | None) -> Outcome:
        """How the run ends: from the monitor's exit event; if the monitor goes away, from the
        monitor that serves the directory next, or from the process itself."""
        while exited is not None:
            try:
                return Outcome.from_event(await exited)
            except MonitorLost:
                assert run.request is not None
                reply, exited = await self.monitor.run(run.action_id, run.request)
                if reply["kind"] == "exists" and reply["ended"] is not None:
                    return Outcome.from_event(reply["ended"])
                if reply["kind"] != "running":
                    exited = None
        pid = run.started.pid
        await self._exited(run)
        # Its monitor died: we (a child subreaper, and the monitor's parent) inherited it.
        reaped = reap_child(pid)
        if reaped is not None:
            self._track_group(pid)
            return Outcome.from_event(ended_entry(*reaped))
        return await self._recorded_end(run)

    async def _recorded_end(self, run: _Run) -> Outcome:
        """The end recorded in the journal for a command that ended while no monitor watched it:
        its monitor's keeper writes it once it has reaped the command, a moment after the
        command is gone; CommandLost when nothing comes within ``KEEPER_GRACE``."""
        deadline = time.monotonic() + KEEPER_GRACE
        while True:
            known = await self.monitor.query(run.action_id)
            if known["kind"] == "exists" and known["ended"] is not None:
                return Outcome.from_event(known["ended"])
            if time.monotonic() >= deadline:
                raise CommandLost(
                    f"the command of {run.action_id!r} (pid {run.started.pid}) ended while no monitor watched "
                    "it and left no exit status (its monitor and the monitor's keeper were killed, or the "
                    "machine rebooted)"
                )
            await asyncio.sleep(0.05)  # the keeper's one write: a bounded wait, not a guess

    async def _find_run(self, action: TrackedAction) -> _Run | None:
        """The watched run of ``action``, or its still-running command as the monitor knows it."""
        if action.id in self._active:
            return self._active[action.id]
        known = await self.monitor.query(action.id)
        if known["kind"] not in ("running", "exists") or not known["started"] or known.get("ended"):
            return None
        started = Started(*known["started"])
        if _gone(started):
            return None
        return _Run(action.id, CommandSpec.from_payload(action.payload), started)

    # --- watching and stopping --------------------------------------------------------------

    async def _watch(self, run: _Run) -> Outcome:
        assert run.ending is not None
        timeout = run.spec.timeout
        if timeout is not None and not run.ending.done():
            left = max(0.0, run.started.wall + timeout - time.time())
            done, _ = await asyncio.wait({run.ending}, timeout=left)
            if not done:
                run.reason = "timeout"
                await self._stop(run)
        outcome = await asyncio.shield(run.ending)
        if run.stopping is not None:
            await asyncio.shield(run.stopping)
        return outcome

    async def _stop(self, run: _Run) -> None:
        if run.stopping is None:
            run.stopping = asyncio.ensure_future(self._stop_group(run))
        await asyncio.shield(run.stopping)

    async def _stop_group(self, run: _Run) -> None:
        pid = run.started.pid
        if pid <= 0 or (not is_our_child(pid) and _gone(run.started)):
            return  # not started, or ended (and the pid perhaps reused): nothing of ours to signal
        ending: asyncio.Future[Any] | None = run.ending
        if ending is None:  # found through the monitor, not watched here: watch the process itself
            ending = asyncio.ensure_future(self._exited(run))
        signal_group(pid, run.spec.stop_signal)
        signal_group(pid, signal.SIGCONT)  # a paused group cannot act on the stop signal
        done, _ = await asyncio.wait({ending}, timeout=run.spec.stop_grace)
        if not done:
            log.warning("command_stop_escalated", pid=pid, grace=run.spec.stop_grace)
            signal_group(pid, signal.SIGKILL)
            await asyncio.wait({ending}, timeout=5.0)
        if run.ending is None:
            ending.cancel()

    @staticmethod
    async def _exited(run: _Run) -> bool:
        """Wait until the run's command has exited (False at once when it is not there)."""
        pid = run.started.pid
        return await wait_exit(pid, None if is_our_child(pid) else run.started.ticks)

    def _track_group(self, pid: int) -> None:
        """A group whose leader we reaped: its orphans come to us as they die; reap them for a
        while (one pass covers every group that ended meanwhile: /proc reads are the cost)."""
        self._groups[pid] = time.monotonic() + 10.0
        if self.subreaper and self._reaping is None:
            self._reaping = asyncio.get_running_loop().call_later(0.1, self._reap)

    def _reap(self) -> None:
        self._reaping = None
        now = time.monotonic()
        while self._groups:
            group, until = next(iter(self._groups.items()))  # insertion order is expiry order
            if until >= now:
                break
            del self._groups[group]
        if self.subreaper:
            reap_orphans(self._groups)
            if self._groups and self._reaping is None:
                self._reaping = asyncio.get_running_loop().call_later(1.0, self._reap)

    def _ensure_rotator(self) -> None:
        if self._rotator is None or self._rotator.done():
            self._rotator = asyncio.get_running_loop().create_task(self._rotate_periodically())

    async def _rotate_periodically(self) -> None:
        while self._active:
            await asyncio.sleep(self.rotate_every)
            for run in list(self._active.values()):
                await self._rotate(run)
            self._reap()

    async def _rotate(self, run: _Run) -> None:
        spec = run.spec
        for path in spec.log_paths():
            with contextlib.suppress(OSError):
                if os.stat(path).st_size > spec.log_max_bytes:
                    run.rotated = True  # before the rotation: a result read meanwhile looks in the backup
                    await asyncio.to_thread(rotate_log, Path(path), spec.log_max_bytes, spec.log_backups)

    # --- results ----------------------------------------------------------------------------

    def _result(self, run: _Run, outcome: Outcome) -> dict[str, Any]:
        spec = run.spec
        reason = f"setup failed: {outcome.setup}" if outcome.setup is not None else run.reason
        stdout, stderr = spec.stdout, spec.stderr_path
        return {
            "exit_code": outcome.exit_code,
            "signal": outcome.signal_name,
            "reason": reason,
            "pid": run.started.pid,
            "started": run.started.wall,
            "ended": max(outcome.ended, run.started.wall),  # file times are coarse (a clock tick)
            "user_cpu": outcome.user,
            "system_cpu": outcome.system,
            "stdout_tail": _tail(stdout, spec.tail_lines, run.rotated),
            "stderr_tail": _tail(stderr, spec.tail_lines, run.rotated),
        }

    def __repr__(self) -> str:
        return (
            f"<ShellExecutor {self.runs} active={len(self._active)} spawned={self.spawned} "
            f"attached={self.attached} subreaper={self.subreaper}>"
        )


def _gone(started: Started) -> bool:
    """The run's command is no longer running, checked by pid *and* start time (a reused pid
    does not match)."""
    return start_time(started.pid) != started.ticks


def _tail(path: str | None, lines: int, rotated: bool) -> list[str]:
    """A result's last lines of a log; none when it cannot be read (the exit status, which the
    result is for, must not be lost over a log the daemon may not read)."""
    if not path:
        return []
    try:
        return tail_lines(path, lines, rotated=rotated)
    except OSError as exc:
        log.warning("log_tail_unreadable", path=path, error=str(exc))
        return []
