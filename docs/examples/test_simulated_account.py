"""Simulation tests with pytest: the ``simulate`` fixture, and shrinking with Hypothesis.

Run it with pytest (``pytest docs/examples/test_simulated_account.py``); run as a script, it
runs pytest on itself.
"""

import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from supervisor import (
    ActionSucceeded,
    Cast,
    Context,
    Control,
    Input,
    Machine,
    SimExecutor,
    Simulation,
    TrackedAction,
    UntrackedAction,
)
from supervisor.testing import SimulationStateMachine


class Tally(Machine[dict[str, Any]]):
    """Counts what a backend confirmed: a tracked action per "add"."""

    kind = "tally"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.update(total=0)
            case Cast(("add", int(n))):
                ctx.track("confirm", {"n": n})
            case ActionSucceeded(value=int(n)):
                state["total"] += n


def confirm(action: TrackedAction | UntrackedAction, rng: random.Random) -> int:
    return int(action.payload["n"])


def total_never_negative(sim: Simulation) -> None:
    for state in sim.states().values():
        assert state.get("total", 0) >= 0


def test_tally_survives_crashes(simulate: Callable[..., Simulation]) -> None:
    """The fixture's simulations print 'replay: pytest <this test> --sim-seed=N' when they fail."""
    sim = simulate(
        [Tally],
        seed=3,
        executors={"confirm": SimExecutor(confirm, failure_rate=0.1)},
        invariants=[total_never_negative],
        crash_every=50,
    )
    pid = sim.spawn(Tally)
    for n in range(200):
        sim.cast(pid, ("add", n))
        sim.run(5)
    sim.run_until_idle()
    assert not sim.repeated  # no effect performed twice across the crashes


class TallyMachine(SimulationStateMachine):
    """Hypothesis drives it: our rule adds, the base class advances and crashes the simulation;
    a failing run is shrunk to a short sequence of rules."""

    def make_simulation(self, seed: int) -> Simulation:
        sim = Simulation(
            [Tally], seed=seed, executors={"confirm": SimExecutor(confirm)}, invariants=[total_never_negative]
        )
        self.pid = sim.spawn(Tally)
        return sim

    @rule(n=st.integers(0, 100))
    def add(self, n: int) -> None:
        self.sim.cast(self.pid, ("add", n))


TestTally = TallyMachine.TestCase
TestTally.settings = settings(max_examples=20, stateful_step_count=20, deadline=None)


if __name__ == "__main__":
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]))
