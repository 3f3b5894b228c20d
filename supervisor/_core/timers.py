"""A process's timers: named, each armed at an absolute deadline on the runtime's clock.

gen_statem's timeouts are one mechanism here: the state timeout (``STATE_TIMEOUT``, disarmed
by any phase change), named timeouts, and the event timeout (disarmed by any input). A timer
that falls due does not run anything: it queues a :class:`TimerDue` in the process's mailbox,
and only when the process takes that item is it checked against the timer as armed *now*; a
timer re-armed or disarmed meanwhile has a new token (or none), so a stale expiry is dropped.
Deadlines are absolute, so a checkpointed timer is re-armed after a crash for the moment it
was meant to fire, not for its full length again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .inputs import TimerFired

if TYPE_CHECKING:
    from .clock import Clock, TimerHandle

_tokens = itertools.count()


class ArmedTimer:
    """A named timer as armed: its deadline, payload, clock handle and the token that tells a
    current expiry from a stale one."""

    __slots__ = ("deadline", "handle", "payload", "token")

    def __init__(self, deadline: float, payload: Any, token: int, handle: TimerHandle) -> None:
        self.deadline = deadline
        self.payload = payload
        self.token = token
        self.handle = handle


class TimerDue:
    """A timer's expiry as queued in the mailbox; stale ones (re-armed or disarmed since) are dropped."""

    __slots__ = ("name", "token")

    def __init__(self, name: str, token: int) -> None:
        self.name = name
        self.token = token


class Inbox(Protocol):
    """Where expiries go: the process's mailbox."""

    def put(self, item: TimerDue) -> None: ...


class Timers:
    """The armed timers of one process; an expiry goes into ``mailbox``.

    The table is made when the first timer is armed: many processes never arm one, and each
    object a process keeps is one more for the garbage collector's full passes to walk.
    """

    __slots__ = ("_armed", "_clock", "_mailbox")

    def __init__(self, clock: Clock, mailbox: Inbox) -> None:
        self._clock = clock
        self._mailbox = mailbox
        self._armed: dict[str, ArmedTimer] | None = None

    def arm(self, name: str, deadline: float, payload: Any) -> None:
        """Arm ``name`` for ``deadline`` (re-arming it if it is armed)."""
        armed = self._armed
        if armed is None:
            armed = self._armed = {}
        else:
            self.disarm(name)
        token = next(_tokens)
        handle = self._clock.call_at(deadline, partial(self._due, name, token))
        armed[name] = ArmedTimer(deadline, payload, token, handle)

    def disarm(self, name: str) -> None:
        """Disarm ``name``; nothing happens if it is not armed."""
        armed = self._armed
        if armed:
            timer = armed.pop(name, None)
            if timer is not None:
                timer.handle.cancel()

    def disarm_all(self) -> None:
        """Disarm every timer (the process ended: nothing more may fall due)."""
        armed = self._armed
        if armed:
            for timer in armed.values():
                timer.handle.cancel()
            armed.clear()

    def _due(self, name: str, token: int) -> None:
        self._mailbox.put(TimerDue(name, token))

    def take(self, due: TimerDue) -> TimerFired | None:
        """The input a queued expiry delivers, or None when the timer was re-armed or disarmed
        since (a stale expiry); a delivered timer is no longer armed."""
        armed = self._armed
        if not armed:
            return None
        timer = armed.get(due.name)
        if timer is None or timer.token != due.token:
            return None
        del armed[due.name]
        return TimerFired(due.name, timer.payload)

    def records(self) -> list[list[Any]]:
        """``[[name, deadline, payload], ...]``, as a checkpoint keeps them."""
        armed = self._armed
        return [[n, t.deadline, t.payload] for n, t in armed.items()] if armed else []

    def descriptions(self) -> Iterator[str]:
        """``timer NAME at DEADLINE`` for each, as snapshots list what a process waits on."""
        armed = self._armed
        return (f"timer {name} at {t.deadline:.3f}" for name, t in armed.items()) if armed else iter(())

    def __contains__(self, name: str) -> bool:
        armed = self._armed
        return armed is not None and name in armed

    def __len__(self) -> int:
        armed = self._armed
        return len(armed) if armed else 0

    def __bool__(self) -> bool:
        return bool(self._armed)

    def __repr__(self) -> str:
        return f"<Timers {', '.join(self._armed or ()) or 'none armed'}>"
