"""pytest plugin (installed with statevisor): the ``simulate`` fixture and ``--sim-seed``.

    def test_ledger(simulate):
        sim = simulate([Ledger], executors=bank.executors(), invariants=bank.invariants(), seed=7)
        ...

A failing invariant's report ends with the exact command that replays it:
``pytest tests/test_x.py::test_ledger --sim-seed=7``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--sim-seed",
        type=int,
        default=None,
        help="run every statevisor simulation with this seed (to replay a reported failure)",
    )


@pytest.fixture
def simulate(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """A factory: ``simulate(machines, seed=..., executors=..., invariants=..., ...)``."""
    from .testing import simulation_factory

    seed = request.config.getoption("--sim-seed")
    nodeid = request.node.nodeid
    return simulation_factory(seed, lambda chosen: f"pytest '{nodeid}' --sim-seed={chosen}")
