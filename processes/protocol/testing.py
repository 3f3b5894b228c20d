"""Hypothesis for protocols (needs the ``test`` extra: hypothesis): :class:`LinkSimulationMachine`,
a stateful test around a :class:`~processes.protocol.LinkSimulation`.

Implement ``make_simulation(seed)``; the base class adds rules that advance the simulation,
crash either side, and drop, duplicate or corrupt the next frame either side sends, and it runs
the simulation to its end at teardown, then calls :meth:`at_rest`. When an invariant fails,
Hypothesis shrinks the run to the fewest rules that still break it, as it does for machines
(:class:`supervisor.testing.SimulationStateMachine`).
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from ._sim import SIDES, LinkSimulation

__all__ = ["LinkSimulationMachine"]


class LinkSimulationMachine(RuleBasedStateMachine):
    """Subclass it: implement :meth:`make_simulation`; add rules of your own if you like.
    ``taken`` lists the rules this run took, in order (the shrunk run's, when one fails)."""

    sim: LinkSimulation
    taken: list[str]

    def make_simulation(self, seed: int) -> LinkSimulation:
        raise NotImplementedError

    def at_rest(self) -> None:
        """Checks that hold once the simulation has run to its end (both sides ended, say)."""

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start_simulation(self, seed: int) -> None:
        self.taken = []
        self.sim = self.make_simulation(seed)

    @rule(events=st.integers(1, 200))
    def advance(self, events: int) -> None:
        self.taken.append(f"advance {events}")
        self.sim.run(events)

    @rule(side=st.sampled_from(SIDES))
    def crash(self, side: str) -> None:
        self.taken.append(f"crash {side}")
        self.sim.crash(side)

    @rule(sender=st.sampled_from(SIDES), fault=st.sampled_from(("drop", "duplicate", "corrupt")))
    def fault_next(self, sender: str, fault: str) -> None:
        self.taken.append(f"{fault} the next frame from {sender}")
        self.sim.fault_next(sender, fault)

    def teardown(self) -> None:
        sim = getattr(self, "sim", None)
        if sim is not None:
            sim.run_until_idle()
            self.at_rest()
