"""The shell executor: runs a command for a ``shell.run`` action, idempotently, and controls it.

``execute`` is idempotent by the run directory (see :mod:`._rundir`): executing an action id a
second time (after a daemon crash) attaches to the command that the first execution started,
or reads how it ended, and never starts it again. ``cancel`` (kill) stops the command's whole
process group: the stop signal, ``stop_grace`` seconds, then SIGKILL. ``pause``/``resume``
send SIGSTOP/SIGCONT to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from supervisor import CommandLost, CommandNotFound, TrackedAction, UntrackedAction, tail_lines

from ._launch import (
    become_subreaper,
    find_wrapper,
    reap,
    reap_orphans,
    signal_group,
    spawn_wrapper,
    start_time,
    wait_exit,
    wrapper_script,
)
from ._logs import open_log, rotate_if_needed
from ._rundir import RunDir, Started
from ._settings import LIMITS, CommandSpec

log = structlog.get_logger("statevisor.shell")

RUN = "shell.run"
"""The tracked action that runs one command to its end."""

CLEANUP = "shell.cleanup"
"""The untracked action that removes a run directory once its result is durable."""

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

_NEVER = Started(-1, -1, 0.0)  # a run with no note of its start


@dataclass(slots=True)
class _Run:
    action_id: str
    spec: CommandSpec
    run_dir: RunDir
    started: Started
    reason: str = "exited"
    stopping: asyncio.Task[None] | None = field(default=None, repr=False)


class ShellExecutor:
    """Executes ``shell.run`` (tracked) and ``shell.cleanup`` (untracked) actions."""

    idempotent = True

    def __init__(self, runs: Path, *, rotate_every: float = 0.25) -> None:
        self.runs = Path(runs)
        self.rotate_every = rotate_every
        self._active: dict[str, _Run] = {}
        self._groups: dict[int, float] = {}  # process groups whose orphans we still reap -> until
        self._children: set[int] = set()  # wrappers we spawned and have not reaped yet
        self._reaping: asyncio.TimerHandle | None = None
        self._rotator: asyncio.Task[None] | None = None
        self.subreaper = become_subreaper()
        self.spawned = 0
        self.attached = 0

    # --- the executor protocol --------------------------------------------------------------

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        if action.type == CLEANUP:
            RunDir(self.runs, str(action.payload)).remove()
            return None
        assert isinstance(action, TrackedAction)
        spec = CommandSpec.from_payload(action.payload)
        run_dir = RunDir(self.runs, action.id)
        if run_dir.create():
            started = self._start(run_dir, spec)
        else:
            found = self._attach(run_dir)
            if found is None:
                if run_dir.status() is not None:  # it ended while nobody watched: how it ended
                    return self._result(_Run(action.id, spec, run_dir, run_dir.started() or _NEVER))
                if run_dir.begun():
                    raise CommandLost(
                        f"the command (wrapper pid {(run_dir.started() or _NEVER).pid}) ended while the daemon "
                        f"was not watching and left no exit status in {run_dir.path} (its wrapper was "
                        "killed, or the machine rebooted)"
                    )
                # The wrapper never reached the command (the daemon died right after creating
                # the directory, or the wrapper was killed before it began): this is its first
                # and only start.
                run_dir.remove()
                run_dir.create()
                found = self._start(run_dir, spec)
            started = found
        run = _Run(action.id, spec, run_dir, started)
        self._active[action.id] = run
        self._ensure_rotator()
        try:
            await self._watch(run)
        finally:
            if self._active.get(action.id) is run:
                del self._active[action.id]
        result = self._result(run)
        await self._rotate(run)  # a fast writer may have overshot the cap since the last check
        return result

    async def cancel(self, action: TrackedAction) -> None:
        run = self._find_run(action)
        if run is None:
            return
        run.reason = "killed"
        await self._stop(run)

    async def pause(self, action: TrackedAction) -> None:
        run = self._find_run(action)
        if run is not None:
            signal_group(run.started.pid, signal.SIGSTOP)

    async def resume(self, action: TrackedAction) -> None:
        run = self._find_run(action)
        if run is not None:
            signal_group(run.started.pid, signal.SIGCONT)

    async def close(self) -> None:
        """Stop the log rotator (host shutdown). Commands run on; the next start re-attaches."""
        if self._reaping is not None:
            self._reaping.cancel()
            self._reaping = None
        if self._rotator is not None:
            self._rotator.cancel()
            await asyncio.gather(self._rotator, return_exceptions=True)

    # --- starting and attaching -------------------------------------------------------------

    def _start(self, run_dir: RunDir, spec: CommandSpec) -> Started:
        env = self._environment(spec)
        try:
            _check_executable(spec, env)
        except CommandNotFound:
            run_dir.remove()  # nothing started: a later execution may try again
            raise
        stdin = os.open(run_dir.write_stdin(spec.stdin) if spec.stdin is not None else os.devnull, os.O_RDONLY)
        stdout = open_log(Path(spec.stdout)) if spec.stdout else os.open(os.devnull, os.O_WRONLY)
        stderr = stdout if spec.stderr == "stdout" else open_log(Path(spec.stderr)) if spec.stderr else stdout
        wall = time.time()  # before the spawn: a quick command may end before spawn returns
        try:
            script = wrapper_script(spec.limits or {}, spec.umask, LIMITS)
            pid = spawn_wrapper(script, run_dir.path, spec.cwd, spec.argv, env, stdin, stdout, stderr)
        except OSError:
            run_dir.remove()
            raise
        finally:
            for fd in {stdin, stdout, stderr}:
                os.close(fd)
        ticks = start_time(pid)
        started = Started(pid, ticks if ticks is not None else -1, wall)
        run_dir.note_started(started.pid, started.ticks, started.wall)
        self.spawned += 1
        self._children.add(pid)
        return started

    def _attach(self, run_dir: RunDir) -> Started | None:
        """The run's wrapper if it still runs (checked by pid *and* start time), else None."""
        started = run_dir.started()
        if started is None:
            # The daemon died between creating the directory and noting the spawn: look for
            # the wrapper by its command line, which names this run directory.
            pid = find_wrapper(run_dir.path)
            ticks = start_time(pid) if pid is not None else None
            if pid is None or ticks is None:
                return None
            started = Started(pid, ticks, time.time())
            run_dir.note_started(pid, ticks, started.wall)
        elif start_time(started.pid) != started.ticks:
            return None  # ended (or the pid now belongs to someone else)
        self.attached += 1
        return started

    def _find_run(self, action: TrackedAction) -> _Run | None:
        """The watched run of ``action``, or its still-running command found on disk."""
        if action.id in self._active:
            return self._active[action.id]
        run_dir = RunDir(self.runs, action.id)
        started = run_dir.started()
        if started is None or start_time(started.pid) != started.ticks:
            return None
        return _Run(action.id, CommandSpec.from_payload(action.payload), run_dir, started)

    # --- watching and stopping --------------------------------------------------------------

    async def _watch(self, run: _Run) -> None:
        timeout = run.spec.timeout
        waiting = self._exited(run)
        try:
            if timeout is None:
                await waiting
            else:
                left = max(0.0, run.started.wall + timeout - time.time())
                done, _ = await asyncio.wait({waiting}, timeout=left)
                if not done:
                    run.reason = "timeout"
                    await self._stop(run)
                    await asyncio.wait({waiting}, timeout=5.0)
        finally:
            waiting.cancel()
        if run.stopping is not None:
            await asyncio.shield(run.stopping)  # it finishes the group itself
        else:
            self._finish_group(run)

    async def _stop(self, run: _Run) -> None:
        if run.stopping is None:
            run.stopping = asyncio.ensure_future(self._stop_group(run))
        await asyncio.shield(run.stopping)

    async def _stop_group(self, run: _Run) -> None:
        pid = run.started.pid
        signal_group(pid, run.spec.stop_signal)
        signal_group(pid, signal.SIGCONT)  # a paused group cannot act on the stop signal
        ended = self._exited(run)
        try:
            done, _ = await asyncio.wait({ended}, timeout=run.spec.stop_grace)
            if not done:
                log.warning("command_stop_escalated", pid=pid, grace=run.spec.stop_grace)
                signal_group(pid, signal.SIGKILL)
                await asyncio.wait({ended}, timeout=5.0)
        finally:
            ended.cancel()
        self._finish_group(run)

    def _exited(self, run: _Run) -> asyncio.Future[bool]:
        """Resolves when the run's wrapper has exited. An unreaped child of ours cannot have had
        its pid reused, so only another's wrapper is checked by start time."""
        pid = run.started.pid
        return asyncio.ensure_future(wait_exit(pid, None if pid in self._children else run.started.ticks))

    def _finish_group(self, run: _Run) -> None:
        """The wrapper has exited: kill what is left of its group, reap what we can."""
        pid = run.started.pid
        if pid in self._children or start_time(pid) in (run.started.ticks, None):
            # The group id cannot be reused while the wrapper is an unreaped zombie or while any
            # member lives, so this reaches only leftovers of this command (none, usually).
            signal_group(pid, signal.SIGKILL)
        reap(pid)
        self._children.discard(pid)
        self._groups[pid] = time.monotonic() + 10.0
        if self.subreaper and self._reaping is None:
            # Orphans of the group come to us as they die: reap them soon (one pass covers
            # every group that ended meanwhile: /proc reads are the cost here).
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
                    await asyncio.to_thread(rotate_if_needed, Path(path), spec.log_max_bytes, spec.log_backups)

    # --- results ----------------------------------------------------------------------------

    def _result(self, run: _Run) -> dict[str, Any]:
        spec, run_dir = run.spec, run.run_dir
        status = run_dir.status()
        exit_code: int | None = None
        signum: int | None = None
        reason = run.reason
        ended = time.time()
        if status is None:
            signum = int(signal.SIGKILL)  # the wrapper died with the group: only SIGKILL does that
        elif status[0] == "setup":
            reason = f"setup failed: {status[1]}"
            ended = max(status[2], run.started.wall)  # file times are coarse (a clock tick)
        else:
            code = int(status[1])
            ended = max(status[2], run.started.wall)
            if code > 128 and code - 128 < signal.NSIG:
                signum = code - 128
            else:
                exit_code = code
        user, system = run_dir.cpu_times()
        stdout, stderr = spec.stdout, spec.stderr_path
        return {
            "exit_code": exit_code,
            "signal": signal.Signals(signum).name if signum else None,
            "reason": reason,
            "pid": run.started.pid,
            "started": run.started.wall,
            "ended": ended,
            "user_cpu": user,
            "system_cpu": system,
            "stdout_tail": tail_lines(Path(stdout), spec.tail_lines) if stdout else [],
            "stderr_tail": tail_lines(Path(stderr), spec.tail_lines) if stderr else [],
        }

    def _environment(self, spec: CommandSpec) -> dict[str, str]:
        env = dict(os.environ) if spec.inherit_env else {"PATH": DEFAULT_PATH}
        for name in spec.env_unset:
            env.pop(name, None)
        env.update(spec.env)
        return env

    def __repr__(self) -> str:
        return (
            f"<ShellExecutor {self.runs} active={len(self._active)} spawned={self.spawned} "
            f"attached={self.attached} subreaper={self.subreaper}>"
        )


def _check_executable(spec: CommandSpec, env: dict[str, str]) -> None:
    """Refuse a missing or non-executable program before anything starts (a clear error)."""
    program = spec.argv[0]
    if "/" in program:
        path = Path(spec.cwd or ".") / program if not os.path.isabs(program) else Path(program)
        if not path.is_file():
            raise CommandNotFound(f"{program!r}: no such file")
        if not os.access(path, os.X_OK):
            raise CommandNotFound(f"{program!r}: not executable (mode {path.stat().st_mode & 0o777:o})")
    elif shutil.which(program, path=env.get("PATH", DEFAULT_PATH)) is None:
        raise CommandNotFound(f"{program!r}: not found on PATH ({env.get('PATH', DEFAULT_PATH)})")
    if spec.cwd is not None and not os.path.isdir(spec.cwd):
        raise CommandNotFound(f"cwd {spec.cwd!r}: no such directory")
