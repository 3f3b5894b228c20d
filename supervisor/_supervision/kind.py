"""A process kind as a node is built with it: its machine type, the executors of its actions,
and the configuration it owns.

Most kinds are a :class:`~supervisor.Machine` subclass and nothing more (a user's workflow, a
device protocol): :class:`MachineKind` makes one of those a kind. A kind whose machine or
executors need the daemon's settings (where logs and records go, the SSH hosts of a batch
cluster) implements :class:`Kind` itself: it is given a :class:`KindSetup` and builds them.
The daemon loads kinds from Python entry points (group ``statevisor.kinds``) and from its
configuration's ``[kinds]`` table; statevisor's own kinds come the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._core.actions import ExecuteFunction, Executor
from .._core.machine import Machine


@dataclass(frozen=True)
class KindSetup:
    """What a daemon gives a kind to build its machine and executors with.

    ``config_dir``: where relative paths of the configuration start. ``log_dir``: where
    processes' output logs go. ``run_dir``: where kinds keep records of their own (each in a
    directory of its own under it). ``tables``: the configuration's top-level tables the kind
    owns (:attr:`Kind.tables`), as written, already checked by :meth:`Kind.check_tables`.
    """

    config_dir: Path
    log_dir: Path
    run_dir: Path
    tables: Mapping[str, Any] = field(default_factory=dict)


class Kind(Protocol):
    """A process kind: a machine type, and how a daemon builds it and its executors."""

    @property
    def machine(self) -> type[Machine[Any]]:
        """The process type (its ``kind`` is the kind's name)."""
        ...

    @property
    def tables(self) -> tuple[str, ...]:
        """Top-level configuration tables this kind owns (the batch kind's ``host``)."""
        ...

    @property
    def action_types(self) -> tuple[str, ...]:
        """The action types :meth:`build` provides executors for."""
        ...

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        """Check the tables this kind owns before anything starts; raise
        :class:`~supervisor.SettingsError` with the key's dotted path (``host.NAME.key``)."""
        ...

    def build(self, setup: KindSetup) -> tuple[Machine[Any], Mapping[str, Executor | ExecuteFunction]]:
        """The machine a node runs processes of this kind with, and the executors of its actions."""
        ...


class MachineKind:
    """A :class:`~supervisor.Machine` subclass as a kind: built with no arguments, owning no
    configuration table, its actions executed by executors registered apart (a configuration's
    ``[executors]``, entry points of group ``statevisor.executors``)."""

    tables: tuple[str, ...] = ()
    action_types: tuple[str, ...] = ()

    def __init__(self, machine: type[Machine[Any]]) -> None:
        self.machine = machine

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        return None

    def build(self, setup: KindSetup) -> tuple[Machine[Any], Mapping[str, Executor | ExecuteFunction]]:
        return self.machine(), {}

    def __repr__(self) -> str:
        return f"<MachineKind {self.machine.kind!r} {self.machine.__module__}:{self.machine.__qualname__}>"
