"""Reference models for simulation testing: a payment ledger and a booking system.

Each comes with its simulated backend (a bank, a payment gateway), its invariants, a random
workload, and a copy with one planted bug, so that tests (and the ``sim`` benchmark) can show the
simulator finding and shrinking real mistakes.
"""

from __future__ import annotations

import random
from typing import Any

from supervisor._core.inputs import ActionFailed, ActionSucceeded, Call, Cast, Control, Input, TimerFired
from supervisor._core.machine import Context, Machine
from supervisor._simulation.simulation import SimExecutor, Simulation

State = dict[str, Any]

# --- the ledger -------------------------------------------------------------------------------


class Ledger(Machine[State]):
    """Charges (money in) and refunds (money out) through a bank, both tracked actions.

    A refund reserves its amount at once, so concurrent refunds can never overdraw.
    """

    kind = "ledger"

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.update(balance=0, credited=0, refunded=0, charges={}, refunds={})
            case Cast(("charge", int(amount))) if amount > 0:
                state["charges"][ctx.track("charge", {"amount": amount})] = amount
            case Cast(("refund", int(amount))) if 0 < amount <= state["balance"]:
                state["balance"] -= amount
                state["refunds"][ctx.track("refund", {"amount": amount})] = amount
            case ActionSucceeded(action_id, "charge", _):
                amount = state["charges"].pop(action_id)
                state["balance"] += amount
                state["credited"] += amount
            case ActionFailed(action_id, "charge"):
                state["charges"].pop(action_id)
            case ActionSucceeded(action_id, "refund", _):
                state["refunded"] += state["refunds"].pop(action_id)
            case ActionFailed(action_id, "refund"):
                state["balance"] += state["refunds"].pop(action_id)
            case Call("balance"):
                ctx.reply(input, state["balance"])


class BuggyLedger(Ledger):
    """The planted bug: a charge is credited before the (fallible) bank call, and a failed
    charge is not taken back: money appears from nowhere."""

    kind = "ledger"

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Cast(("charge", int(amount))) if amount > 0:
                state["balance"] += amount
                state["credited"] += amount
                state["charges"][ctx.track("charge", {"amount": amount})] = 0
            case ActionSucceeded(action_id, "charge", _):
                state["charges"].pop(action_id)
            case _:
                await super().transition(state, input, ctx)


class Bank:
    """The outside world of the ledger: what was really moved, by action id."""

    def __init__(self) -> None:
        self.charged: dict[str, int] = {}
        self.refunded: dict[str, int] = {}
        # Running totals: invariants run after every transition and must not rescan history.
        self.total_charged = 0
        self.total_refunded = 0

    def charge(self, action: Any, rng: random.Random) -> bool:
        self.charged[action.id] = self.charged.get(action.id, 0) + action.payload["amount"]
        self.total_charged += action.payload["amount"]
        return True

    def refund(self, action: Any, rng: random.Random) -> bool:
        self.refunded[action.id] = self.refunded.get(action.id, 0) + action.payload["amount"]
        self.total_refunded += action.payload["amount"]
        return True

    def executors(self, failure_rate: float = 0.1) -> dict[str, SimExecutor]:
        return {
            "charge": SimExecutor(self.charge, latency=(0.001, 0.02), failure_rate=failure_rate),
            "refund": SimExecutor(self.refund, latency=(0.001, 0.02), failure_rate=failure_rate),
        }

    def invariants(self) -> list[Any]:
        bank = self

        def balance_never_negative(sim: Simulation) -> None:
            for pid, state in sim.states().items():
                assert state.get("balance", 0) >= 0, f"{pid} balance {state['balance']}"

        def money_is_conserved(sim: Simulation) -> None:
            # What the bank moved equals what the ledgers booked, plus what is still in flight.
            for state in sim.states().values():
                if "charges" not in state:
                    continue
                in_flight_in = sum(bank.charged.get(i, 0) for i in state["charges"])
                assert bank.total_charged == state["credited"] + in_flight_in, "charges"
                in_flight_out = sum(bank.refunded.get(i, 0) for i in state["refunds"])
                assert bank.total_refunded == state["refunded"] + in_flight_out, "refunds"
                assert state["balance"] == state["credited"] - state["refunded"] - sum(state["refunds"].values())

        def no_charge_applied_twice(sim: Simulation) -> None:
            assert not sim.repeated, f"effects applied twice: {sim.repeated[:3]}"

        return [balance_never_negative, money_is_conserved, no_charge_applied_twice]


def ledger_operation(sim: Simulation, pid: str, rng: random.Random) -> None:
    if rng.random() < 0.6:
        sim.cast(pid, ("charge", rng.randint(1, 100)))
    else:
        sim.cast(pid, ("refund", rng.randint(1, 150)))


# --- the booking system ------------------------------------------------------------------------


class Booking(Machine[State]):
    """Requests for slots; a slot is held while a payment pre-authorisation (tracked, fallible,
    sometimes unanswered) runs; confirmed, rejected, failed or timed out; confirmed ones can be
    cancelled."""

    kind = "booking"
    hold_seconds = 0.5
    history = 256  # resolved requests kept in state; older ones are forgotten (state stays bounded)

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.update(bookings={}, holds={}, requests={}, outcome={})
            case Cast(("book", str(request), int(slot))):
                state["requests"][request] = slot
                if slot in state["bookings"] or slot in state["holds"]:
                    state["outcome"][request] = "rejected"
                else:
                    state["holds"][slot] = request
                    ctx.track("preauth", {"request": request}, key=f"preauth:{request}")
                    ctx.timeout(f"hold:{request}", self.hold_seconds, request)
            case ActionSucceeded(_, "preauth", {"request": request}) if (
                request in state["requests"] and request not in state["outcome"]
            ):
                slot = state["requests"][request]
                del state["holds"][slot]
                state["bookings"][slot] = request
                state["outcome"][request] = "confirmed"
                ctx.cancel_timeout(f"hold:{request}")
            case ActionFailed(action_id, "preauth"):
                request = action_id.removeprefix("preauth:")
                self.release(state, request, "payment failed")
                ctx.cancel_timeout(f"hold:{request}")
            case TimerFired(name, request) if name.startswith("hold:"):
                self.release(state, request, "timed out")
            case Cast(("cancel", str(request))) if state["outcome"].get(request) == "confirmed":
                del state["bookings"][state["requests"][request]]
                state["outcome"][request] = "cancelled"
        self.forget_old(state)

    def forget_old(self, state: State) -> None:
        """Drop the oldest resolved requests beyond ``history`` (never a live booking or hold)."""
        outcome = state.get("outcome")
        if not outcome or len(outcome) <= self.history:
            return
        live = set(state["bookings"].values()) | set(state["holds"].values())
        for request in list(outcome)[: len(outcome) - self.history]:
            if request not in live:
                del outcome[request]
                del state["requests"][request]

    @staticmethod
    def release(state: State, request: str, outcome: str) -> None:
        if request in state["outcome"] or request not in state["requests"]:
            return
        slot = state["requests"][request]
        if state["holds"].get(slot) == request:
            del state["holds"][slot]
        state["outcome"][request] = outcome


class BuggyBooking(Booking):
    """The planted bug: the booking is written before the payment (a fallible step) and a failed
    payment does not take it back."""

    kind = "booking"

    async def transition(self, state: State, input: Input, ctx: Context) -> None:
        match input:
            case Cast(("book", str(request), int(slot))) if slot not in state["bookings"]:
                state["requests"][request] = slot
                state["bookings"][slot] = request
                ctx.track("preauth", {"request": request}, key=f"preauth:{request}")
            case ActionSucceeded(_, "preauth", {"request": request}):
                state["outcome"][request] = "confirmed"
            case ActionFailed(action_id, "preauth"):
                state["outcome"][action_id.removeprefix("preauth:")] = "payment failed"
            case _:
                await super().transition(state, input, ctx)


def booking_executors(failure_rate: float = 0.2, hang_rate: float = 0.05) -> dict[str, SimExecutor]:
    return {"preauth": SimExecutor(latency=(0.001, 0.05), failure_rate=failure_rate, hang_rate=hang_rate)}


def no_overlapping_bookings(sim: Simulation) -> None:
    for state in sim.states().values():
        confirmed = [r for r, o in state.get("outcome", {}).items() if o == "confirmed"]
        slots = [state["requests"][r] for r in confirmed]
        assert len(slots) == len(set(slots)), f"a slot is booked twice: {sorted(slots)}"


def confirmed_bookings_match_requests(sim: Simulation) -> None:
    for state in sim.states().values():
        for slot, request in state.get("bookings", {}).items():
            assert state["requests"][request] == slot, f"booking {request} is on {slot}, asked for another"
            assert state["outcome"].get(request) == "confirmed", f"{request} holds {slot} but is not confirmed"


def failed_payments_leave_no_booking(sim: Simulation) -> None:
    for state in sim.states().values():
        booked = set(state.get("bookings", {}).values())
        for request, outcome in state.get("outcome", {}).items():
            if outcome in ("payment failed", "timed out", "rejected"):
                assert request not in booked, f"{request} ({outcome}) still holds a booking"


BOOKING_INVARIANTS = [no_overlapping_bookings, confirmed_bookings_match_requests, failed_payments_leave_no_booking]


def every_request_resolved(sim: Simulation) -> None:
    """Checked once the simulation is idle: nothing may be left pending."""
    for state in sim.states().values():
        unresolved = set(state.get("requests", {})) - set(state.get("outcome", {}))
        assert not unresolved, f"requests never resolved: {sorted(unresolved)[:5]}"


def booking_operation(sim: Simulation, pid: str, rng: random.Random, counter: list[int]) -> None:
    if rng.random() < 0.8:
        counter[0] += 1
        sim.cast(pid, ("book", f"r{counter[0]}", rng.randint(1, 30)))
    else:
        sim.cast(pid, ("cancel", f"r{rng.randint(1, max(1, counter[0]))}"))
