"""The ``sim`` scenario: simulated transitions/s of the reference models (issue: simulation)."""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

from supervisor._core.inputs import ActionSucceeded, Cast, Control, ControlEvent, Input
from supervisor._core.machine import Machine
from supervisor._simulation.simulation import Simulation

from ._harness import BenchOptions, BenchResult, median
from .models import BOOKING_INVARIANTS, Bank, Booking, Ledger, booking_executors, booking_operation, ledger_operation


class _DirectContext:
    """Just enough of a Context for calling a transition directly (the baseline)."""

    def __init__(self, issued: list[tuple[str, str, Any]], ids: Iterator[int]) -> None:
        self.issued = issued
        self.now = 0.0
        self.phase = "main"
        self._ids = ids

    def track(self, action_type: str, payload: Any = None, *, key: str | None = None) -> str:
        action_id = key or f"a{next(self._ids)}"
        self.issued.append((action_id, action_type, payload))
        return action_id

    def timeout(self, name: str, seconds: float, payload: Any = None) -> None:
        return None

    def cancel_timeout(self, name: str) -> None:
        return None

    def reply(self, call: Any, value: Any) -> None:
        return None


class _DirectView:
    """What the invariants read, for the baseline: the states and the effect counts."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state
        self.repeated: list[str] = []

    def states(self) -> dict[str, Any]:
        return {"p": self._state}


def _direct(machine: Machine[Any], inputs: Callable[[random.Random], Input], invariants: list[Any], steps: int,
            respond: Callable[[str, str, Any], Any]) -> float:  # fmt: skip
    """The same transition function and invariant checks called in a plain loop, no runner."""
    state: dict[str, Any] = {}
    issued: list[tuple[str, Any, Any]] = []
    view = _DirectView(state)
    rng = random.Random(0)
    pending: list[Input] = [Control(ControlEvent.STARTED)]
    ids = itertools.count()
    done = 0
    started = time.perf_counter()
    while done < steps:
        input = pending.pop() if pending else inputs(rng)
        ctx = _DirectContext(issued, ids)
        coroutine = machine.transition(state, input, ctx)  # type: ignore[arg-type]
        with contextlib.suppress(StopIteration):
            coroutine.send(None)
        for action_id, action_type, payload in issued:
            pending.append(ActionSucceeded(action_id, action_type, respond(action_id, action_type, payload)))
        issued.clear()
        for invariant in invariants:
            invariant(view)
        done += 1
    return steps / (time.perf_counter() - started)


def _simulated(make: Callable[[int], tuple[Simulation, Callable[[], None]]], steps: int) -> float:
    sim, operate = make(1)
    started = time.perf_counter()
    while sim.transitions < steps:
        operate()
        sim.run(6)
    return sim.transitions / (time.perf_counter() - started)


def _ledger(seed: int) -> tuple[Simulation, Callable[[], None]]:
    bank = Bank()
    sim = Simulation([Ledger], seed=seed, executors=bank.executors(), invariants=bank.invariants(), crash_every=1000)
    pid, rng = sim.spawn(Ledger), random.Random(seed)
    return sim, lambda: ledger_operation(sim, pid, rng)


def _booking(seed: int) -> tuple[Simulation, Callable[[], None]]:
    sim = Simulation([Booking], seed=seed, executors=booking_executors(), invariants=BOOKING_INVARIANTS,
                     crash_every=1000)  # fmt: skip
    pid, rng, counter = sim.spawn(Booking), random.Random(seed), [0]
    return sim, lambda: booking_operation(sim, pid, rng, counter)


def _ledger_input(rng: random.Random) -> Input:
    return Cast(("charge", rng.randint(1, 100)) if rng.random() < 0.6 else ("refund", rng.randint(1, 150)))


_booked = [0]


def _booking_input(rng: random.Random) -> Input:
    _booked[0] += 1
    return Cast(("book", f"r{_booked[0]}", rng.randint(1, 30)))


async def sim(options: BenchOptions) -> BenchResult:
    steps = options.n(100_000, minimum=500)
    ledger, booking, ledger_direct, booking_direct = [], [], [], []
    for _ in range(options.repeats):
        ledger.append(_simulated(_ledger, steps))
        booking.append(_simulated(_booking, steps))
        bank = Bank()

        def move_money(action_id: str, action_type: str, payload: Any, bank: Bank = bank) -> bool:
            action = SimpleNamespace(id=action_id, payload=payload)
            rng = random.Random(0)
            return bank.charge(action, rng) if action_type == "charge" else bank.refund(action, rng)

        def echo(action_id: str, action_type: str, payload: Any) -> Any:
            return payload

        ledger_direct.append(_direct(Ledger(), _ledger_input, bank.invariants(), steps, move_money))
        booking_direct.append(_direct(Booking(), _booking_input, BOOKING_INVARIANTS, steps, echo))
    result = BenchResult(
        "sim",
        {
            "ledger_transitions_per_s": median(ledger),
            "booking_transitions_per_s": median(booking),
            "ledger_baseline_per_s": median(ledger_direct),
            "booking_baseline_per_s": median(booking_direct),
            "ledger_ratio": median(ledger) / median(ledger_direct),
            "booking_ratio": median(booking) / median(booking_direct),
        },
    )
    result.lines = [
        f"{steps} simulated transitions per model: seeded workload, latencies, failures, hangs, invariants",
        "after every transition, a crash every ~1,000 transitions (reload from checkpoints + restore)",
        "baseline: the same transition functions and invariant checks called directly in a plain loop",
    ]
    return result
