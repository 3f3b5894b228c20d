"""Deterministic simulation: reproducible traces, crashes that lose nothing, invariants that
catch planted bugs, shrinking, and the pytest fixture."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from benchmarks.models import (
    BOOKING_INVARIANTS,
    Bank,
    Booking,
    BuggyBooking,
    BuggyLedger,
    Ledger,
    booking_executors,
    booking_operation,
    every_request_resolved,
    ledger_operation,
)
from supervisor import Cast, ConfigurationError, Context, Input, Lifecycle, Machine, SimExecutor, Simulation
from supervisor._simulation.errors import InvariantViolation, SimulationError
from supervisor.testing import SimulationStateMachine


def run_ledger(
    seed: int, operations: int = 500, *, model: type[Ledger] = Ledger, crash_every: float = 200
) -> Simulation:
    bank = Bank()
    sim = Simulation(
        [model], seed=seed, executors=bank.executors(), invariants=bank.invariants(), crash_every=crash_every
    )
    pid = sim.spawn(model)
    rng = random.Random(seed)
    for _ in range(operations):
        ledger_operation(sim, pid, rng)
        sim.run(5)
    sim.run_until_idle()
    return sim


def test_same_seed_same_trace_hash_different_seed_different_hash() -> None:
    """A run is a function of its seed: equal seeds give equal trace hashes, others differ."""
    first, again, other = run_ledger(11), run_ledger(11), run_ledger(12)
    assert first.trace_hash == again.trace_hash
    assert (first.transitions, first.crashes) == (again.transitions, again.crashes)
    assert first.trace_hash != other.trace_hash


def test_trace_hash_is_pinned_across_machines_and_versions() -> None:
    """The hash depends only on the run: this value must hold on every machine (change it only
    when a change of behaviour is intended, and say so)."""
    sim = run_ledger(5, operations=50)
    assert (97, "c3284aaafa053ac260baafb3bd6ed716") == (sim.transitions, sim.trace_hash)


@pytest.mark.parametrize("seed", range(8))
def test_ledger_conserves_money_across_crashes(seed: int) -> None:
    """With a crash every ~100 transitions, no charge is lost or applied twice and the balance
    never goes negative (the invariants run after every transition)."""
    sim = run_ledger(seed, operations=400, crash_every=100)
    assert sim.crashes > 0
    state = next(iter(sim.states().values()))
    assert {} == dict(state["charges"])  # nothing left in flight once idle
    assert [] == sim.repeated


def test_crash_reloads_the_last_durable_checkpoint_and_reissues_pending_actions() -> None:
    """A crash drops memory; each process comes back from its last durable checkpoint, and
    restore re-issues its pending actions under the same ids (the idempotent bank applies
    each once)."""
    bank = Bank()
    sim = Simulation([Ledger], seed=1, executors=bank.executors(failure_rate=0.0))
    pid = sim.spawn(Ledger)
    sim.cast(pid, ("charge", 10))
    while not sim.state(pid).get("charges"):
        assert sim.step()
    (action_id,) = sim.state(pid)["charges"]
    sim.crash()
    assert {action_id: 10} == dict(sim.state(pid)["charges"])
    sim.run_until_idle()
    assert 10 == sim.state(pid)["balance"]
    assert {action_id: 1} == sim.applied


def test_a_non_idempotent_backend_applies_effects_again_after_a_crash() -> None:
    """Why the executor contract matters: a backend that does not deduplicate by action id
    performs a re-issued action a second time."""
    counts: dict[str, int] = {}

    def charge(action: Any, rng: random.Random) -> bool:
        counts[action.id] = counts.get(action.id, 0) + 1
        return True

    executors = {"charge": SimExecutor(charge, latency=(0.5, 0.5), idempotent=False), "refund": SimExecutor()}
    sim = Simulation([Ledger], seed=2, executors=executors)
    pid = sim.spawn(Ledger)
    sim.cast(pid, ("charge", 5))
    while not counts:
        assert sim.step()
    sim.crash()
    sim.run_until_idle()
    assert [2] == list(counts.values())


def test_invariant_violation_names_seed_step_input_and_replay() -> None:
    """The first violation stops the run and says which invariant, the seed, the step, the
    input that broke it and how to replay exactly that run."""
    with pytest.raises(InvariantViolation) as caught:
        run_ledger(3, model=BuggyLedger)
    error = caught.value
    assert "money_is_conserved" == error.invariant
    assert 3 == error.seed
    assert "('charge'," in error.input
    assert error.step >= 1
    assert "seed=3" in error.replay
    assert f"at step {error.step} (seed 3)" in str(error)


@pytest.mark.parametrize("seed", range(5))
def test_planted_bugs_are_found_within_a_bounded_number_of_operations(seed: int) -> None:
    """Both planted bugs (state changed before a fallible step) are caught within 200 random
    operations, on seeds where the correct models pass thousands."""
    with pytest.raises(InvariantViolation):
        run_ledger(seed, operations=200, model=BuggyLedger)
    run_ledger(seed, operations=1000)
    for model, should_fail in ((BuggyBooking, True), (Booking, False)):
        sim = Simulation([model], seed=seed, executors=booking_executors(), invariants=BOOKING_INVARIANTS,
                         crash_every=300)  # fmt: skip
        pid, rng, counter = sim.spawn(model), random.Random(seed), [0]
        try:
            for _ in range(200 if should_fail else 1000):
                booking_operation(sim, pid, rng, counter)
                sim.run(5)
            sim.run_until_idle()
            every_request_resolved(sim)
        except InvariantViolation:
            assert should_fail
        else:
            assert not should_fail, "the planted booking bug was not found"


def test_hanging_backend_is_resolved_by_the_machines_timeout() -> None:
    """Pre-authorisations that never answer are released by the hold timeout on virtual time:
    every request ends resolved and no slot stays held."""
    executors = {"preauth": SimExecutor(hang_rate=1.0)}
    sim = Simulation([Booking], seed=4, executors=executors, invariants=BOOKING_INVARIANTS)
    pid = sim.spawn(Booking)
    for index in range(5):
        sim.cast(pid, ("book", f"r{index}", index))
    sim.run_until_idle()
    every_request_resolved(sim)
    assert {"timed out"} == set(sim.state(pid)["outcome"].values())
    assert {} == dict(sim.state(pid)["holds"])
    assert sim.now >= Booking.hold_seconds


class Sleepy(Machine[dict[str, Any]]):
    """Awaits real time inside a transition: not allowed in a simulation."""

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        if isinstance(input, Cast):
            await asyncio.sleep(0.1)


async def test_a_transition_that_awaits_real_io_is_refused_inside_an_event_loop() -> None:
    """Run from async code, a simulated transition that suspends on real I/O stops the
    simulation with SimulationError."""
    sim = Simulation([Sleepy], seed=0)
    pid = sim.spawn(Sleepy)
    sim.cast(pid, "nap")
    with pytest.raises(SimulationError, match="awaited real I/O"):
        sim.run_until_idle()


def test_a_transition_that_awaits_real_io_fails_outside_an_event_loop() -> None:
    """Run from plain code, asyncio itself refuses (no running loop): the transition fails,
    is rolled back and counted, and the process goes on."""
    sim = Simulation([Sleepy], seed=0)
    pid = sim.spawn(Sleepy)
    sim.cast(pid, "nap")
    sim.run_until_idle()
    assert 1 == sim.handle(pid).statistics().transition_errors


def test_simulation_arguments_are_validated() -> None:
    """Nonsense rates and latencies are configuration errors; unknown pids are named."""
    with pytest.raises(ConfigurationError, match="failure_rate"):
        SimExecutor(failure_rate=1.5)
    with pytest.raises(ConfigurationError, match="latency"):
        SimExecutor(latency=(1.0, 0.5))
    with pytest.raises(ConfigurationError, match="crash_every"):
        Simulation([Ledger], crash_every=0)
    with pytest.raises(SimulationError, match="no process 'ghost'"):
        Simulation([Ledger]).cast("ghost", 1)


def test_calls_get_replies_and_fail_on_crash() -> None:
    """sim.call returns a SimCall filled in by the reply; a crash fails outstanding calls."""
    bank = Bank()
    sim = Simulation([Ledger], seed=0, executors=bank.executors(failure_rate=0.0))
    pid = sim.spawn(Ledger)
    sim.cast(pid, ("charge", 7))
    sim.run_until_idle()
    answer = sim.call(pid, "balance")
    sim.run_until_idle()
    assert (True, 7, None) == (answer.done(), answer.value, answer.error)
    lost = sim.call(pid, "balance")
    sim.crash()
    assert lost.done()
    assert lost.error is not None
    assert Lifecycle.WAITING != sim.lifecycle(pid)


def test_the_simulate_fixture_uses_the_seed_and_names_the_replay(simulate: Callable[..., Simulation]) -> None:
    """The pytest fixture builds simulations whose violations say `pytest <test> --sim-seed=N`."""
    bank = Bank()
    sim = simulate([BuggyLedger], seed=9, executors=bank.executors(), invariants=bank.invariants())
    pid = sim.spawn(BuggyLedger)
    sim.cast(pid, ("charge", 1))
    with pytest.raises(InvariantViolation) as caught:
        sim.run_until_idle()
    assert caught.value.replay.endswith("test_the_simulate_fixture_uses_the_seed_and_names_the_replay' --sim-seed=9")


class LedgerRules(SimulationStateMachine):
    """Hypothesis drives a ledger with charges, refunds, time passing and crashes."""

    model: type[Ledger] = Ledger
    found: ClassVar[list[list[str]]] = []

    def make_simulation(self, seed: int) -> Simulation:
        self.bank = Bank()
        self.log: list[str] = []
        type(self).found.append(self.log)
        sim = Simulation([self.model], seed=seed, executors=self.bank.executors(), invariants=self.bank.invariants())
        self.pid = sim.spawn(self.model)
        return sim

    @rule(amount=st.integers(1, 100))
    def charge(self, amount: int) -> None:
        self.log.append(f"charge {amount}")
        self.sim.cast(self.pid, ("charge", amount))

    @rule(amount=st.integers(1, 100))
    def refund(self, amount: int) -> None:
        self.log.append(f"refund {amount}")
        self.sim.cast(self.pid, ("refund", amount))


class BuggyLedgerRules(LedgerRules):
    model = BuggyLedger


SHRINK = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    report_multiple_bugs=False,
    suppress_health_check=list(HealthCheck),
)


def test_hypothesis_finds_no_violation_in_the_correct_ledger() -> None:
    """Stateful exploration of the correct ledger (with crashes) finds nothing."""
    run_state_machine_as_test(LedgerRules, settings=SHRINK)


def test_hypothesis_shrinks_the_planted_ledger_bug_to_a_short_run() -> None:
    """On the buggy ledger Hypothesis fails, and the run it reports (the last one it replays)
    has been shrunk to at most two operations."""
    BuggyLedgerRules.found = []
    with pytest.raises(InvariantViolation):
        run_state_machine_as_test(BuggyLedgerRules, settings=SHRINK)
    shrunk = BuggyLedgerRules.found[-1]
    assert 1 <= len(shrunk) <= 2, shrunk
    assert shrunk[0].startswith("charge")


@pytest.mark.slow
def test_a_million_steps_run_well_within_a_minute() -> None:
    """The slow tier: a 1,000,000-event ledger run with invariants and crashes completes (its
    wall time is reported by pytest --durations; the bound is the suite's timeout)."""
    bank = Bank()
    sim = Simulation([Ledger], seed=1, executors=bank.executors(), invariants=bank.invariants(), crash_every=1000)
    pid = sim.spawn(Ledger)
    rng = random.Random(1)
    events = 0
    while events < 1_000_000:
        ledger_operation(sim, pid, rng)
        events += sim.run(5)
    assert sim.crashes > 100
