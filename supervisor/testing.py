"""Helpers for testing your own process types (needs the ``test`` extra: hypothesis, pytest).

* :class:`SimulationStateMachine`: a Hypothesis stateful test around a :class:`Simulation`.
  Your rules send operations; the base adds "advance the simulation" and "crash" rules and
  drains the simulation at the end. Invariants run after every transition; when one fails,
  Hypothesis shrinks the run to a short sequence of operations and prints it.
* The ``simulate`` pytest fixture (see :mod:`supervisor.pytest_plugin`).
* :class:`ManualClock`, re-exported for tests of timeouts on a real runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from ._core.clock import ManualClock
from ._simulation.simulation import Simulation

__all__ = ["ManualClock", "SimulationStateMachine"]


class SimulationStateMachine(RuleBasedStateMachine):
    """Subclass it: implement :meth:`make_simulation`, add ``@rule`` methods that use
    ``self.sim``; optionally override :meth:`at_rest` for checks once nothing is in flight."""

    sim: Simulation

    def make_simulation(self, seed: int) -> Simulation:
        raise NotImplementedError

    def at_rest(self) -> None:
        """Checks that hold once the simulation is idle (e.g. every request was resolved)."""

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start_simulation(self, seed: int) -> None:
        self.sim = self.make_simulation(seed)

    @rule(events=st.integers(1, 100))
    def advance(self, events: int) -> None:
        self.sim.run(events)

    @rule()
    def crash(self) -> None:
        self.sim.crash()

    def teardown(self) -> None:
        sim = getattr(self, "sim", None)
        if sim is not None:
            sim.run_until_idle()
            self.at_rest()


def simulation_factory(seed: int | None, replay: Callable[[int], str]) -> Callable[..., Simulation]:
    """What the ``simulate`` fixture returns: ``simulate(machines, **options)``."""

    def make(machines: Any, **options: Any) -> Simulation:
        chosen = seed if seed is not None else options.pop("seed", 0)
        options.pop("seed", None)
        return Simulation(machines, seed=chosen, replay_hint=replay(chosen), **options)

    return make
