"""The local shell process kind: commands in their own process groups, detached so that they
outlive a daemon crash, with rotated log files and exit status collected across restarts.

Use :func:`executors` for a Node's executors and :class:`Shell` as the process type.
"""

from pathlib import Path

from ._executor import CLEANUP, RUN, ShellExecutor
from ._machine import Phase, Shell, describe
from ._settings import CommandSpec, parse
from ._sim import SimulatedShell
from .errors import CommandLost, CommandNotFound, RunMonitorError, SecretUnreadable


def executors(runs: str | Path) -> dict[str, ShellExecutor]:
    """The executors of the shell kind's actions, keeping run records under ``runs``."""
    executor = ShellExecutor(Path(runs))
    return {RUN: executor, CLEANUP: executor}


__all__ = [
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
