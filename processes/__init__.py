"""statevisor's process kinds (local shell, scheduler, cloud, log-apply) and example kinds.

Each kind is a :class:`supervisor.Machine` plus the executors for its actions, built only on
the public API of :mod:`supervisor`. :data:`CATALOG` is what the daemon runs them from.
"""

from collections.abc import Mapping
from typing import Any

from supervisor import Executor, Machine
from supervisor.config import DaemonSettings

from . import shell
from .examples import Ticker
from .shell import Shell

KINDS: dict[str, type[Machine[Any]]] = {Ticker.kind: Ticker, Shell.kind: Shell}
"""Every process kind the daemon can run, by kind name."""


class Catalog:
    """The kinds, their settings checks and their executors, as the daemon needs them."""

    def __init__(self, kinds: Mapping[str, type[Machine[Any]]]) -> None:
        self.kinds = dict(kinds)

    def check_settings(self, kind: str, settings: Mapping[str, Any]) -> None:
        self.kinds[kind].check_settings(settings)

    def build(self, settings: DaemonSettings) -> tuple[list[Machine[Any]], dict[str, Executor]]:
        machines: list[Machine[Any]] = [Ticker(), Shell(settings.log_dir)]
        executors: dict[str, Executor] = {**shell.executors(settings.run_dir)}
        return machines, executors

    def __repr__(self) -> str:
        return f"<Catalog {', '.join(sorted(self.kinds))}>"


CATALOG = Catalog(KINDS)

__all__ = ["CATALOG", "KINDS", "Catalog", "Shell", "Ticker"]
