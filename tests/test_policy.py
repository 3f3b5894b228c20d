"""Supervision decisions as plain functions: restart types, budget window, backoff, ordering."""

from __future__ import annotations

import random

import pytest

from supervisor import Backoff, Budget, ConfigurationError, Lifecycle, Restart, Strategy
from supervisor._supervision.policy import RestartWindow, affected, should_restart, start_order


@pytest.mark.parametrize(
    ("restart", "outcome", "on_purpose", "expected"),
    [
        (Restart.PERMANENT, Lifecycle.FINISHED, False, True),
        (Restart.PERMANENT, Lifecycle.FAILED, False, True),
        (Restart.PERMANENT, Lifecycle.KILLED, True, False),
        (Restart.PERMANENT, Lifecycle.KILLED, False, False),
        (Restart.TRANSIENT, Lifecycle.KILLED, False, False),
        (Restart.TRANSIENT, Lifecycle.FINISHED, False, False),
        (Restart.TRANSIENT, Lifecycle.FAILED, False, True),
        (Restart.TRANSIENT, Lifecycle.FAILED, True, False),
        (Restart.TEMPORARY, Lifecycle.FAILED, False, False),
        (Restart.TEMPORARY, Lifecycle.FINISHED, False, False),
    ],
)
def test_restart_types(restart: Restart, outcome: Lifecycle, on_purpose: bool, expected: bool) -> None:
    """permanent restarts whenever it ends, transient only on failure, temporary never; a child
    stopped on purpose, or killed (by an operator: kill is always on purpose), is never restarted."""
    assert expected == should_restart(restart, outcome, on_purpose)


def test_restart_window_is_a_sliding_period() -> None:
    """max_restarts within any period are allowed; one more is not; old ones age out."""
    window = RestartWindow(Budget(max_restarts=2, period=10.0))
    assert window.allow(0.0)
    assert window.allow(1.0)
    assert not window.allow(2.0)
    window = RestartWindow(Budget(max_restarts=2, period=10.0))
    assert window.allow(0.0)
    assert window.allow(5.0)
    assert window.allow(10.5)  # the restart at 0.0 aged out
    assert not window.allow(11.0)


def test_backoff_grows_exponentially_within_jitter_and_caps() -> None:
    """Delays double per attempt within ±jitter, never exceed the maximum, and are reproducible."""
    backoff = Backoff(initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.1)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(1, 8)]
    for attempt, delay in enumerate(delays, start=1):
        base = min(10.0, 2.0 ** (attempt - 1))
        assert base * 0.9 <= delay <= min(10.0, base * 1.1)
    assert delays == [backoff.delay(n, r) for r in [random.Random(1)] for n in range(1, 8)]
    assert 0.0 == Backoff(initial=0.0, jitter=0.0).delay(3, rng)


def test_bad_backoff_and_budget_are_configuration_errors() -> None:
    """Nonsense backoff or budget settings are refused with the values named."""
    with pytest.raises(ConfigurationError, match="multiplier"):
        Backoff(multiplier=0.5)
    with pytest.raises(ConfigurationError, match="max_restarts"):
        Budget(max_restarts=-1)


def test_strategies_pick_the_affected_children() -> None:
    """one_for_one: the child; one_for_all: all; rest_for_one: it and those started after it."""
    order = ["db", "cache", "web", "worker"]
    assert ["cache"] == affected(Strategy.ONE_FOR_ONE, order, "cache")
    assert order == affected(Strategy.ONE_FOR_ALL, order, "cache")
    assert ["cache", "web", "worker"] == affected(Strategy.REST_FOR_ONE, order, "cache")


def test_start_order_follows_dependencies_and_keeps_declaration_order() -> None:
    """Children come after what they depend on; otherwise in declaration order."""
    order = start_order({"web": ["db", "cache"], "db": [], "cache": ["db"], "metrics": []})
    assert ["db", "metrics", "cache", "web"] == order


def test_start_order_rejects_cycles_and_unknown_names() -> None:
    """A cycle or an unknown dependency is a configuration error naming the children."""
    with pytest.raises(ConfigurationError, match=r"cycle among \['a', 'b'\]"):
        start_order({"a": ["b"], "b": ["a"], "c": []})
    with pytest.raises(ConfigurationError, match="unknown child"):
        start_order({"a": ["ghost"]})
