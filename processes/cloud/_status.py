"""What a pod's status means for its process: plain synchronous decisions, tested on their own.

:class:`PodView` is what the kind keeps of a pod (a few fields, not the whole object): what it
waits for (scheduling, an image pull, its containers' start, or its end), what stands in its way
(:class:`Problem`), and, once it has ended, how (:meth:`PodView.outcome`). Its
:attr:`PodView.signature` changes exactly when one of those does, so a process is woken for
those changes and not for every status write.

The process's container is named ``main``; other containers (a ``pod_template``'s sidecars, init
containers) count for the outcome only when they are why the pod failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from lightkube.resources.core_v1 import Pod

MAIN = "main"
FINAL_PHASES = frozenset({"Succeeded", "Failed"})


class Waiting(StrEnum):
    """What a live pod waits for, as a process's snapshot says it."""

    SCHEDULING = "scheduling"
    IMAGE_PULL = "image pull"
    CONTAINER_START = "container start"
    RUNNING = "running"  # it runs: it waits for its end
    NOTHING = ""  # it has ended


class Problem(StrEnum):
    """What keeps a pending pod from running; the process bounds how long it may last."""

    UNSCHEDULABLE = "unschedulable"  # no node can take it (schedule_timeout)
    IMAGE = "image"  # ErrImagePull, ImagePullBackOff (start_timeout)
    CONFIG = "config"  # a missing Secret or ConfigMap, a container that cannot be created (start_timeout)
    HOPELESS = "hopeless"  # InvalidImageName, ErrImageNeverPull: no wait helps


_IMAGE = frozenset({"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable", "SignatureValidationFailed"})
_CONFIG = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
_HOPELESS = frozenset({"InvalidImageName", "ErrImageNeverPull"})


@dataclass(frozen=True, slots=True)
class PodView:
    """One pod as the kind sees it."""

    name: str
    uid: str
    resource_version: str
    labels: Mapping[str, str]
    phase: str = "Pending"
    node: str | None = None
    deleting: bool = False  # a deletionTimestamp is set: it is being deleted
    deleted: bool = False  # it is gone from the API server
    waiting: Waiting = Waiting.SCHEDULING
    problem: Problem | None = None
    problem_reason: str = ""
    problem_message: str = ""
    started: bool = False  # the main container started (so it has logs)
    exit_code: int | None = None  # the main container's, once it ended
    ended_reason: str = ""  # the main container's termination reason (Completed, Error, OOMKilled...)
    ended_message: str = ""
    pod_reason: str = ""  # the pod's (Evicted, DeadlineExceeded...)
    pod_message: str = ""
    failed_container: str = ""  # another container that failed the pod: "name exited with code N"
    disruption: str = ""  # a DisruptionTarget condition's reason (EvictionByEvictionAPI, DeletionByTaintManager...)
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, pod: Pod) -> PodView:
        meta = pod.metadata
        status = pod.status
        assert meta is not None
        assert meta.name is not None
        phase = (status.phase if status is not None else None) or "Pending"
        node = pod.spec.nodeName if pod.spec is not None else None
        fields: dict[str, Any] = {}
        if status is not None:
            fields = _status_fields(status)
        started = bool(fields.get("started"))
        return cls(
            name=meta.name,
            uid=meta.uid or "",
            resource_version=meta.resourceVersion or "",
            labels=meta.labels or {},
            phase=phase,
            node=node,
            deleting=meta.deletionTimestamp is not None,
            waiting=_waiting(phase, started, node, fields.get("problem")),
            **fields,
        )

    def gone(self) -> PodView:
        """This pod, deleted from the API server."""
        return replace(self, deleted=True, deleting=True)

    @property
    def final(self) -> bool:
        return self.phase in FINAL_PHASES or self.deleted or self.deleting

    @property
    def signature(self) -> str:
        """Changes exactly when what a process is told changes."""
        if self.final:
            return f"final:{self.phase}:{self.deleted or self.deleting}"
        return f"{self.phase}|{self.waiting}|{self.problem or ''}|{self.node or ''}"

    def outcome(self) -> tuple[bool, str]:
        """(succeeded, why) for an ended pod."""
        if self.phase == "Succeeded":
            return True, "exited with code 0"
        if self.phase == "Failed":
            return False, self._failure()
        if self.deleted or self.deleting:
            why = f" ({self.disruption})" if self.disruption else ""
            last = f"; it was {self.phase.lower()}" + (f" on {self.node}" if self.node else "")
            return False, f"the pod was deleted before it ended{why}{last}"
        return False, f"the pod is {self.phase}"  # not final: never asked

    def _failure(self) -> str:
        if self.pod_reason in ("Evicted", "DeadlineExceeded", "NodeLost", "Shutdown", "Terminated"):
            return f"{self.pod_reason}: {self.pod_message}" if self.pod_message else self.pod_reason
        if self.ended_reason == "OOMKilled":
            return f"OOMKilled (exit code {self.exit_code})"
        if self.exit_code not in (None, 0):
            how = f" ({self.ended_reason})" if self.ended_reason not in ("", "Error") else ""
            return f"exited with code {self.exit_code}{how}"
        if self.failed_container:
            return self.failed_container
        if self.pod_reason:
            return f"{self.pod_reason}: {self.pod_message}" if self.pod_message else self.pod_reason
        if self.problem is not None:
            return f"{self.problem_reason}: {self.problem_message}"
        return "the pod failed"

    def report(self) -> dict[str, Any]:
        """What a process is told: msgpack values only."""
        report: dict[str, Any] = {
            "pod": self.name,
            "uid": self.uid,
            "phase": self.phase,
            "node": self.node,
            "waiting": str(self.waiting),
            "problem": str(self.problem) if self.problem else None,
            "problem_text": f"{self.problem_reason}: {self.problem_message}".rstrip(": ") if self.problem else None,
            "signature": self.signature,
            "final": self.final,
            "started_at": self.started_at,
        }
        if self.final:
            ok, reason = self.outcome()
            report |= {
                "ok": ok,
                "reason": reason,
                "exit_code": self.exit_code,
                "finished_at": self.finished_at,
                "deleted": self.deleted or self.deleting,
            }
        return report

    def __repr__(self) -> str:
        problem = f" problem={self.problem}" if self.problem else ""
        return f"<PodView {self.name} {self.phase} waiting={self.waiting or '-'}{problem} rv={self.resource_version}>"


def _problem(reason: str | None) -> Problem | None:
    if reason in _IMAGE:
        return Problem.IMAGE
    if reason in _CONFIG:
        return Problem.CONFIG
    if reason in _HOPELESS:
        return Problem.HOPELESS
    return None


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _status_fields(status: Any) -> dict[str, Any]:
    """What a PodStatus says, as PodView's fields (phase and node aside)."""
    fields: dict[str, Any] = {"pod_reason": status.reason or "", "pod_message": status.message or ""}
    for condition in status.conditions or ():
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            fields |= {
                "problem": Problem.UNSCHEDULABLE,
                "problem_reason": "Unschedulable",
                "problem_message": condition.message or "",
            }
        if condition.type == "DisruptionTarget" and condition.status == "True":
            fields["disruption"] = condition.reason or ""
    containers = list(status.containerStatuses or ())
    inits = list(status.initContainerStatuses or ())
    main = next((c for c in containers if c.name == MAIN), containers[0] if containers else None)
    for container in [*inits, *containers]:
        waiting = container.state.waiting if container.state is not None else None
        reason = waiting.reason if waiting is not None else None
        kind = _problem(reason)
        if kind is not None and "problem" not in fields:
            fields |= {
                "problem": kind,
                "problem_reason": reason or "",
                "problem_message": (waiting.message if waiting is not None else None) or "",
            }
    if main is not None and main.state is not None:
        if main.state.running is not None:
            fields |= {"started": True, "started_at": _time(main.state.running.startedAt)}
        ended = main.state.terminated
        if ended is not None:
            fields |= {
                "started": True,
                "exit_code": ended.exitCode,
                "ended_reason": ended.reason or "",
                "ended_message": ended.message or "",
                "started_at": _time(ended.startedAt),
                "finished_at": _time(ended.finishedAt),
            }
    for container, init in [*((c, True) for c in inits), *((c, False) for c in containers)]:
        ended = container.state.terminated if container.state is not None else None
        if ended is not None and ended.exitCode != 0 and container is not main and "failed_container" not in fields:
            what = "init container" if init else "container"
            fields["failed_container"] = f"{what} {container.name} exited with code {ended.exitCode}"
    return fields


def _waiting(phase: str, started: bool, node: str | None, problem: Problem | None) -> Waiting:
    if phase in FINAL_PHASES:
        return Waiting.NOTHING
    if phase == "Running" or started:
        return Waiting.RUNNING
    if not node:
        return Waiting.SCHEDULING
    if problem in (Problem.IMAGE, Problem.HOPELESS):
        return Waiting.IMAGE_PULL
    return Waiting.CONTAINER_START
