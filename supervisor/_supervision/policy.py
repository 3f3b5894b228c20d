"""Supervision decisions, as plain synchronous code: what to restart, when, and in what order.

OTP's strategies, restart types and restart intensity, plus what OTP lacks: exponential backoff
with jitter between restarts, and start-order dependencies between children.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .._core.lifecycle import Lifecycle
from .._errors import ConfigurationError


class Strategy(StrEnum):
    """Which children restart when one exits (OTP's strategies)."""

    ONE_FOR_ONE = "one_for_one"  # only the one that exited
    ONE_FOR_ALL = "one_for_all"  # all of them
    REST_FOR_ONE = "rest_for_one"  # it and every child started after it


class Restart(StrEnum):
    """When a child is restarted (OTP's restart types). A child stopped on purpose never is."""

    PERMANENT = "permanent"  # whenever it ends
    TRANSIENT = "transient"  # only when it fails
    TEMPORARY = "temporary"  # never


def should_restart(restart: Restart, outcome: Lifecycle, on_purpose: bool) -> bool:
    """Whether a child that ended with ``outcome`` is restarted under ``restart``.

    A killed child is never restarted: a process ends killed only when someone asked (an
    operator's ``kill``, its supervisor's own stop), and a supervisor that brought back what was
    stopped on purpose would fight the operator. A failure (a command's timeout included) is
    not a kill.
    """
    if on_purpose or restart is Restart.TEMPORARY or outcome is Lifecycle.KILLED:
        return False
    if restart is Restart.PERMANENT:
        return True
    return outcome is Lifecycle.FAILED


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before restart number ``n`` in a row: ``initial * multiplier**(n-1)``, capped at
    ``maximum``, then spread by ±``jitter`` (a fraction) so restarts of many children do not
    land together. A child that ran for ``reset_after`` seconds starts counting again from 1."""

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and self.multiplier >= 1 and 0 <= self.jitter < 1):
            raise ConfigurationError(
                "backoff needs 0 <= initial <= maximum, multiplier >= 1 and 0 <= jitter < 1, "
                f"got initial={self.initial}, maximum={self.maximum}, multiplier={self.multiplier}, "
                f"jitter={self.jitter}"
            )

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        spread = base * self.jitter
        return float(min(self.maximum, max(0.0, base + rng.uniform(-spread, spread))))


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``max_restarts`` restarts within any ``period`` seconds; one more escalates."""

    max_restarts: int = 3
    period: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.period <= 0:
            raise ConfigurationError(
                f"restart budget needs max_restarts >= 0 and period > 0, got {self.max_restarts}, {self.period}"
            )

    def __str__(self) -> str:
        return f"{self.max_restarts} restart{'' if self.max_restarts == 1 else 's'} in {self.period:g} s"


class RestartWindow:
    """Restart times within the budget's period (a sliding window)."""

    __slots__ = ("_budget", "_times")

    def __init__(self, budget: Budget) -> None:
        self._budget = budget
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False means the budget is exceeded (escalate)."""
        times = self._times
        while times and times[0] <= now - self._budget.period:
            times.popleft()
        times.append(now)
        return len(times) <= self._budget.max_restarts

    def used(self, now: float) -> int:
        """Restarts within the period before ``now`` (nothing recorded)."""
        return sum(1 for at in self._times if at > now - self._budget.period)

    def __len__(self) -> int:
        return len(self._times)


def affected(strategy: Strategy, order: Sequence[str], exited: str) -> list[str]:
    """The children (in start order) that restart when ``exited`` ends, under ``strategy``."""
    if strategy is Strategy.ONE_FOR_ONE:
        return [exited]
    if strategy is Strategy.ONE_FOR_ALL:
        return list(order)
    return list(order[order.index(exited) :])


def start_order(dependencies: Mapping[str, Sequence[str]]) -> list[str]:
    """Children in an order where each comes after everything it depends on.

    Ties keep declaration order. Unknown names and cycles are configuration errors that name
    the children involved.
    """
    names = list(dependencies)
    for name, needs in dependencies.items():
        unknown = [n for n in needs if n not in dependencies]
        if unknown:
            raise ConfigurationError(f"child {name!r} depends on unknown child(ren) {unknown}")
    placed: list[str] = []
    done: set[str] = set()
    remaining = list(names)
    while remaining:
        ready = [n for n in remaining if all(d in done for d in dependencies[n])]
        if not ready:
            raise ConfigurationError(f"start-order dependencies form a cycle among {sorted(remaining)}")
        for name in ready:
            placed.append(name)
            done.add(name)
        remaining = [n for n in remaining if n not in done]
    return placed


def dependency_cycle(dependencies: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle among start-order dependencies, as a path that ends where it starts
    (``["a", "b", "a"]``), or None. Names outside ``dependencies`` are ignored."""
    done: set[str] = set()
    for start in dependencies:
        if start in done:
            continue
        path = [start]  # a depth-first walk, without recursion: a chain may be long
        choices = [iter(dependencies[start])]
        while path:
            needed = next(choices[-1], None)
            if needed is None:
                done.add(path.pop())
                choices.pop()
            elif needed in path:
                return [*path[path.index(needed) :], needed]
            elif needed in dependencies and needed not in done:
                path.append(needed)
                choices.append(iter(dependencies[needed]))
    return None
