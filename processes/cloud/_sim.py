"""Simulated executors for the cloud kind, for :class:`supervisor.Simulation`.

A simulated cluster: ``cloud.create`` counts creates per pod name (so a simulation can assert
that no action ever made two pods across injected crashes) and adopts a pod that exists;
``cloud.wait`` moves a pod one step along scheduling -> running -> ended, ending with an exit
code drawn from weights (137 is reported as ``OOMKilled``); ``cloud.release`` and ``cloud.delete``
note which pods would be deleted.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from supervisor import SimExecutor, TrackedAction, UntrackedAction

from ._executor import CREATE, DELETE, RELEASE, WAIT
from ._status import PodView, Waiting

_NODE = "sim-node"


class SimulatedCloud:
    """``executors`` plugs into ``Simulation(executors=...)``."""

    def __init__(
        self,
        *,
        exit_codes: Mapping[int, float] | None = None,
        schedule_time: tuple[float, float] = (0.1, 5.0),
        run_time: tuple[float, float] = (0.1, 30.0),
        failure_rate: float = 0.0,
    ) -> None:
        self.exit_codes = dict(exit_codes or {0: 1.0})
        self.creates: Counter[str] = Counter()  # pod name -> creates that made it
        self.pods: dict[str, PodView] = {}
        self.released: list[str] = []
        self.deleted: list[str] = []
        self.executors: dict[str, SimExecutor] = {
            CREATE: SimExecutor(self._create, latency=(0.01, 0.2), failure_rate=failure_rate),
            WAIT: SimExecutor(self._wait, latency=schedule_time),
            RELEASE: SimExecutor(self._release, latency=(0.0, 0.0)),
            DELETE: SimExecutor(self._delete, latency=(0.0, 0.0)),
        }
        self._run_time = run_time

    def _create(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        meta = action.payload["manifest"]["metadata"]
        name = meta["name"]
        found = self.pods.get(name)
        if found is None:
            self.creates[name] += 1
            found = self.pods[name] = PodView(
                name=name, uid=f"sim-{len(self.pods)}", resource_version="1", labels=dict(meta["labels"])
            )
            return {"adopted": False, **found.report()}
        return {"adopted": True, **found.report()}

    def _wait(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        name = action.payload["pod"]
        pod = self.pods.get(name)
        if pod is None:
            return PodView(name=name, uid="", resource_version="", labels={}, phase="Unknown").gone().report()
        if pod.waiting is Waiting.SCHEDULING:
            pod = PodView(
                name=name,
                uid=pod.uid,
                resource_version="2",
                labels=pod.labels,
                phase="Running",
                node=_NODE,
                waiting=Waiting.RUNNING,
                started=True,
            )
        else:
            codes, weights = zip(*sorted(self.exit_codes.items()), strict=True)
            code = rng.choices(codes, weights)[0]
            pod = PodView(
                name=name,
                uid=pod.uid,
                resource_version="3",
                labels=pod.labels,
                phase="Succeeded" if code == 0 else "Failed",
                node=_NODE,
                waiting=Waiting.NOTHING,
                started=True,
                exit_code=code,
                ended_reason="OOMKilled" if code == 137 else ("Completed" if code == 0 else "Error"),
            )
        self.pods[name] = pod
        report = pod.report()
        if pod.final:
            report["logs"] = {"complete": True, "error": None, "lines": 0}
        return report

    def _release(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        self.released.append(str(action.payload["pod"]))
        return {"delete_at": 0.0}

    def _delete(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> None:
        self.deleted.append(str(action.payload["pod"]))
        self.pods.pop(str(action.payload["pod"]), None)

    def __repr__(self) -> str:
        return f"<SimulatedCloud creates={sum(self.creates.values())} pods={len(self.pods)}>"
