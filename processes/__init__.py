"""statevisor's process kinds (local shell, scheduler, cloud, log-apply) and example kinds.

Each kind is a :class:`supervisor.Machine` plus the executors for its actions, built only on
the public API of :mod:`supervisor`. :data:`CATALOG` is what the daemon runs them from.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Executor, Machine
from supervisor.daemon.config import Config

from . import batch, logapply, shell
from .batch import BatchJob
from .examples import Ticker
from .logapply import LogApply
from .shell import Shell

KINDS: dict[str, type[Machine[Any]]] = {
    Ticker.kind: Ticker,
    Shell.kind: Shell,
    BatchJob.kind: BatchJob,
    LogApply.kind: LogApply,
}
"""Every process kind the daemon can run, by kind name."""


class Catalog:
    """The kinds, their settings checks and their executors, as the daemon needs them."""

    def __init__(self, kinds: Mapping[str, type[Machine[Any]]]) -> None:
        self.kinds = dict(kinds)

    def check_settings(self, kind: str, settings: Mapping[str, Any]) -> None:
        self.kinds[kind].check_settings(settings)

    def resolve_paths(self, kind: str, settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
        return self.kinds[kind].resolve_paths(settings, base)

    def check_hosts(self, hosts: Mapping[str, Mapping[str, Any]], base: Path) -> None:
        batch.parse_hosts(hosts, base)

    def build(self, config: Config) -> tuple[list[Machine[Any]], dict[str, Executor]]:
        settings = config.daemon
        hosts = batch.parse_hosts(config.hosts, config.path.parent)
        machines: list[Machine[Any]] = [Ticker(), Shell(settings.log_dir), BatchJob(hosts), LogApply()]
        executors: dict[str, Executor] = {
            **shell.executors(settings.run_dir),
            **batch.executors(hosts, settings.run_dir / "batch"),
            **logapply.executors(settings.run_dir / "logapply"),
        }
        return machines, executors

    def __repr__(self) -> str:
        return f"<Catalog {', '.join(sorted(self.kinds))}>"


CATALOG = Catalog(KINDS)

__all__ = ["CATALOG", "KINDS", "BatchJob", "Catalog", "LogApply", "Shell", "Ticker"]
