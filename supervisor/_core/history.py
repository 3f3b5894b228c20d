"""What a process did lately: its last transitions, each as one line an operator can read.

A process keeps none by default: a record per transition for every process would cost an idle
daemon of 100,000 processes memory for something nobody reads. An observer that shows a process
(the web console's page) asks for it with ``Process.keep_history``, and the process records its
transitions from then on, until the last observer lets go. Recording is synchronous and happens
at commit; the descriptions are made then, masked by the kind's ``secret_keys``, and cut to
:data:`DESCRIPTION_LIMIT` characters, so a record never holds a large value or a secret.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .inputs import ActionFailed, ActionSucceeded, Call, Cast, Control, Input, Internal, TimerFired

if TYPE_CHECKING:
    from .machine import Context

HISTORY_SIZE = 50
"""Transitions a process keeps while it records them."""

DESCRIPTION_LIMIT = 160
"""Characters a described value is cut to (then ``…``)."""


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One transition as a person reads it: what came in, what it did, where it left the process.

    ``at`` is the runtime clock when it began (epoch seconds on the system clock). ``error`` is
    set when the transition raised: it was rolled back, and ``effects`` is then empty.
    """

    version: int
    at: float
    input: str
    phase: str
    moved_from: str | None = None
    effects: str = ""
    error: str | None = None


class History:
    """The last :data:`HISTORY_SIZE` transitions of one process, and how many observers want them.

    What is kept per transition is what the process has at hand (the input, the transition's
    context, the phases): recording costs an append, and the lines a person reads are written
    only when someone reads them (:meth:`records`), at most as often as a page is updated.
    """

    __slots__ = ("_entries", "keepers")

    def __init__(self, size: int = HISTORY_SIZE) -> None:
        self._entries: deque[_Entry] = deque(maxlen=size)
        self.keepers = 0

    def add(
        self,
        version: int,
        at: float,
        input: Input | str | None,
        phase: str,
        moved_from: str | None = None,
        ctx: Context | None = None,
        error: str | None = None,
    ) -> None:
        """One transition (``input`` its input; None for a restore), or a change that is none
        (``input`` a description: a pause, a kill)."""
        self._entries.append((version, at, input, phase, moved_from, ctx, error))

    def records(self, mask: Callable[[Any], Any], last: int | None = None) -> list[TransitionRecord]:
        """Oldest first (the ``last`` ones only, if given), values masked by ``mask`` (the kind's
        secret keys)."""
        entries = list(self._entries)
        found = []
        for version, at, input, phase, moved_from, ctx, error in entries if last is None else entries[-last:]:
            if input is None:
                text = "restore"
            elif isinstance(input, str):
                text = input
            else:
                text = describe_input(input, mask)
            effects = describe_effects(ctx) if ctx is not None and error is None else ""
            found.append(TransitionRecord(version, at, text, phase, moved_from, effects, error))
        return found

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<History {len(self._entries)} transitions, {self.keepers} keepers>"


_Entry = tuple[int, float, "Input | str | None", str, "str | None", "Context | None", "str | None"]


def short(value: Any, mask: Callable[[Any], Any]) -> str:
    """``value`` masked by ``mask`` and written as one line of at most DESCRIPTION_LIMIT characters."""
    text = repr(mask(value)).replace("\n", " ")
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


def describe_input(input: Input, mask: Callable[[Any], Any]) -> str:
    """What a transition handled: ``cast 'tick'``, ``action shell.run p1:3:0 succeeded: {...}``."""
    if isinstance(input, Cast):
        return f"cast {short(input.message, mask)}"
    if isinstance(input, Call):
        return f"call {short(input.message, mask)}"
    if isinstance(input, ActionSucceeded):
        return f"action {input.action_type} {input.action_id} succeeded: {short(input.value, mask)}"
    if isinstance(input, ActionFailed):
        return f"action {input.action_type} {input.action_id} failed: {input.error_type}: {input.message}"
    if isinstance(input, TimerFired):
        return f"timer {input.name} fired"
    if isinstance(input, Control):
        return str(input.event)
    if isinstance(input, Internal):
        return f"internal {short(input.message, mask)}"
    return type(input).__name__  # pragma: no cover - every input type is named above


def describe_effects(ctx: Context) -> str:
    """What a committed transition described, in the order they take effect."""
    parts: list[str] = []
    if ctx.goto_phase is not None and ctx.goto_phase != ctx.phase:
        parts.append(f"goto {ctx.goto_phase}")
    for name, deadline, _ in ctx.timer_ops or ():
        parts.append(f"timer {name} cancelled" if deadline is None else f"timer {name} armed")
    if ctx.postponed:
        parts.append("postponed")
    if ctx.pause_reason is not None:
        parts.append(f"paused itself: {ctx.pause_reason}")
    for action in ctx.tracked or ():
        parts.append(f"track {action.type} {action.id}")
    for untracked in ctx.untracked or ():
        parts.append(f"emit {untracked.type}")
    if ctx.replies:
        parts.append(f"{len(ctx.replies)} repl{'y' if len(ctx.replies) == 1 else 'ies'}")
    if ctx.end is not None:
        parts.append("finished" if ctx.end[0] == "finished" else f"failed: {ctx.end[1]}")
    return ", ".join(parts)
