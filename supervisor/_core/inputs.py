"""What a transition receives. Match on these classes; they are frozen and slotted."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

STATE_TIMEOUT = "state_timeout"
"""The timer name a state timeout fires with (reserved: named timeouts may not use it)."""

EVENT_TIMEOUT = "event_timeout"
"""The timer name an event timeout fires with (reserved, as :data:`STATE_TIMEOUT` is)."""


class ControlEvent(StrEnum):
    """Events the runtime itself delivers."""

    STARTED = "started"
    RESUMED = "resumed"
    """Delivered on resume, only to a process that paused itself with ``ctx.pause(reason)``."""


@dataclass(frozen=True, slots=True)
class Control:
    """A runtime event; a new process's first input is ``Control(ControlEvent.STARTED)``."""

    event: ControlEvent


@dataclass(frozen=True, slots=True)
class Cast:
    """A message that expects no reply."""

    message: Any


@dataclass(frozen=True, slots=True)
class Call:
    """A message whose sender waits for ``ctx.reply(call, value)`` (now or in a later transition).

    ``ref`` identifies the caller; it is a plain int so it can be kept in state for a deferred
    reply.
    """

    message: Any
    ref: int


@dataclass(frozen=True, slots=True)
class ActionSucceeded:
    """A tracked action's executor returned ``value``."""

    action_id: str
    action_type: str
    value: Any


@dataclass(frozen=True, slots=True)
class ActionFailed:
    """A tracked action's executor raised; ``error_type`` and ``message`` describe it."""

    action_id: str
    action_type: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer expired: a named timeout, the state timeout (``name == STATE_TIMEOUT``) or the
    event timeout (``name == EVENT_TIMEOUT``)."""

    name: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Internal:
    """An event a transition queued for its own process (``ctx.next_event(message)``, gen_statem's
    internal events): handled next, before anything waiting in the mailbox."""

    message: Any


Input = Control | Cast | Call | ActionSucceeded | ActionFailed | TimerFired | Internal
"""Everything a transition can receive."""

ActionResult = ActionSucceeded | ActionFailed
