"""The local shell process kind: commands in their own process groups, detached so that they
outlive a daemon crash, with rotated log files and exit status collected across restarts.

Use :func:`executors` for a Node's executors and :class:`Shell` as the process type.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Executor
from supervisor.lowlevel import KindSetup

from ._executor import CLEANUP, RUN, ShellExecutor
from ._machine import Phase, Shell, describe
from ._settings import CommandSpec, parse
from ._sim import SimulatedShell
from .errors import CommandLost, CommandNotFound, RunMonitorError, SecretUnreadable


def executors(runs: str | Path) -> dict[str, ShellExecutor]:
    """The executors of the shell kind's actions, keeping run records under ``runs``."""
    executor = ShellExecutor(Path(runs))
    return {RUN: executor, CLEANUP: executor}


class ShellKind:
    """The shell kind as a daemon builds it: output logs under the daemon's ``log_dir``, run
    records (the run monitor's journal and socket) in its ``run_dir``."""

    machine = Shell
    tables: tuple[str, ...] = ()
    action_types = (RUN, CLEANUP)

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        return None

    def build(self, setup: KindSetup) -> tuple[Shell, Mapping[str, Executor]]:
        return Shell(setup.log_dir), executors(setup.run_dir)


KIND = ShellKind()
"""The entry point of group ``statevisor.kinds`` named ``shell``."""


__all__ = [
    "KIND",
    "ShellKind",
    # errors
    "CommandLost",
    "CommandNotFound",
    "RunMonitorError",
    "SecretUnreadable",
    "CLEANUP",
    "RUN",
    "CommandSpec",
    "Phase",
    "Shell",
    "ShellExecutor",
    "SimulatedShell",
    "describe",
    "executors",
    "parse",
]
