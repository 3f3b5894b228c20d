"""How a run started and ended, as the run monitor reports it (see :mod:`._journal`)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    ticks: int
    wall: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: an exit code or a signal (or the step at which it failed to start),
    the CPU time of the command and its waited-for descendants, and when."""

    exit_code: int | None
    signal: int | None
    user: float
    system: float
    ended: float
    setup: str | None = None

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> Outcome:
        """From the monitor's exit event or its journal's ``ended`` entry."""
        if "setup" in event:
            return cls.setup_failed(str(event["setup"]), event["ended"])
        return cls(event.get("exit"), event.get("signal"), event["user"], event["system"], event["ended"])

    @classmethod
    def setup_failed(cls, what: str, ended: float) -> Outcome:
        return cls(None, None, 0.0, 0.0, ended, setup=what)

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"
