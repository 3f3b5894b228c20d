"""What a supervisor is made of (its children's specs, its own) and what it reports: plain,
frozen declarations, checked when made, so a bad tree fails where it is written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .._core.identifiers import check_identifier, name_problem
from .._core.lifecycle import DriveMode
from .._core.machine import Machine
from .._errors import ConfigurationError
from .policy import Backoff, Budget, Restart, Strategy


@dataclass(frozen=True)
class ChildSpec:
    """A declared child: a process of ``machine`` (with ``state``), or a child ``supervisor``.

    ``backoff``: this child's delays between restarts (default: its supervisor's).
    ``budget``: this child's own restart budget; past it the child is *given up* (left down,
    logged, counted in ``statistics().given_up``; ``start_child`` brings it back) while its
    siblings go on, as supervisord does for a program past ``startretries``. The supervisor's
    budget counts the child's restarts as well and escalates as usual.
    """

    name: str
    machine: Machine[Any] | type[Machine[Any]] | None = None
    state: Mapping[str, Any] | None = None
    restart: Restart = Restart.PERMANENT
    depends_on: tuple[str, ...] = ()
    mode: DriveMode = DriveMode.AUTO
    supervisor: SupervisorSpec | None = None
    backoff: Backoff | None = None
    budget: Budget | None = None

    def __post_init__(self) -> None:
        _check_part(self.name, "child")
        if (self.machine is None) == (self.supervisor is None):
            raise ConfigurationError(f"child {self.name!r} needs exactly one of machine= or supervisor=")
        if self.machine is not None and self.state is not None:
            # Checked here, once: Host.spawn checks again at every (re)start, and a restart
            # that raised there would leave the child down with nobody told.
            self.machine.check_settings(self.state)


@dataclass(frozen=True)
class SupervisorSpec:
    name: str
    children: Sequence[ChildSpec] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    budget: Budget = field(default_factory=Budget)
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        _check_part(self.name, "supervisor")


def _check_part(name: str, what: str) -> None:
    """A child's or supervisor's name is one part of a path (``root/web``): refused when it is
    declared, not when the supervisor first starts the child."""
    check_identifier(name, "name")
    problem = name_problem(name)
    if problem is not None:
        raise ConfigurationError(f"{what} name {name!r} {problem}")


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    children: int
    alive: int
    restarts: int
    pending_restarts: int
    given_up: int = 0


class SupervisorState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # the restart budget was exceeded (or a bug); the parent decides what next
