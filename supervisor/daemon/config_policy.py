"""The configuration's restart policies: ``[supervisor]`` (the root supervisor's strategy,
budget and backoff) and a ``[[process]]``'s own backoff and budget, checked with errors that
name the key and its line."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._errors import ConfigError, ConfigurationError
from .._supervision.policy import Backoff, Budget, Strategy
from .config_check import Checker


@dataclass(frozen=True)
class RootSettings:
    """``[supervisor]``: how the declared processes are restarted (the root supervisor)."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    budget: Budget = field(default_factory=Budget)
    backoff: Backoff = field(default_factory=Backoff)


_DEFAULT_BACKOFF = Backoff()
_BACKOFF = {
    "initial": ((int, float), _DEFAULT_BACKOFF.initial),
    "maximum": ((int, float), _DEFAULT_BACKOFF.maximum),
    "multiplier": ((int, float), _DEFAULT_BACKOFF.multiplier),
    "jitter": ((int, float), _DEFAULT_BACKOFF.jitter),
    "reset_after": ((int, float), _DEFAULT_BACKOFF.reset_after),
}
_SUPERVISOR = {
    "strategy": (str, Strategy.ONE_FOR_ONE.value),
    "max_restarts": (int, Budget().max_restarts),
    "period": ((int, float), Budget().period),
    "backoff": (dict, {}),
}
CHILD_BUDGET_PERIOD = 60.0
"""A process's own budget counts restarts within this many seconds unless it sets ``period``."""


def _backoff(
    checker: Checker, data: Mapping[str, Any], prefix: str, table: str, index: int = 0, *, line: int | None = None
) -> Backoff:
    """A backoff from its table; ``line`` is where a mistake in it is reported when the table
    has no header of its own (``backoff = { ... }`` inline)."""
    reported = len(checker.errors)
    values = checker.section(data, table, prefix, _BACKOFF, index)
    if line is not None:
        checker.errors[reported:] = [ConfigError(e.file, e.key, line, e.problem) for e in checker.errors[reported:]]
    try:
        return Backoff(**{k: float(v) for k, v in values.items()})
    except ConfigurationError as exc:
        checker.report(
            ConfigError(checker.file, prefix.rstrip("."), line or checker.lines.find(table, "backoff", index), str(exc))
        )
        return _DEFAULT_BACKOFF


def _budget(checker: Checker, max_restarts: int, period: float, prefix: str, table: str, index: int = 0) -> Budget:
    try:
        return Budget(max_restarts, float(period))
    except ConfigurationError as exc:
        wrong = "max_restarts" if max_restarts < 0 else "period"
        checker.report(checker.fail(f"{prefix}{wrong}", str(exc), table, wrong, index))
        return Budget()


def root_settings(checker: Checker, data: Mapping[str, Any]) -> RootSettings:
    raw = checker.section(data, "supervisor", "supervisor.", _SUPERVISOR)
    strategies = [s.value for s in Strategy]
    known = checker.check(
        raw["strategy"] in strategies,
        "supervisor.strategy",
        f"expected one of {', '.join(strategies)}; got {raw['strategy']!r}",
        "supervisor",
        "strategy",
    )
    # backoff = { ... } inline in [supervisor] has no [supervisor.backoff] header to point at
    inline = None if checker.lines.find("supervisor.backoff", None) else checker.lines.find("supervisor", "backoff")
    backoff = _backoff(checker, raw["backoff"], "supervisor.backoff.", "supervisor.backoff", line=inline)
    return RootSettings(
        strategy=Strategy(raw["strategy"]) if known else Strategy.ONE_FOR_ONE,
        budget=_budget(checker, raw["max_restarts"], raw["period"], "supervisor.", "supervisor"),
        backoff=backoff,
    )


def process_policy(checker: Checker, item: Mapping[str, Any], index: int) -> tuple[Backoff | None, Budget | None]:
    prefix = f"process[{index}]."
    backoff = None
    if item["backoff"] is not None:
        # The keys are inside the entry: a mistake points at its own line there.
        reported = len(checker.errors)
        backoff = _backoff(checker, item["backoff"], f"{prefix}backoff.", "process", index)
        checker.errors[reported:] = [
            ConfigError(
                e.file, e.key, checker.lines.find_in_entry("process", index, e.key.removeprefix(prefix)), e.problem
            )
            for e in checker.errors[reported:]
        ]
    budget = None
    if item["max_restarts"] is not None:
        period = item["period"] if item["period"] is not None else CHILD_BUDGET_PERIOD
        budget = _budget(checker, item["max_restarts"], period, prefix, "process", index)
    else:
        checker.check(
            item["period"] is None, f"{prefix}period", "period needs max_restarts (the budget it counts)",
            "process", "period", index,
        )  # fmt: skip
    return backoff, budget
