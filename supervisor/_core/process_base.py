"""A process's bookkeeping: its slots, derived status, snapshots, checkpoints and timers.

:class:`ProcessBase` holds what every layer of a process reads; the control operations
(``_process_control``) and the loop that runs transitions (``_process``) build on it. Nothing
here waits: every method is plain synchronous bookkeeping.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from .actions import TrackedAction
from .codec import Checkpoint, decode_record, encode_fields
from .inputs import Input, TimerFired
from .lifecycle import DriveMode, Lifecycle, check_move
from .machine import Machine
from .snapshot import ProcessRecord, ProcessStatistics, Snapshot
from .state import Journal, TrackedDict, pack, unpack
from .waiters import Condition, Conditions
from .write_ahead import ReleaseQueue

if TYPE_CHECKING:
    from .clock import TimerHandle
    from .process import Process
    from .runtime import Runtime

_timer_tokens = itertools.count()

EMPTY_QUEUE: deque[Any] = deque(maxlen=0)
"""A queue that stays empty (appends fall out of it), shared by every process with nothing to
redeliver and every ended process: an empty deque of its own costs a process a 0.5 KB block.
Whatever puts inputs in such a place first gives it a queue of its own."""


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
    """A timer's expiry as queued; stale ones (re-armed or cancelled since) are dropped."""

    __slots__ = ("name", "token")

    def __init__(self, name: str, token: int) -> None:
        self.name = name
        self.token = token


class ProcessBase:
    """The state of one process that every layer reads (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_action_tasks",
        "_calls",
        "_capacity",
        "_conditions",
        "_dirty",
        "_error",
        "_errors",
        "_final_save",
        "_held",
        "_in_transition",
        "_journal",
        "_kill_reason",
        "_killing",
        "_lifecycle_seen",
        "_mailbox",
        "_nudge_capacity",
        "_nudges",
        "_pause_reason",
        "_pause_requested",
        "_paused",
        "_paused_itself",
        "_pending",
        "_postponed",
        "_redeliver",
        "_restored",
        "_result",
        "_since",
        "_snapshot",
        "_started",
        "_state",
        "_stepping",
        "_task",
        "_terminal",
        "_timers",
        "_transitions",
        "_user_queued",
        "_wakeup",
        "_watchers",
        "machine",
        "meta",
        "mode",
        "name",
        "phase",
        "pid",
        "runtime",
        "version",
    )

    def __init__(
        self,
        runtime: Runtime,
        machine: Machine[Any],
        pid: str,
        name: str,
        state: TrackedDict,
        journal: Journal,
        *,
        phase: str,
        version: int,
        mode: DriveMode,
        mailbox_size: int,
        nudge_buffer: int,
    ) -> None:
        self.runtime = runtime
        self.machine = machine
        self.meta: dict[str, Any] = {}
        self.pid = pid
        self.name = name
        self.mode = mode
        self.phase = phase
        self.version = version
        self._state = state
        self._journal = journal
        self._mailbox: deque[Input | TimerDue] = deque()
        self._conditions = Conditions()
        self._capacity = mailbox_size
        self._user_queued = 0
        self._postponed: list[Input] = []
        self._redeliver: deque[Input] = EMPTY_QUEUE  # its own once something is postponed
        self._wakeup: asyncio.Future[None] | None = None
        self._nudges = 0
        self._nudge_capacity = nudge_buffer
        self._paused = False
        self._pause_reason: str | None = None
        self._paused_itself = False
        self._pause_requested = False
        self._pending: dict[str, TrackedAction] = {}
        self._action_tasks: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, ArmedTimer] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._snapshot: Snapshot | None = None
        self._terminal: Lifecycle | None = None
        self._result: Any = None
        self._error: str | None = None
        self._kill_reason: str | None = None
        self._killing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_transition = False
        self._started = False
        self._restored = False
        self._stepping = False
        self._lifecycle_seen = Lifecycle.CREATED
        self._since = runtime.clock.now()
        self._transitions = 0
        self._errors = 0
        self._watchers = 0
        self._final_save: asyncio.Task[None] | None = None
        self._dirty = False
        self._held: ReleaseQueue | None = None  # made on the first pipelined checkpoint

    # --- derived status ------------------------------------------------------------------

    @property
    def kind(self) -> str:
        return self.machine.kind

    @property
    def lifecycle(self) -> Lifecycle:
        if self._terminal is not None:
            return self._terminal
        if not self._started:
            return Lifecycle.CREATED
        return Lifecycle.WAITING if (self._pending or self._timers) else Lifecycle.RUNNING

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def done(self) -> bool:
        return self._terminal is not None

    @property
    def transitions(self) -> int:
        """Transitions committed (cheap: no statistics record is built)."""
        return self._transitions

    @property
    def mailbox_depth(self) -> int:
        return len(self._mailbox) + len(self._redeliver)

    @property
    def stepping(self) -> bool:
        """Handling an input right now, or holding effects until their checkpoint is durable."""
        return self._stepping or bool(self._held)

    @property
    def dirty(self) -> bool:
        """Committed changes not yet handed to the checkpoint store."""
        return self._dirty

    @property
    def pending_view(self) -> Mapping[str, TrackedAction]:
        return self._pending

    def waiting_on(self) -> tuple[str, ...]:
        actions = (f"action {a.type} {a.id}" for a in self._pending.values())
        timers = (f"timer {name} at {t.deadline:.3f}" for name, t in self._timers.items())
        return (*actions, *timers)

    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and snap.version == self.version:
            return snap
        if self._in_transition:
            # An async transition is suspended halfway: show the last committed state.
            self._journal.swap_to_before()
            try:
                view = unpack(pack(self.machine.redacted(self.machine.view(self._state))))
            finally:
                self._journal.swap_to_after()
        else:
            view = unpack(pack(self.machine.redacted(self.machine.view(self._state))))
        snap = Snapshot(
            pid=self.pid,
            name=self.name,
            kind=self.machine.kind,
            version=self.version,
            lifecycle=self.lifecycle,
            paused=self._paused,
            pause_reason=self._pause_reason,
            phase=self.phase,
            state=view,
            waiting_on=self.waiting_on(),
            since=self._since,
            result=self._result,
            error=self._error,
        )
        self._snapshot = snap
        return snap

    def statistics(self) -> ProcessStatistics:
        return ProcessStatistics(
            version=self.version,
            transitions=self._transitions,
            transition_errors=self._errors,
            mailbox_depth=self.mailbox_depth,
            mailbox_capacity=self._capacity,
            nudges_buffered=self._nudges,
            pending_actions=len(self._pending),
            armed_timers=len(self._timers),
            postponed=len(self._postponed),
            watchers=self._watchers,
        )

    def _ending(self, ending: tuple[str, Any] | None) -> tuple[Lifecycle, Any, str | None]:
        if ending is None:
            return self.lifecycle, self._result, self._error
        how, value = ending
        if how == "finished":
            return Lifecycle.FINISHED, value, None
        return Lifecycle.FAILED, None, value

    def checkpoint(self, ending: tuple[str, Any] | None = None) -> Checkpoint:
        """The encoded checkpoint of the last committed state (one msgpack pass).

        ``ending`` is a finishing transition's ``ctx.end``: the checkpoint is then terminal.
        """
        lifecycle, result, error = self._ending(ending)
        paused = self._persisted_pause()
        pending = [[a.id, a.type, a.payload] for a in self._pending.values()] if self._pending else []
        timers = [[n, t.deadline, t.payload] for n, t in self._timers.items()] if self._timers else []
        self._dirty = False
        if self._in_transition and self._journal.entries:
            self._journal.swap_to_before()  # a transition is suspended: save what was committed
            try:
                return encode_fields(
                    self.pid, self.name, self.machine.kind, self.version, self.phase, self._state,
                    pending, timers, lifecycle, result, error, paused, self.meta, self._since, self.machine.schema,
                )  # fmt: skip
            finally:
                self._journal.swap_to_after()
        return encode_fields(
            self.pid, self.name, self.machine.kind, self.version, self.phase, self._state,
            pending, timers, lifecycle, result, error, paused, self.meta, self._since, self.machine.schema,
        )  # fmt: skip

    def _persisted_pause(self) -> bool | str:
        """What the checkpoint keeps of a pause: the reason of a self-pause (resume then tells
        the machine), True for an operator's pause, and nothing of the runtime's own holds
        (a failing store): a restart is the retry those wait for."""
        if not self._paused:
            return False
        if self._paused_itself:
            return self._pause_reason or True
        return self._pause_reason is None

    def mark_dirty(self) -> None:
        """Have the next group commit write this process's latest state (nobody waits for it):
        after an effect-free commit, or a pause or resume (no transition ran, so nothing else
        would write those)."""
        checkpointer = self.runtime.checkpointer
        if checkpointer is not None and self._terminal is None:
            self._dirty = True
            checkpointer.mark_dirty(cast("Process", self))  # the only concrete subclass

    def record(self) -> ProcessRecord:
        """The last committed state as a record (a decoded checkpoint: a plain copy)."""
        return decode_record(self.checkpoint().blob)

    def __repr__(self) -> str:
        flags = " paused" if self._paused else ""
        return (
            f"<Process {self.pid} {self.machine.kind!r} {self.lifecycle}{flags} phase={self.phase} "
            f"v{self.version}, {len(self._mailbox)} queued, {len(self._pending)} pending, "
            f"{len(self._timers)} timers>"
        )

    # --- wake-ups and self-pauses -----------------------------------------------------

    def _poke(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _hold(self, reason: str) -> None:
        """Pause on the runtime's own account, saying why (resume() lifts it)."""
        self._paused = True
        self._pause_reason = reason
        self.version += 1
        self._conditions.wake_all(Condition.CHANGED)

    def _refresh_lifecycle(self) -> None:
        current = self.lifecycle
        if current is not self._lifecycle_seen:
            check_move(self._lifecycle_seen, current)
            self._lifecycle_seen = current
            self._since = self.runtime.clock.now()

    # --- timers ---------------------------------------------------------------------------

    def _arm(self, name: str, deadline: float, payload: Any) -> None:
        self._disarm(name)
        token = next(_timer_tokens)
        handle = self.runtime.clock.call_at(deadline, partial(self._timer_due, name, token))
        self._timers[name] = ArmedTimer(deadline, payload, token, handle)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.handle.cancel()

    def _timer_due(self, name: str, token: int) -> None:
        if self._terminal is None:
            self._mailbox.append(TimerDue(name, token))
            self._poke()

    def _take_timer(self, due: TimerDue) -> TimerFired | None:
        timer = self._timers.get(due.name)
        if timer is None or timer.token != due.token:
            return None
        del self._timers[due.name]
        return TimerFired(due.name, timer.payload)
