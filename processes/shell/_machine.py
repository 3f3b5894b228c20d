"""The shell process type: run one command to its end; succeed or fail by its exit code.

Its state is its settings (see :mod:`._settings`) plus a few keys of its own, prefixed with
``_``. It runs the command as one tracked ``shell.run`` action, so a daemon crash re-issues the
same action id after restart, and the executor re-attaches instead of running it again.
Restarts (a new run) are the supervisor's business: restart types and backoff apply to shell
processes as to any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from supervisor import ActionFailed, ActionSucceeded, Context, Control, ControlEvent, Input, Machine, SettingsError

from ._executor import CLEANUP, RUN
from ._settings import parse


class Phase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    ENDED = "ended"


class Shell(Machine[dict[str, Any]]):
    """A local command (argv list; a shell only when ``shell = true``) in its own process group.

    ``log_dir`` is where ``<name>.out.log`` and ``<name>.err.log`` go unless the settings name
    other files (``stdout``/``stderr``; ``stderr = "stdout"`` merges them).
    """

    kind = "shell"
    action_types = (RUN, CLEANUP)
    local_paths = ("cwd",)  # stdout/stderr are relative to log_dir instead
    secret_keys = frozenset({"env"})  # snapshots show which variables are set, not their values
    movable = False  # its command runs on this machine, under this daemon's run monitor
    phases = Phase
    edges: ClassVar[Mapping[str, Mapping[str, str]]] = {
        Phase.STARTING: {Phase.RUNNING: "run", Phase.ENDED: "invalid"},
        Phase.RUNNING: {Phase.ENDED: "exit"},
    }

    def __init__(self, log_dir: str | Path = "logs") -> None:
        self.log_dir = Path(log_dir).resolve()

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        parse(settings)

    @classmethod
    def resolve_paths(cls, settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
        resolved = super().resolve_paths(settings, base)
        files = resolved.get("env_files")
        if isinstance(files, dict):
            resolved["env_files"] = {name: cls.local_path(path, base) for name, path in files.items()}
        return resolved

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control(event=ControlEvent.STARTED):
                try:
                    spec = parse(state)
                except SettingsError as exc:
                    ctx.goto(Phase.ENDED)
                    ctx.fail(f"invalid settings: {exc}")
                    return
                payload = spec.payload()
                stem = ctx.name  # the runtime admits no name that would lead out of log_dir
                logs = str(self.log_dir)  # os.path.join: an absolute file named in the settings stays
                payload["stdout"] = os.path.join(logs, spec.stdout or f"{stem}.out.log")
                if spec.stderr != "stdout":
                    payload["stderr"] = os.path.join(logs, spec.stderr or f"{stem}.err.log")
                state["_stdout"] = payload["stdout"]
                state["_stderr"] = payload["stderr"]
                if ctx.name == ctx.pid:  # unnamed: files named after the pid are this process's alone
                    state["_owned_logs"] = [
                        payload[stream]
                        for stream, named in (("stdout", spec.stdout), ("stderr", spec.stderr))
                        if named is None and payload.get(stream)
                    ]
                state["_run"] = ctx.track(RUN, payload)
                state["_started"] = ctx.now
                ctx.goto(Phase.RUNNING)
            case ActionSucceeded(action_type="shell.run", value=result):
                state["result"] = result
                ctx.goto(Phase.ENDED)
                ctx.emit(CLEANUP, input.action_id)  # after the checkpoint: the result is durable
                codes = state.get("success_codes", [0])
                if result["reason"] == "exited" and result["exit_code"] in codes:
                    ctx.finish(result)
                else:
                    ctx.fail(describe(result))
            case ActionFailed(action_type="shell.run"):
                ctx.goto(Phase.ENDED)
                ctx.fail(f"{input.error_type}: {input.message}")

    def end_details(self, state: dict[str, Any]) -> Mapping[str, Any]:
        result = state.get("result")
        if not isinstance(result, Mapping):
            return {}
        return {"exit_code": result.get("exit_code"), "signal": result.get("signal"), "reason": result.get("reason")}

    def log_files(self, state: dict[str, Any]) -> Mapping[str, str]:
        files = {"stdout": state.get("_stdout"), "stderr": state.get("_stderr")}
        return {stream: path for stream, path in files.items() if path}

    def owned_logs(self, state: dict[str, Any]) -> Sequence[str]:
        # An unnamed process's default logs; a name's logs go on with the next process of that
        # name, and files the settings name are the user's.
        return list(state.get("_owned_logs", ()))

    def __repr__(self) -> str:
        return f"<Shell log_dir={self.log_dir}>"


def describe(result: Mapping[str, Any]) -> str:
    """Why a run counts as a failure, in one line."""
    reason = str(result["reason"])
    if reason == "timeout":
        how = f"killed by {result['signal']}" if result["signal"] else f"exit code {result['exit_code']}"
        return f"timed out ({how})"
    if reason.startswith("setup failed"):
        return reason
    if result["signal"]:
        return f"killed by {result['signal']}"
    return f"exited with code {result['exit_code']}"
