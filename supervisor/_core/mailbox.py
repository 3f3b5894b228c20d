"""A process's mailbox: what it is asked to handle, in order, and the callers waiting on replies.

Three kinds of item arrive. Casts and calls from callers take room, bounded by the mailbox's
capacity: a caller waits for room (``cast``) or is told there is none (``try_cast``). Results
of tracked actions, timer expiries and control events are the runtime's own and always fit:
dropping one would lose a result, and a process that cannot take its own results would never
make room for its callers. Inputs a transition postponed (gen_statem's ``postpone``) wait beside
the queue and are delivered again, before anything newer, after the next phase change.

Internal events a transition queued for its own process (``ctx.next_event``) come first of all,
before redelivered and queued items.

The mailbox decides nothing about an item: the process admits or drops it when it takes it (a
result for an action no longer pending, a timer re-armed since). It wakes the process's driver
when something arrives: a future the process's task awaits, or, in a simulation, a waker that
marks the process runnable.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any, Protocol

from .inputs import Call, Cast, Input, Internal
from .timers import TimerDue
from .waiters import Condition, Conditions

EMPTY_QUEUE: deque[Any] = deque(maxlen=0)
"""A queue that stays empty (appends fall out of it), shared by every mailbox with nothing to
redeliver and by every closed one: an empty deque of its own costs a process a 0.5 KB block.
Whatever puts items in such a place first gives the mailbox a queue of its own."""

_call_refs = itertools.count(1)


class Waker(Protocol):
    """What the mailbox sets when an item arrives: an asyncio future, or a simulation's waker."""

    def done(self) -> bool: ...

    def set_result(self, value: None) -> None: ...


class Reply(Protocol):
    """Where a call's reply goes: an asyncio future, or a simulation's record of the call."""

    def done(self) -> bool: ...

    def set_result(self, value: Any) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...


class Mailbox:
    """One process's queue of inputs, its postponed inputs, its nudges and its pending calls.

    ``capacity`` bounds the casts and calls queued at once; ``nudge_capacity`` the nudges a
    process in step mode may have in hand. ``conditions`` are the process's wait queues: the
    mailbox wakes the callers waiting for room in them.
    """

    __slots__ = (
        "_calls",
        "_capacity",
        "_conditions",
        "_internal",
        "_nudge_capacity",
        "_nudges",
        "_postponed",
        "_queue",
        "_redeliver",
        "_user_queued",
        "_waker",
    )

    def __init__(self, conditions: Conditions, capacity: int, nudge_capacity: int) -> None:
        self._conditions = conditions
        self._queue: deque[Input | TimerDue] = deque()
        self._capacity = capacity
        self._user_queued = 0
        self._postponed: list[Input] = []
        self._redeliver: deque[Input] = EMPTY_QUEUE  # its own once something is postponed
        self._internal: deque[Internal] = EMPTY_QUEUE  # its own once an internal event is queued
        self._nudges = 0
        self._nudge_capacity = nudge_capacity
        self._calls: dict[int, Reply] | None = None  # made at the first call
        self._waker: Waker | None = None

    # --- arrivals ---------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Casts and calls the mailbox holds at once."""
        return self._capacity

    def has_room(self) -> bool:
        """Room for one more cast or call."""
        return self._user_queued < self._capacity

    def put_user(self, input: Cast | Call) -> None:
        """Queue a caller's cast or call (check :meth:`has_room` first)."""
        self._user_queued += 1
        self._queue.append(input)
        self._wake()

    def put(self, item: Input | TimerDue) -> None:
        """Queue one of the runtime's own items: a result, a timer's expiry, a control event."""
        self._queue.append(item)  # a closed mailbox's queue keeps nothing
        self._wake()

    def _wake(self) -> None:
        waker = self._waker
        if waker is not None and not waker.done():
            waker.set_result(None)

    async def arrival(self) -> None:
        """Wait until something is put in the mailbox (or a wake-up is asked for)."""
        waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waker = waker
        try:
            await waker
        finally:
            self._waker = None

    def wake(self) -> None:
        """Wake the process's driver without an item (a resume: its mailbox may be full)."""
        self._wake()

    def drive_with(self, waker: Waker) -> None:
        """Wake ``waker`` at every arrival from now on (a simulation's driver: no task waits)."""
        self._waker = waker

    # --- taking -----------------------------------------------------------------------------

    def internal(self) -> Internal | None:
        """The next internal event, if any: it comes before anything else."""
        return self._internal.popleft() if self._internal else None

    def redelivered(self) -> Input | None:
        """The next postponed input to deliver again, if any: it comes before anything queued."""
        return self._redeliver.popleft() if self._redeliver else None

    def push_internal(self, messages: list[Any]) -> None:
        """Queue internal events (a committed transition's ``ctx.next_event``), after those
        already queued, ahead of everything else."""
        if not self._internal:
            self._internal = deque()
        self._internal.extend(Internal(message) for message in messages)
        self._wake()

    def internal_messages(self) -> list[Any]:
        """The internal events not handled yet, as a checkpoint keeps them."""
        return [event.message for event in self._internal]

    def pop(self) -> Input | TimerDue | None:
        """The oldest queued item, or None. Taking a cast or a call gives its room back."""
        if not self._queue:
            return None
        item = self._queue.popleft()
        kind = type(item)
        if kind is Cast or kind is Call:
            self._user_queued -= 1
            self._conditions.wake_one(Condition.ROOM)
        return item

    def __bool__(self) -> bool:
        return bool(self._queue) or bool(self._redeliver) or bool(self._internal)

    @property
    def depth(self) -> int:
        """Items waiting: queued, to be redelivered and internal."""
        return len(self._queue) + len(self._redeliver) + len(self._internal)

    # --- postponing -------------------------------------------------------------------------

    def postpone(self, input: Input) -> None:
        """Keep ``input`` for redelivery after the next phase change."""
        self._postponed.append(input)

    def redeliver_postponed(self) -> None:
        """The phase changed: the postponed inputs come next, in the order they arrived."""
        if not self._postponed:
            return
        if self._redeliver:
            self._redeliver.extend(self._postponed)
        else:  # the shared empty queue, or an emptied one: a queue of its own
            self._redeliver = deque(self._postponed)
        self._postponed.clear()

    @property
    def postponed(self) -> int:
        return len(self._postponed)

    # --- nudges (step mode) -----------------------------------------------------------------

    def nudge_full(self) -> bool:
        return self._nudges >= self._nudge_capacity

    def add_nudge(self) -> None:
        self._nudges += 1
        self._wake()

    def use_nudge(self) -> None:
        self._nudges -= 1
        self._conditions.wake_one(Condition.NUDGE_ROOM)

    @property
    def nudges(self) -> int:
        return self._nudges

    # --- calls awaiting replies -------------------------------------------------------------

    def new_call(self) -> tuple[int, asyncio.Future[Any]]:
        """A reference for a call and the future its reply will resolve."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ref = next(_call_refs)
        self.expect_reply(ref, future)
        return ref, future

    def expect_reply(self, ref: int, reply: Reply) -> None:
        calls = self._calls
        if calls is None:
            calls = self._calls = {}
        calls[ref] = reply

    def forget_call(self, ref: int) -> None:
        if self._calls:
            self._calls.pop(ref, None)

    def reply(self, ref: int, value: Any) -> None:
        """Answer call ``ref`` (a caller that gave up, or a ref already answered: nothing)."""
        calls = self._calls
        reply = calls.pop(ref, None) if calls else None
        if reply is not None and not reply.done():
            reply.set_result(value)

    def fail_call(self, ref: int, error: BaseException) -> None:
        calls = self._calls
        reply = calls.pop(ref, None) if calls else None
        if reply is not None and not reply.done():
            reply.set_exception(error)

    def calls(self) -> list[Reply]:
        """The replies callers wait for now."""
        return list(self._calls.values()) if self._calls else []

    # --- the end ----------------------------------------------------------------------------

    def close(self, error: BaseException) -> None:
        """The process ended: every caller waiting on it (for room, a nudge or a reply) gets
        ``error``, and the queues give their memory back (an ended process may be kept for
        lookups long after; nothing can queue on it any more, and the shared queue keeps
        nothing)."""
        for reply in self.calls():
            if not reply.done():
                reply.set_exception(error)
        self._calls = None
        self._conditions.fail_all(Condition.ROOM, error)
        self._conditions.fail_all(Condition.NUDGE_ROOM, error)
        self._queue = self._redeliver = self._internal = EMPTY_QUEUE
        self._postponed.clear()

    def __repr__(self) -> str:
        return (
            f"<Mailbox {len(self._queue)} queued ({self._user_queued}/{self._capacity} from callers), "
            f"{len(self._internal)} internal, {len(self._redeliver)} to redeliver, {len(self._postponed)} postponed, "
            f"{self._nudges} nudges>"
        )
