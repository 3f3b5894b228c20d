"""statevisor's process kinds (local shell, scheduler, cloud, log-apply) and example kinds.

Each kind is a :class:`supervisor.Machine` plus the executors for its actions, built only on
the public API of :mod:`supervisor`.
"""

from typing import Any

from supervisor import Machine

from .examples import Ticker

KINDS: dict[str, type[Machine[Any]]] = {Ticker.kind: Ticker}
"""Every process kind the daemon can run, by kind name."""

__all__ = ["KINDS", "Ticker"]
