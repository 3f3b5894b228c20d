"""The cloud process type: one pod on a Kubernetes cluster, from its creation to its end.

Phases follow the pod, ``creating -> pending -> running -> ended``, never backwards. The state
says what the process waits for and since when (``waiting_for``: ``creation``, ``scheduling``,
``image pull``, ``container start``, ``running``, ``namespace quota``; ``since``), what stands in
the way (``problem``), the pod's ``phase`` and ``node``, and what pausing does now (``pausing``).

The pod ends the process: its main container's exit code 0 finishes it; anything else fails it
with the reason Kubernetes gives (an exit code, ``OOMKilled``, ``Evicted``, ``DeadlineExceeded``,
a pod deleted by someone else). A pod that stays unschedulable past ``schedule_timeout``, or
whose image does not pull (or whose container cannot be created) past ``start_timeout``, is given
up on: deleted, and the process fails saying why. Bounds are timers, so they survive restarts.

When the API server stays unreachable past the cluster's retry budget (or refuses the
credentials) the process pauses itself with that as the reason, instead of failing: the pod may
be fine. Resuming retries. A namespace quota with no room is waited on, with backoff.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from supervisor import (
    ActionFailed,
    ActionSucceeded,
    Context,
    Control,
    ControlEvent,
    Input,
    Machine,
    SettingsError,
    TimerFired,
)

from ._clusters import ClusterSpec
from ._executor import CREATE, DELETE, LINGER, RELEASE, WAIT
from ._settings import OURS, PodSettings, identity, manifest, parse, pod_name, selector

_PAUSE_ON = frozenset({"ApiUnreachable", "CredentialsRejected", "TransportError"})
_QUOTA_BACKOFF = (2.0, 120.0)  # first and longest wait for room in a namespace quota


class Phase(StrEnum):
    CREATING = "creating"
    PENDING = "pending"
    RUNNING = "running"
    ENDED = "ended"


_PAUSING = {
    Phase.CREATING: "holds the pod's creation",
    Phase.PENDING: "cannot suspend a pod: it goes on; the process takes what it did on resume",
    Phase.RUNNING: "cannot suspend a pod: it runs on; the process takes what it did on resume",
}


class CloudPod(Machine[dict[str, Any]]):
    """One pod on a declared cluster (``clusters`` are the configuration's ``[kubernetes.NAME]``);
    its log goes to ``<log_dir>/<name>.out.log``."""

    kind = "cloud"
    action_types = (CREATE, WAIT, RELEASE, DELETE)
    secret_keys = frozenset({"env"})  # the settings' env, and the env lists of the pod's containers
    phases = Phase
    edges: ClassVar[Mapping[str, Mapping[str, str]]] = {
        Phase.CREATING: {Phase.PENDING: "created", Phase.RUNNING: "adopted", Phase.ENDED: "refused / adopted ended"},
        Phase.PENDING: {Phase.RUNNING: "started", Phase.ENDED: "ended / gave up"},
        Phase.RUNNING: {Phase.ENDED: "ended"},
    }

    def __init__(self, clusters: Mapping[str, ClusterSpec], log_dir: str | Path = "logs") -> None:
        self.clusters = dict(clusters)
        self.log_dir = Path(log_dir).resolve()

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        parse(settings)

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control(event=ControlEvent.STARTED):
                self._start(state, ctx)
            case Control(event=ControlEvent.RESUMED):
                self._retry(state, ctx)
            case ActionSucceeded(action_type="cloud.create", value=report):
                state["pod"] = report["pod"]
                state["uid"] = report["uid"]
                state["created_at"] = ctx.now
                state["attempts"] = 0
                state.pop("_retry", None)
                if report.get("adopted"):
                    state["adopted"] = True
                self._advance(state, report, ctx)
            case ActionSucceeded(action_type="cloud.wait") | ActionFailed(action_type="cloud.wait") if (
                state.get("_outcome") is not None
            ):
                pass  # given up on already (a bound, a failed wait): the pod is being deleted
            case ActionSucceeded(action_type="cloud.wait", value=report):
                state.pop("_retry", None)
                self._advance(state, report, ctx)
            case ActionSucceeded(action_type="cloud.release") | ActionFailed(action_type="cloud.release"):
                self._end(state, ctx)
            case ActionFailed(action_type="cloud.create" | "cloud.wait" as action_type):
                self._failed(state, input, action_type, ctx)
            case TimerFired("quota"):
                self._track_create(state, ctx)
            case TimerFired("bound", payload):
                if state.get("_problem") == payload["problem"]:
                    self._give_up(state, f"{state['problem']} (for more than {payload['seconds']:g} s)", ctx)

    # restore is the default one: pending actions are re-issued under their ids. A create looks
    # its pod up by label before creating anything; a wait takes the pod from its watch. A
    # process that paused itself (nothing pending) comes back paused with its reason.

    # --- steps ------------------------------------------------------------------------------

    def _start(self, state: dict[str, Any], ctx: Context) -> None:
        try:
            spec = parse(state, check_pod=False)  # the pod was checked with the settings, at spawn
            cluster = self.clusters.get(spec.cluster)
            if cluster is None:
                known = ", ".join(sorted(self.clusters)) or "none are declared"
                raise SettingsError("cluster", f"no [kubernetes.{spec.cluster}] is declared ({known})")
        except SettingsError as exc:
            ctx.goto(Phase.ENDED)
            ctx.fail(f"invalid settings: {exc}")
            return
        key = f"{ctx.pid}:create:{ctx.version}"
        process = ctx.name or ctx.pid
        name = pod_name(process, key)
        namespace = spec.namespace or cluster.namespace or "default"
        state["_create"] = key
        state["_owner"] = selector(cluster.owner)
        state["_log"] = os.path.join(str(self.log_dir), f"{process}.out.log")
        if ctx.name == ctx.pid:  # unnamed: the log named after the pid is this process's alone
            state["_owned_logs"] = [state["_log"]]
        state["_ttl"] = spec.ttl if spec.ttl is not None else cluster.pod_ttl
        state["_bounds"] = {
            "unschedulable": spec.schedule_timeout,
            "image": spec.start_timeout,
            "config": spec.start_timeout,
        }
        state["_grace"] = spec.stop_grace
        state["_log_limits"] = [spec.log_max_bytes, spec.log_backups]
        state["pod"] = name
        state["namespace"] = namespace
        state["attempts"] = 0
        self._waiting(state, "creation", ctx)
        state["pausing"] = _PAUSING[Phase.CREATING]
        self._track_create(state, ctx, spec)

    def _track_create(self, state: dict[str, Any], ctx: Context, spec: PodSettings | None = None) -> None:
        # The pod is made from the settings in the state each time (it is not kept in the state
        # as well), under the same action id every time: its name and labels derive from it.
        key = state["_create"]
        labels, annotations = identity(state["_owner"][OURS + "owner"], ctx.pid, key)
        spec = spec or parse(state, check_pod=False)
        pod = manifest(spec, name=state["pod"], namespace=state["namespace"], labels=labels, annotations=annotations)
        ctx.track(CREATE, {"cluster": state["cluster"], "namespace": state["namespace"], "manifest": pod}, key=key)

    def _track_wait(self, state: dict[str, Any], ctx: Context) -> None:
        max_bytes, backups = state["_log_limits"]
        ctx.track(
            WAIT,
            {
                "cluster": state["cluster"],
                "namespace": state["namespace"],
                "pod": state["pod"],
                "owner": state["_owner"],
                "known": state.get("_known", ""),
                "log": state["_log"],
                "log_max_bytes": max_bytes,
                "log_backups": backups,
                "grace": state["_grace"],
            },
        )

    def _retry(self, state: dict[str, Any], ctx: Context) -> None:
        retry = state.pop("_retry", None)
        state.pop("problem", None)
        if retry == "cloud.create":
            self._track_create(state, ctx)
        elif retry == "cloud.wait":
            self._track_wait(state, ctx)

    def _advance(self, state: dict[str, Any], report: Mapping[str, Any], ctx: Context) -> None:
        state["phase"] = report["phase"]
        state["node"] = report["node"]
        state["_known"] = report["signature"]
        if report["final"] and "logs" not in report:
            # A create that adopted a pod that ended meanwhile (while the daemon was down): the
            # wait collects its log first, then says how it ended.
            state["_known"] = ""
            self._track_wait(state, ctx)
            return
        if report["final"]:
            self._ended(state, report, ctx)
            return
        self._waiting(state, report["waiting"], ctx)
        problem = report["problem"]
        if problem == "hopeless":
            self._give_up(state, report["problem_text"], ctx)
            return
        if problem != state.get("_problem"):
            ctx.cancel_timeout("bound")
            if problem:
                seconds = float(state["_bounds"][problem])
                ctx.timeout("bound", seconds, {"problem": problem, "seconds": seconds})
                state["problem_since"] = ctx.now
            else:
                state.pop("problem_since", None)
            state["_problem"] = problem
        if problem:
            state["problem"] = report["problem_text"]
        else:
            state.pop("problem", None)
        if report["waiting"] == "running" and ctx.phase != Phase.RUNNING:
            state["started_at"] = ctx.now
            ctx.goto(Phase.RUNNING)
            state["pausing"] = _PAUSING[Phase.RUNNING]
        elif ctx.phase == Phase.CREATING:
            ctx.goto(Phase.PENDING)
            state["pausing"] = _PAUSING[Phase.PENDING]
        self._track_wait(state, ctx)

    def _ended(self, state: dict[str, Any], report: Mapping[str, Any], ctx: Context) -> None:
        ctx.cancel_timeout("bound")
        result = {
            "pod": state["pod"],
            "namespace": state["namespace"],
            "cluster": state["cluster"],
            "node": report["node"],
            "phase": report["phase"],
            "exit_code": report.get("exit_code"),
            "reason": report["reason"],
            "created": state.get("created_at"),
            "ended": ctx.now,
            "logs": report.get("logs"),
        }
        state["result"] = result
        state["_outcome"] = [bool(report["ok"]), report["reason"]]
        for key in ("problem", "problem_since", "pausing"):
            state.pop(key, None)
        self._waiting(state, None, ctx)
        ctx.goto(Phase.ENDED)
        if report.get("deleted"):
            self._end(state, ctx)  # gone already: nothing left to delete
        else:
            self._release(state, "ttl", float(state["_ttl"]), ctx)

    def _give_up(self, state: dict[str, Any], why: str, ctx: Context) -> None:
        ctx.cancel_timeout("bound")
        state["result"] = {
            "pod": state["pod"],
            "namespace": state["namespace"],
            "cluster": state["cluster"],
            "phase": state.get("phase"),
            "exit_code": None,
            "reason": why,
            "ended": ctx.now,
        }
        state["_outcome"] = [False, why]
        self._waiting(state, None, ctx)
        state.pop("pausing", None)
        ctx.goto(Phase.ENDED)
        self._release(state, "gave up", 0.0, ctx)

    def _release(self, state: dict[str, Any], why: str, ttl: float, ctx: Context) -> None:
        ctx.track(
            RELEASE,
            {
                "cluster": state["cluster"],
                "namespace": state["namespace"],
                "pod": state["pod"],
                "owner": state["_owner"],
                "ttl": ttl,
                "why": why,
                "grace": 0 if why == "ttl" else state["_grace"],
            },
        )

    def _end(self, state: dict[str, Any], ctx: Context) -> None:
        ok, why = state["_outcome"]
        if ok:
            ctx.finish(state["result"])
        else:
            ctx.fail(why)

    def _failed(self, state: dict[str, Any], input: ActionFailed, action_type: str, ctx: Context) -> None:
        if input.error_type in _PAUSE_ON:
            state["_retry"] = action_type
            state["problem"] = input.message
            ctx.pause(f"{input.message} (resume to retry)")
            return
        if input.error_type == "QuotaExceeded" and action_type == CREATE:
            attempts = int(state.get("attempts", 0)) + 1
            state["attempts"] = attempts
            first, longest = _QUOTA_BACKOFF
            delay = min(longest, first * 2 ** (attempts - 1)) * ctx.random.uniform(0.75, 1.0)
            self._waiting(state, "namespace quota", ctx)
            state["problem"] = input.message
            ctx.timeout("quota", delay)
            return
        why = f"{input.error_type}: {input.message}"
        state["result"] = {
            "pod": state["pod"],
            "namespace": state["namespace"],
            "cluster": state["cluster"],
            "phase": state.get("phase"),
            "exit_code": None,
            "reason": why,
            "ended": ctx.now,
        }
        self._waiting(state, None, ctx)
        state.pop("pausing", None)
        ctx.goto(Phase.ENDED)
        if action_type == WAIT:
            state["_outcome"] = [False, why]
            self._release(state, "gave up", 0.0, ctx)  # the pod may live on: it is not left behind
        else:
            ctx.fail(why)

    def _waiting(self, state: dict[str, Any], what: str | None, ctx: Context) -> None:
        if what != state.get("waiting_for"):
            state["waiting_for"] = what
            state["since"] = ctx.now

    # --- what the daemon asks of the kind ---------------------------------------------------

    def on_kill(self, state: dict[str, Any]) -> Sequence[tuple[str, Any]]:
        # Killed with nothing in flight (paused after an outage, waiting on a quota): the pod
        # may exist; delete it by name (and keep looking, if its create may still land).
        if "_create" not in state or state.get("_outcome") is not None:
            return ()
        linger = LINGER if "uid" not in state else 0.0
        payload = {
            "cluster": state["cluster"],
            "namespace": state["namespace"],
            "pod": state["pod"],
            "owner": state["_owner"],
            "grace": state["_grace"],
            "linger": linger,
        }
        return [(DELETE, payload)]

    def log_files(self, state: dict[str, Any]) -> Mapping[str, str]:
        return {"stdout": state["_log"]} if state.get("_log") else {}

    def owned_logs(self, state: dict[str, Any]) -> Sequence[str]:
        return list(state.get("_owned_logs", ()))

    def end_details(self, state: dict[str, Any]) -> Mapping[str, Any]:
        result = state.get("result")
        if not isinstance(result, Mapping):
            return {}
        return {"pod": result.get("pod"), "exit_code": result.get("exit_code"), "reason": result.get("reason")}

    def view(self, state: dict[str, Any]) -> Any:
        # The manifest is long (and holds env values): the settings show what matters.
        return {k: v for k, v in state.items() if not k.startswith("_")}

    def __repr__(self) -> str:
        return f"<CloudPod clusters={len(self.clusters)} log_dir={self.log_dir}>"
