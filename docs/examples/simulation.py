"""Simulation testing: an account that charges through a bank, with failures and crashes.

The same seed gives the same run, and the same trace hash, on every machine. A copy with a
planted bug (the balance credited before the bank answers) breaks an invariant within a few
operations, and the violation says how to replay it.
"""

import random
from typing import Any

from supervisor import (
    ActionFailed,
    ActionSucceeded,
    Cast,
    Context,
    Control,
    Input,
    InvariantViolation,
    Machine,
    SimExecutor,
    Simulation,
    TrackedAction,
    UntrackedAction,
)


class Account(Machine[dict[str, Any]]):
    kind = "account"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.update(balance=0, charging={})
            case Cast(("charge", int(amount))):
                state["charging"][ctx.track("charge", {"amount": amount})] = amount
            case ActionSucceeded(action_id=action):
                state["balance"] += state["charging"].pop(action)
            case ActionFailed(action_id=action):
                state["charging"].pop(action)


class CreditFirst(Account):
    """The planted bug: credited before the (fallible) bank call, never taken back."""

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast(("charge", int(amount))):
                state["balance"] += amount
                state["charging"][ctx.track("charge", {"amount": amount})] = 0
            case _:
                await super().transition(state, input, ctx)


def run(machine: type[Account], seed: int) -> Simulation:
    charged: dict[str, int] = {}  # the bank's own records: what it really took, by action id

    def charge(action: TrackedAction | UntrackedAction, rng: random.Random) -> None:
        assert isinstance(action, TrackedAction)
        charged[action.id] = action.payload["amount"]

    def balance_is_what_the_bank_took(sim: Simulation) -> None:
        for state in sim.states().values():
            if "balance" in state:
                settled = sum(v for k, v in charged.items() if k not in state["charging"])
                assert state["balance"] == settled, f"balance {state['balance']}, bank took {settled}"

    sim = Simulation(
        [machine],
        seed=seed,
        executors={"charge": SimExecutor(charge, latency=(0.001, 0.02), failure_rate=0.2)},
        invariants=[balance_is_what_the_bank_took],
        crash_every=200,  # on average, a crash every 200 transitions
    )
    pid = sim.spawn(machine)
    for n in range(1_000):
        sim.cast(pid, ("charge", n % 7 + 1))  # delivered after a random delay: messages reorder
        sim.run(3)  # handle three events: deliveries, action results, timers, group commits
    sim.run_until_idle()
    return sim


first, second = run(Account, seed=7), run(Account, seed=7)
print("crashes:", first.crashes, "| same trace:", first.trace_hash == second.trace_hash)
print("effects performed twice:", first.repeated)

try:
    run(CreditFirst, seed=7)
except InvariantViolation as violation:
    print("found:", violation.invariant, "at step", violation.step, "| replay with seed", violation.seed)
