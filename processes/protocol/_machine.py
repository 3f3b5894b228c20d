"""The protocol role process type: one side of one protocol run, supervised.

The process is the durable, supervised face of its role: its checkpoint holds its settings and
where the run stands; its session (in the executor) holds the link, the driver and the record.
It issues ``protocol.run`` and takes each report as an input: the view its snapshots show, its
phase, and at the end its result. Its transitions only relay reports, so they stay
deterministic and cheap however fast the run goes; what must survive a crash mid-run is in the
role's record, which the session replays (see ``_driver``).

Pausing the process holds its session (the peer is told to keep waiting); resuming releases it;
killing it aborts the run on both sides. A link that cannot be opened (an address in use) is
tried again with backoff, then the process pauses itself saying why, and a resume tries again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from supervisor import (
    ActionFailed,
    ActionSucceeded,
    Call,
    Context,
    Control,
    ControlEvent,
    Input,
    Machine,
    SettingsError,
    TimerFired,
)

from ._executor import ACTION_TYPES, RECORD, RUN
from ._settings import KEYS, parse, resolve_paths

RETRIES = 8
"""Attempts at opening a link before the process pauses itself."""


class RolePhase(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    ENDED = "ended"


class ProtocolRole(Machine[dict[str, Any]]):
    """A protocol role: settings in the state (``protocol``, ``role``, ``link``, ``options``...),
    see ``_settings``; the run's progress under ``_run``, shown flat by :meth:`view`."""

    kind = "protocol"
    phases = RolePhase
    edges: ClassVar[Mapping[str, Mapping[str, str]]] = {
        RolePhase.STARTING: {RolePhase.RUNNING: "session open", RolePhase.ENDED: "cannot start"},
        RolePhase.RUNNING: {RolePhase.ENDED: "run ended"},
    }
    action_types = ACTION_TYPES

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        parse(settings)

    @classmethod
    def resolve_paths(cls, settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
        return resolve_paths(settings, base)

    def _payload(self, state: dict[str, Any], ctx: Context) -> dict[str, Any]:
        settings = {k: v for k, v in state.items() if k in KEYS}
        return {"name": ctx.name or ctx.pid, "settings": settings}

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control(event=ControlEvent.STARTED):
                try:
                    parse(state)
                except SettingsError as exc:
                    ctx.goto(RolePhase.ENDED)
                    ctx.fail(f"invalid settings: {exc}")
                    return
                state["_calls"] = {}
                state["_failures"] = 0
                state["_named"] = ctx.name is not None and ctx.name != ctx.pid
                state["_run"] = {"phase": "starting"}
                ctx.track(RUN, self._payload(state, ctx))
            case Control(event=ControlEvent.RESUMED) | TimerFired(name="retry"):
                if not any(a.type == RUN for a in ctx.pending.values()):
                    ctx.track(RUN, self._payload(state, ctx))
            case ActionSucceeded(action_type="protocol.run", value=report):
                self._took(state, report, ctx)
            case ActionFailed(action_type="protocol.run"):
                why = f"{input.error_type}: {input.message}"
                if input.error_type == "LinkFailed":
                    state["_failures"] = failures = state.get("_failures", 0) + 1
                    state["_run"]["reason"] = why
                    if failures < RETRIES:
                        ctx.timeout("retry", min(0.1 * 2 ** (failures - 1), 5.0))
                    else:
                        state["_failures"] = 0
                        ctx.pause(f"the link cannot be opened ({why}); resume to try again")
                    return
                ctx.goto(RolePhase.ENDED)
                ctx.fail(why)
            case Call(message={"op": "status"}):
                ctx.reply(input, self.view(state))
            case Call(message={"op": "record"}):
                action = ctx.track(RECORD, self._payload(state, ctx))
                state["_calls"][action] = input.ref
            case Call(message=message):
                ctx.reply(input, {"error": f"unknown request {message!r:.80}; expected op status or record"})
            case ActionSucceeded(action_type="protocol.record", action_id=action, value=value):
                ref = state["_calls"].pop(action, None)
                if ref is not None:
                    ctx.reply(ref, value)
            case ActionFailed(action_type="protocol.record", action_id=action):
                ref = state["_calls"].pop(action, None)
                if ref is not None:
                    ctx.reply(ref, {"error": f"{input.error_type}: {input.message}"})

    def _took(self, state: dict[str, Any], report: Mapping[str, Any], ctx: Context) -> None:
        state["_failures"] = 0
        state["_run"] = dict(report)
        if report.get("phase") != "ended":
            if ctx.phase != RolePhase.RUNNING:
                ctx.goto(RolePhase.RUNNING)
            ctx.track(RUN, self._payload(state, ctx))
            return
        ctx.goto(RolePhase.ENDED)
        outcome, terminal, reason = report.get("outcome"), report.get("terminal"), report.get("reason")
        if outcome == "done":
            ctx.finish(
                {
                    "terminal": terminal,
                    "steps": report.get("steps"),
                    "bytes": report.get("bytes"),
                    "retransmissions": report.get("retransmissions"),
                    "run": report.get("run"),
                    "run_seconds": report.get("run_seconds"),
                }
            )
        elif outcome == "aborted":
            ctx.fail(f"aborted at {report.get('step')} #{report.get('seq')}: {reason}")
        else:
            ctx.fail(f"the run failed at {terminal}: {reason}")

    def view(self, state: dict[str, Any]) -> Any:
        run = {k: v for k, v in state.get("_run", {}).items() if k != "record"}
        settings = {k: v for k, v in state.items() if not k.startswith("_")}
        return {**settings, **run, "requests_in_flight": len(state.get("_calls", {}))}

    def log_files(self, state: dict[str, Any]) -> Mapping[str, str]:
        transcript = state.get("_run", {}).get("transcript")
        return {"stdout": transcript} if transcript else {}

    def owned_logs(self, state: dict[str, Any]) -> Sequence[str]:
        run = state.get("_run", {})
        owned = [run["record"]] if run.get("record") else []
        if run.get("transcript") and not state.get("_named"):
            owned.append(run["transcript"])
        return owned
