"""The batch-job process type: submit one job to a host's scheduler and follow it to its end.

Phases follow the job: ``submitting`` -> ``queued`` -> ``active`` -> ``ended``, never backwards.
The state says what the process waits for and since when (``waiting_for``, ``since``), and
carries the job id once the scheduler gave one.

When a host stays unreachable past its retry budget (or its key does not match known_hosts) the
process pauses itself with that as the reason, instead of failing: the job may be fine. Resuming
retries; a daemon restart retries too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from supervisor import ActionFailed, ActionSucceeded, Context, Control, ControlEvent, Input, Machine, SettingsError

from ._executor import CANCEL, SUBMIT, WAIT
from ._hosts import HostSpec
from ._schedulers import job_name
from ._script import job_script
from ._settings import parse
from ._states import JobState

_PAUSE_ON = frozenset({"TransportError", "HostUnreachable", "HostKeyMismatch"})


class Phase(StrEnum):
    SUBMITTING = "submitting"
    QUEUED = "queued"
    ACTIVE = "active"
    ENDED = "ended"


class BatchJob(Machine[dict[str, Any]]):
    """One batch job on a declared host (``hosts`` are the configuration's ``[host.NAME]``)."""

    kind = "batch"
    action_types = (SUBMIT, WAIT, CANCEL)
    secret_keys = frozenset({"env"})
    phases = Phase
    edges: ClassVar[Mapping[str, Mapping[str, str]]] = {
        Phase.SUBMITTING: {Phase.QUEUED: "submitted", Phase.ACTIVE: "started", Phase.ENDED: "refused"},
        Phase.QUEUED: {Phase.ACTIVE: "started", Phase.ENDED: "ended"},
        Phase.ACTIVE: {Phase.ENDED: "ended"},
    }

    def __init__(self, hosts: Mapping[str, HostSpec]) -> None:
        self.hosts = dict(hosts)

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        parse(settings)

    @classmethod
    def resolve_paths(cls, settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
        """The local side of each staged file is relative to the configuration file."""
        resolved = dict(settings)
        for key, local in (("stage_in", 0), ("stage_out", 1)):
            pairs = [list(pair) for pair in resolved.get(key, [])]
            for pair in pairs:
                pair[local] = cls.local_path(pair[local], base)
            if pairs:
                resolved[key] = pairs
        return resolved

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control(event=ControlEvent.STARTED):
                self._submit(state, ctx)
            case Control(event=ControlEvent.RESUMED):
                self._retry(state, ctx)
            case ActionSucceeded(action_type="batch.submit", value=submitted):
                state["job_id"] = submitted["job_id"]
                state["submitted_at"] = ctx.now
                state.pop("_retry", None)
                state["job_state"] = str(JobState.QUEUED)
                self._wait(state, ctx, f"job {submitted['job_id']} to start")
                ctx.goto(Phase.QUEUED)
            case ActionSucceeded(action_type="batch.wait", value=report):
                state.pop("_retry", None)
                self._advance(state, report, ctx)
            case ActionFailed(action_type="batch.submit" | "batch.wait" as action_type):
                if input.error_type in _PAUSE_ON:
                    state["_retry"] = action_type
                    state["problem"] = input.message
                    ctx.pause(f"{input.message} (resume to retry)")
                else:
                    state["problem"] = input.message
                    ctx.goto(Phase.ENDED)
                    ctx.fail(f"{input.error_type}: {input.message}")

    # restore is the default one: pending actions are re-issued. A process that paused itself
    # (state["_retry"], nothing pending) comes back paused with its reason, and resume retries.

    def on_kill(self, state: dict[str, Any]) -> Sequence[tuple[str, Any]]:
        # Killed while paused (nothing in flight to cancel): the job may still be queued.
        if "job_id" in state and state.get("job_state") not in _FINAL_NAMES:
            return [(CANCEL, {"host": state["host"], "target": state["job_id"]})]
        if "_submit" in state and "job_id" not in state:
            return [(CANCEL, {"host": state["host"], "target": f"name:{state['job_name']}"})]
        return ()

    # --- steps ------------------------------------------------------------------------------

    def _submit(self, state: dict[str, Any], ctx: Context) -> None:
        try:
            spec = parse(state)
            host = self.hosts.get(spec.host)
            if host is None:
                known = ", ".join(sorted(self.hosts)) or "none are declared"
                raise SettingsError("host", f"no [host.{spec.host}] is declared ({known})")
        except SettingsError as exc:
            ctx.goto(Phase.ENDED)
            ctx.fail(f"invalid settings: {exc}")
            return
        key = f"{ctx.pid}:submit:{ctx.version}"
        name = job_name(key)
        comment = f"statevisor pid={ctx.pid} action={key}"
        script = job_script(
            name=name, comment=comment, work_dir=host.work_dir, argv=spec.argv, script=spec.script, env=spec.env
        )
        state["_submit"] = key
        state["job_name"] = name
        state["_payload"] = {
            "host": spec.host,
            "name": name,
            "comment": comment,
            "script": script,
            "options": list(spec.options),
            "stage_in": [list(p) for p in spec.stage_in],
        }
        state["_stage_out"] = [list(p) for p in spec.stage_out]
        state["waiting_for"] = "submission"
        state["since"] = ctx.now
        ctx.track(SUBMIT, state["_payload"], key=key)

    def _wait(self, state: dict[str, Any], ctx: Context, what: str) -> None:
        state["waiting_for"] = what
        state["since"] = ctx.now
        ctx.track(
            WAIT,
            {
                "host": state["host"],
                "job_id": state["job_id"],
                "name": state["job_name"],
                "known": state["job_state"],
                "submit_id": state["_submit"],
                "stage_out": state["_stage_out"],
            },
        )

    def _retry(self, state: dict[str, Any], ctx: Context) -> None:
        retry = state.pop("_retry", None)
        state.pop("problem", None)
        if retry == "batch.submit":
            # The same action id: the executor's journal makes it look before it submits again.
            ctx.track(SUBMIT, state["_payload"], key=state["_submit"])
        elif retry == "batch.wait":
            self._wait(state, ctx, state.get("waiting_for", "the job"))

    def _advance(self, state: dict[str, Any], report: Mapping[str, Any], ctx: Context) -> None:
        new = JobState(report["state"])
        state["job_state"] = str(new)
        state["native_state"] = report["native"]
        state["held"] = report["held"]
        if new.final:
            result = {
                "job_id": state["job_id"],
                "state": str(new),
                "exit_code": report["exit_code"],
                "native": report["native"],
                "submitted": state.get("submitted_at"),
                "ended": ctx.now,
            }
            state["result"] = result
            state["waiting_for"] = None
            ctx.goto(Phase.ENDED)
            codes = state.get("success_codes", [0])
            if new is JobState.COMPLETED and report["exit_code"] in (*codes, None):
                ctx.finish(result)
            elif new is JobState.CANCELED:
                ctx.fail(f"job {state['job_id']} was cancelled ({report['native']})")
            else:
                ctx.fail(f"job {state['job_id']} failed: {report['native']}, exit code {report['exit_code']}")
            return
        if new is JobState.ACTIVE:
            state["started_at"] = ctx.now
            ctx.goto(Phase.ACTIVE)
            self._wait(state, ctx, f"job {state['job_id']} to end")
        else:
            self._wait(state, ctx, state["waiting_for"])

    def view(self, state: dict[str, Any]) -> Any:
        # The script and payload are long and may hold secrets in env: show what matters.
        return {k: v for k, v in state.items() if not k.startswith("_") and k != "script"}

    def __repr__(self) -> str:
        return f"<BatchJob hosts={len(self.hosts)}>"


_FINAL_NAMES = frozenset({str(JobState.COMPLETED), str(JobState.FAILED), str(JobState.CANCELED)})
