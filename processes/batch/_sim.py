"""Simulated executors for the batch kind, for :class:`supervisor.Simulation`.

A simulated cluster: ``batch.submit`` gives the next job id and counts submissions per job name
(so a simulation can assert that no job was ever submitted twice across injected crashes);
``batch.wait`` moves a job one step along queued -> active -> final, ending with an exit code
drawn from weights.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from supervisor import SimExecutor, TrackedAction, UntrackedAction

from ._executor import CANCEL, SUBMIT, WAIT
from ._states import JobState


class SimulatedBatch:
    """``executors`` plugs into ``Simulation(executors=...)``."""

    def __init__(
        self,
        *,
        exit_codes: Mapping[int, float] | None = None,
        queue_time: tuple[float, float] = (0.1, 10.0),
        failure_rate: float = 0.0,
    ) -> None:
        self.exit_codes = dict(exit_codes or {0: 1.0})
        self.submissions: Counter[str] = Counter()
        self.cancelled: list[str] = []
        self._next_id = 1000
        self.executors: dict[str, SimExecutor] = {
            SUBMIT: SimExecutor(self._submit, latency=(0.01, 0.2), failure_rate=failure_rate),
            WAIT: SimExecutor(self._wait, latency=queue_time),
            CANCEL: SimExecutor(self._cancel, latency=(0.0, 0.0)),
        }

    def _submit(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        self.submissions[action.payload["name"]] += 1
        self._next_id += 1
        return {"job_id": str(self._next_id), "found": False}

    def _wait(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        known = JobState(action.payload["known"])
        if known is JobState.QUEUED:
            return {"state": "active", "native": "RUNNING", "held": False, "exit_code": None, "vanished": False}
        codes, weights = zip(*sorted(self.exit_codes.items()), strict=True)
        code = rng.choices(codes, weights)[0]
        state = JobState.COMPLETED if code == 0 else JobState.FAILED
        return {"state": str(state), "native": state.name, "held": False, "exit_code": code, "vanished": False}

    def _cancel(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> None:
        self.cancelled.append(str(action.payload["target"]))

    def __repr__(self) -> str:
        return f"<SimulatedBatch submissions={sum(self.submissions.values())} jobs={len(self.submissions)}>"
