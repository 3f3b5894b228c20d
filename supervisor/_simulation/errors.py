"""What stops a simulation::

StatevisorError
└── SimulationError              a simulation cannot go on (e.g. a transition awaited real I/O)
    └── InvariantViolation       an invariant failed; carries seed, step and how to replay
"""

from __future__ import annotations

from .._errors import StatevisorError


class SimulationError(StatevisorError):
    """A simulation cannot go on (a transition awaited real I/O, an unknown process...)."""


class InvariantViolation(SimulationError, AssertionError):
    """An invariant failed after a transition. Everything needed to replay it exactly is here."""

    def __init__(
        self, *, invariant: str, message: str, seed: int, step: int, pid: str, input: str, replay: str
    ) -> None:
        super().__init__(
            f"invariant {invariant!r} violated at step {step} (seed {seed}) after {pid} handled {input}: "
            f"{message}\nreplay: {replay}"
        )
        self.invariant = invariant
        self.seed = seed
        self.step = step
        self.pid = pid
        self.input = input
        self.replay = replay
