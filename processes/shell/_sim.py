"""Simulated executors for the shell kind, for :class:`supervisor.Simulation`.

The simulated command takes a virtual duration and ends with an exit code drawn from weights;
``runs`` counts executions per action id, so a simulation can assert that no command ever ran
twice across injected crashes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from supervisor import SimExecutor, TrackedAction, UntrackedAction

from ._executor import CLEANUP, RUN


class SimulatedShell:
    """``executors`` plugs into ``Simulation(executors=...)``."""

    def __init__(
        self,
        *,
        exit_codes: Mapping[int, float] | None = None,
        duration: tuple[float, float] = (0.01, 1.0),
        failure_rate: float = 0.0,
    ) -> None:
        self.exit_codes = dict(exit_codes or {0: 1.0})
        self.runs: Counter[str] = Counter()
        self.cleaned: list[str] = []
        self.executors: dict[str, SimExecutor] = {
            RUN: SimExecutor(self._run, latency=duration, failure_rate=failure_rate),
            CLEANUP: SimExecutor(self._cleanup, latency=(0.0, 0.0)),
        }

    def _run(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        assert isinstance(action, TrackedAction)
        self.runs[action.id] += 1
        codes, weights = zip(*sorted(self.exit_codes.items()), strict=True)
        code = rng.choices(codes, weights)[0]
        return {
            "exit_code": code,
            "signal": None,
            "reason": "exited",
            "pid": 0,
            "started": 0.0,
            "ended": 0.0,
            "user_cpu": 0.0,
            "system_cpu": 0.0,
            "stdout_tail": [],
            "stderr_tail": [],
        }

    def _cleanup(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> None:
        self.cleaned.append(str(action.payload))

    def __repr__(self) -> str:
        return f"<SimulatedShell runs={sum(self.runs.values())} distinct={len(self.runs)}>"
