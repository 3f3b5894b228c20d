"""The enums that name where a process is and how it is driven."""

from __future__ import annotations

from enum import StrEnum

from .._errors import IllegalLifecycleMove


class Lifecycle(StrEnum):
    """Where a process is in its life. ``paused`` is a separate flag, not a lifecycle.

    ``running`` and ``waiting`` are derived from the committed state: a live process with
    tracked actions in flight or timers armed is waiting (on them); otherwise it is running.
    """

    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def alive(self) -> bool:
        return self not in _TERMINAL


_TERMINAL = frozenset({Lifecycle.FINISHED, Lifecycle.FAILED, Lifecycle.KILLED})

# The moves the runtime may make; anything else is a bug and raises.
_ALLOWED: dict[Lifecycle, frozenset[Lifecycle]] = {
    Lifecycle.CREATED: frozenset({Lifecycle.RUNNING, Lifecycle.WAITING, *_TERMINAL}),
    Lifecycle.RUNNING: frozenset({Lifecycle.WAITING, *_TERMINAL}),
    Lifecycle.WAITING: frozenset({Lifecycle.RUNNING, *_TERMINAL}),
    Lifecycle.FINISHED: frozenset(),
    Lifecycle.FAILED: frozenset(),
    Lifecycle.KILLED: frozenset(),
}


def check_move(source: Lifecycle, target: Lifecycle) -> None:
    """Raise :class:`IllegalLifecycleMove` unless ``source -> target`` is allowed."""
    if source is not target and target not in _ALLOWED[source]:
        raise IllegalLifecycleMove(f"illegal lifecycle move {source} -> {target}")


class DriveMode(StrEnum):
    """How a process advances: on its own, or one transition per nudge."""

    AUTO = "auto"
    STEP = "step"


class ErrorPolicy(StrEnum):
    """What a raising transition does to its process (the state is rolled back either way)."""

    CONTINUE = "continue"
    FAIL = "fail"
