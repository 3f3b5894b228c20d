"""One process: a machine, its state, and the loop that takes its inputs one at a time.

A process is composed of named parts: its :class:`~.mailbox.Mailbox` (what it is asked to
handle, and the callers waiting on replies), its :class:`~.timers.Timers`, its journaled state
(:mod:`.state`) and, once it pipelines, its :class:`~.write_ahead.WriteAheadQueue` (effects
held until their checkpoint is durable). What it needs of the runtime that drives it is the
:class:`ProcessEnvironment` protocol: a clock, executors, a checkpointer, settings, and the two
seams a simulation replaces (how a process is driven, how its actions are executed).

Decisions are the machine's: what an input does to the state is decided in the transition.
This module does the bookkeeping around it, in four parts:

* **Status** (plain synchronous reads): the lifecycle is derived from facts (ended, started,
  actions in flight, timers armed), never stored twice; snapshots and statistics.
* **The loop** (``_main``): take the next input from the mailbox (admitting or dropping it),
  run the transition under the journal, roll back on an exception or commit.
* **Effects** (``_commit``): the write-ahead rule. Tracked and untracked actions and call
  replies leave the process only once the checkpoint of the transition that described them is
  durable: waited for (``_make_durable``), or pipelined behind it (the write-ahead queue lets
  them out in transition order).
* **Control** from outside the task (handles, supervisors): pause, resume, kill, detach. These
  change flags and wake the process, which acts on them only between transitions (step
  boundaries).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, Protocol

import structlog

from .._errors import (
    NondeterminismError,
    ProcessFailed,
    ProcessFinished,
    ProcessKilled,
    ProcessTerminated,
    StoreError,
    TransitionError,
)
from .actions import ExecutorRegistry, TrackedAction, UntrackedAction
from .checkpointer import Checkpointer
from .clock import Clock
from .codec import Checkpoint, decode_record, encode_fields
from .history import History, TransitionRecord
from .inputs import (
    EVENT_TIMEOUT,
    STATE_TIMEOUT,
    ActionFailed,
    ActionSucceeded,
    Call,
    Cast,
    Control,
    ControlEvent,
    Input,
    TimerFired,
)
from .lifecycle import DriveMode, ErrorPolicy, Lifecycle, check_move
from .machine import Context, Machine
from .mailbox import Mailbox, Waker
from .slots import SlotPool
from .snapshot import ProcessRecord, ProcessStatistics, Snapshot
from .state import Journal, TrackedDict, adopt, pack, unpack
from .timers import TimerDue, Timers
from .waiters import Condition, Conditions
from .write_ahead import HeldEffects, WriteAheadQueue

log = structlog.get_logger("statevisor.process")

HELD = "start: spawned held (start=False); handle.start() launches it"
"""What a held process waits on, as its snapshot says."""


class ProcessEnvironment(Protocol):
    """What a process needs of the runtime that drives it (:class:`~.runtime.Runtime`, or a
    simulation's). Plain attributes are read at every use, so a runtime may change them (a
    checkpointer set once a store opens, ``draining`` at a shutdown)."""

    clock: Clock
    executors: ExecutorRegistry
    checkpointer: Checkpointer | None
    slots: SlotPool
    kill_grace: float
    store_retry_delays: tuple[float, ...]
    checkpoint_every_commit: bool
    check_determinism: bool
    draining: bool
    stepping: Process | None
    """The process that last began a transition (the loop watchdog names it)."""

    def drive(self, process: Process, restore: ProcessRecord | None) -> asyncio.Task[None] | None:
        """Start driving ``process`` (:meth:`Process.run`, or a simulation's steps)."""
        ...

    def execute(self, process: Process, action: TrackedAction) -> None:
        """Execute a tracked action whose checkpoint is durable (:meth:`Process.run_action`)."""
        ...

    def run_untracked(self, action: UntrackedAction) -> None: ...

    def background(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None: ...

    def abandon(self, task: asyncio.Future[Any], process: Process) -> None:
        """Keep a task that would not end in time (a hung executor), without waiting for it."""
        ...

    def forget(self, process: Process) -> None:
        """Drop a process from the live registry (it ended, or it was detached)."""
        ...

    def observe_action(self, process: Process, action: TrackedAction, seconds: float, ok: bool) -> None: ...

    def observe_transition_error(self, process: Process) -> None: ...

    def observe_terminated(self, process: Process) -> None: ...


class Process:
    """The runtime side of one process. Users hold a :class:`~supervisor.Handle` to it."""

    __slots__ = (
        "__weakref__",
        "_action_tasks",
        "_conditions",
        "_dirty",
        "_error",
        "_errors",
        "_final_save",
        "_history",
        "_in_transition",
        "_journal",
        "_kill_reason",
        "_killing",
        "_launched",
        "_lifecycle_seen",
        "_pause_reason",
        "_pause_requested",
        "_paused",
        "_paused_itself",
        "_pending",
        "_restored",
        "_result",
        "_since",
        "_snapshot",
        "_started",
        "_state",
        "_stepping",
        "_task",
        "_terminal",
        "_transitions",
        "_watchers",
        "_write_ahead",
        "env",
        "machine",
        "mailbox",
        "meta",
        "mode",
        "name",
        "phase",
        "pid",
        "timers",
        "version",
    )

    def __init__(
        self,
        env: ProcessEnvironment,
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
        self.env = env
        self.machine = machine
        self.meta: dict[str, Any] = {}
        self.pid = pid
        self.name = name
        self.mode = mode
        self.phase = phase
        self.version = version
        self._state = state
        self._journal = journal
        self._conditions = Conditions()
        self.mailbox = Mailbox(self._conditions, mailbox_size, nudge_buffer)
        self.timers = Timers(env.clock, self.mailbox)
        self._write_ahead: WriteAheadQueue | None = None  # made at the first pipelined checkpoint
        self._paused = False
        self._pause_reason: str | None = None
        self._paused_itself = False
        self._pause_requested = False
        self._pending: dict[str, TrackedAction] = {}
        self._action_tasks: dict[str, asyncio.Task[None]] = {}
        self._snapshot: Snapshot | None = None
        self._terminal: Lifecycle | None = None
        self._result: Any = None
        self._error: str | None = None
        self._kill_reason: str | None = None
        self._killing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_transition = False
        self._launched = False  # start() was called: a task drives it, or will
        self._started = False
        self._restored = False
        self._stepping = False
        self._lifecycle_seen = Lifecycle.CREATED
        self._since = env.clock.now()
        self._transitions = 0
        self._errors = 0
        self._watchers = 0
        self._final_save: asyncio.Task[None] | None = None
        self._dirty = False
        self._history: History | None = None  # made while an observer asks (keep_history)

    # ========================================================================================
    # Status: plain synchronous reads
    # ========================================================================================

    @property
    def kind(self) -> str:
        return self.machine.kind

    @property
    def lifecycle(self) -> Lifecycle:
        if self._terminal is not None:
            return self._terminal
        if not self._started:
            return Lifecycle.CREATED
        return Lifecycle.WAITING if (self._pending or self.timers) else Lifecycle.RUNNING

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
        return self.mailbox.depth

    @property
    def stepping(self) -> bool:
        """Handling an input right now, or holding effects until their checkpoint is durable."""
        return self._stepping or bool(self._write_ahead)

    @property
    def dirty(self) -> bool:
        """Committed changes not yet handed to the checkpoint store."""
        return self._dirty

    @property
    def pending_view(self) -> Mapping[str, TrackedAction]:
        return self._pending

    @property
    def executors(self) -> ExecutorRegistry:
        """The executors actions are checked against (a transition may describe no other)."""
        return self.env.executors

    @property
    def held(self) -> bool:
        """Spawned with ``start=False`` and not started yet: it takes no input until it is."""
        return not self._launched and self._terminal is None

    @property
    def ready(self) -> bool:
        """Started and through its first transition (or its restore), held, or ended."""
        return (
            self._terminal is not None
            or self.held
            or (self._started and self._transitions + self._errors > 0)
            or (self._started and self._restored)
        )

    @property
    def since(self) -> float:
        """When the current lifecycle began (runtime clock), as snapshots say."""
        return self._since

    @property
    def pause_reason(self) -> str | None:
        return self._pause_reason

    def waiting_on(self) -> tuple[str, ...]:
        if self.held:
            return (HELD,)
        actions = (f"action {a.type} {a.id}" for a in self._pending.values())
        return (*actions, *self.timers.descriptions())

    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and snap.version == self.version:
            return snap
        machine = self.machine
        if self._in_transition:
            # An async transition is suspended halfway: show the last committed state.
            self._journal.swap_to_before()
            try:
                view = unpack(pack(machine.redacted(machine.view(self._state))))
            finally:
                self._journal.swap_to_after()
        else:
            view = unpack(pack(machine.redacted(machine.view(self._state))))
        snap = Snapshot(
            pid=self.pid,
            name=self.name,
            kind=machine.kind,
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
        mailbox = self.mailbox
        return ProcessStatistics(
            version=self.version,
            transitions=self._transitions,
            transition_errors=self._errors,
            mailbox_depth=mailbox.depth,
            mailbox_capacity=mailbox.capacity,
            nudges_buffered=mailbox.nudges,
            pending_actions=len(self._pending),
            armed_timers=len(self.timers),
            postponed=mailbox.postponed,
            watchers=self._watchers,
        )

    def state_for_logs(self) -> Any:
        """The committed state, read-only use: where the machine's log files are."""
        return self._state

    def __repr__(self) -> str:
        flags = " paused" if self._paused else ""
        return (
            f"<Process {self.pid} {self.machine.kind!r} {self.lifecycle}{flags} phase={self.phase} "
            f"v{self.version}, {self.mailbox.depth} queued, {len(self._pending)} pending, "
            f"{len(self.timers)} timers>"
        )

    # --- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, ending: tuple[str, Any] | None = None) -> Checkpoint:
        """The encoded checkpoint of the last committed state (one msgpack pass).

        ``ending`` is a finishing transition's ``ctx.end``: the checkpoint is then terminal.
        """
        if ending is None:
            lifecycle, result, error = self.lifecycle, self._result, self._error
        elif ending[0] == "finished":
            lifecycle, result, error = Lifecycle.FINISHED, ending[1], None
        else:
            lifecycle, result, error = Lifecycle.FAILED, None, ending[1]
        paused = self._persisted_pause()
        pending = [[a.id, a.type, a.payload] for a in self._pending.values()] if self._pending else []
        timers = self.timers.records()
        internal = self.mailbox.internal_messages()
        self._dirty = False
        if self._in_transition and self._journal.entries:
            self._journal.swap_to_before()  # a transition is suspended: save what was committed
            try:
                return encode_fields(
                    self.pid, self.name, self.machine.kind, self.version, self.phase, self._state,
                    pending, timers, lifecycle, result, error, paused, self.meta, self._since, self.machine.schema,
                    internal,
                )  # fmt: skip
            finally:
                self._journal.swap_to_after()
        return encode_fields(
            self.pid, self.name, self.machine.kind, self.version, self.phase, self._state,
            pending, timers, lifecycle, result, error, paused, self.meta, self._since, self.machine.schema,
            internal,
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

    def record(self) -> ProcessRecord:
        """The last committed state as a record (a decoded checkpoint: a plain copy)."""
        return decode_record(self.checkpoint().blob)

    def mark_dirty(self) -> None:
        """Have the next group commit write this process's latest state (nobody waits for it):
        after an effect-free commit, or a pause or resume (no transition ran, so nothing else
        would write those)."""
        checkpointer = self.env.checkpointer
        if checkpointer is not None and self._terminal is None:
            self._dirty = True
            checkpointer.mark_dirty(self)

    def _refresh_lifecycle(self) -> None:
        current = self.lifecycle
        if current is not self._lifecycle_seen:
            check_move(self._lifecycle_seen, current)
            self._lifecycle_seen = current
            self._since = self.env.clock.now()
            self._snapshot = None  # a start or a restore changes it without a new version

    # ========================================================================================
    # Starting, and the loop
    # ========================================================================================

    def start(self, *, restore: ProcessRecord | None = None) -> None:
        if self._launched:
            return
        self._launched = True
        self._snapshot = None  # no longer held
        self.meta.pop("held", None)
        if restore is not None and restore.version == 0:
            restore = None  # checkpointed at spawn but never started: start it now, as new
        if restore is None:
            self.mailbox.put(Control(ControlEvent.STARTED))
        else:
            self._paused = restore.paused
            self._pause_reason = restore.pause_reason
            self._paused_itself = restore.pause_reason is not None
            for action in restore.pending:
                self._pending[action.id] = action
            if restore.next_events:
                self.mailbox.push_internal(list(restore.next_events))
            if restore.since is not None:
                # The lifecycle goes on from where the checkpoint left it: a command that has
                # run for an hour does not seem to have started at the daemon's restart.
                self._since = restore.since
                self._lifecycle_seen = restore.lifecycle
        self._task = self.env.drive(self, restore)

    def held_as(self, record: ProcessRecord) -> None:
        """This process, not started, is one that was spawned held and never started (as
        ``record`` says, pause included): it waits for :meth:`launch`, as before the restart."""
        self._paused = record.paused
        self._pause_reason = record.pause_reason
        if record.since is not None:
            self._since = record.since

    async def launch(self) -> None:
        """Start a held process; its start is durable before it takes its first input, so a
        crash cannot take it back. Nothing if it has started already."""
        if not self.held:
            return
        self.meta.pop("held", None)
        checkpointer = self.env.checkpointer
        if checkpointer is not None:
            await checkpointer.save(self.checkpoint())
        self.start()

    def ended_before(self, record: ProcessRecord) -> None:
        """This process, not started, is one that ended as ``record`` says: kept for lookups,
        never driven (a simulation rebuilds its ended processes so after a crash)."""
        self._terminal = self._lifecycle_seen = record.lifecycle
        self._result, self._error = record.result, record.error

    def drive_with(self, waker: Waker) -> None:
        """Driven by steps rather than a task of its own (a simulation): ``waker`` is set when
        the process has something to take."""
        self.mailbox.drive_with(waker)

    async def begin(self, restore: ProcessRecord | None) -> None:
        """Mark the process started; after a crash, re-arm its timers and run its restore."""
        self._started = True
        self._refresh_lifecycle()
        if restore is not None:
            for timer in restore.timers:
                self.timers.arm(timer.name, timer.deadline, timer.payload)
            await self._run_restore()
            self._restored = True
            self._snapshot = None  # what it waits on is re-armed, at the same version
            self._conditions.wake_all(Condition.CHANGED)

    async def run(self, restore: ProcessRecord | None) -> None:
        """Drive this process until it ends: its asyncio task's whole life."""
        try:
            await self.begin(restore)
            # The checkpoint the process came back from: this frame lives as long as the
            # process, and would keep a second copy of its state for that long.
            del restore
            while self._terminal is None:
                input = await self._next_input()
                self._stepping = True
                try:
                    await self._step(input)
                finally:
                    self._stepping = False
        except asyncio.CancelledError:
            if self._kill_reason is None:
                raise
        except Exception as exc:  # a runtime bug: fail this process loudly, never the loop
            log.exception("process_crashed", pid=self.pid, kind=self.machine.kind)
            if self._terminal is None:
                self._terminate(Lifecycle.FAILED, error=f"internal error: {exc!r}")
        finally:
            # Done driving: an ended process kept for lookups need not keep its finished task
            # (and asyncio's weak reference to it). Every reader checks for a live task first.
            self._task = None

    async def _run_restore(self) -> None:
        ctx = Context(self, self.env.clock.now())
        self._journal.begin()
        self._in_transition = True
        self.env.stepping = self
        try:
            self.machine.restore(self._state, ctx)
        except Exception as exc:
            self._journal.rollback()
            self._in_transition = False
            log.error("restore_failed", pid=self.pid, kind=self.machine.kind, error=repr(exc))
            self._terminate(Lifecycle.FAILED, error=f"restore raised {type(exc).__name__}: {exc}")
            return
        mutated = bool(self._journal.entries)
        self._journal.commit()
        self._in_transition = False
        # Only what restore re-issued stays pending (it may have replaced some with queries).
        reissued = {a.id for a in ctx.tracked or ()}
        unchanged = (
            not mutated
            and reissued == set(self._pending)
            and not (ctx.untracked or ctx.timer_ops or ctx.replies or ctx.postponed or ctx.end)
            and ctx.goto_phase in (None, self.phase)
        )
        if unchanged:
            # Re-issuing what the checkpoint already holds needs no new checkpoint (this keeps
            # a start with many processes from rewriting every one of them).
            for action in ctx.tracked or ():
                self.env.execute(self, action)
            self._refresh_lifecycle()
            self._conditions.wake_all(Condition.CHANGED)
            return
        for action_id in [i for i in self._pending if i not in reissued]:
            del self._pending[action_id]
        await self._commit(ctx, None)

    def take_input(self) -> Input | None:
        """The next input this process may handle now (None: nothing, paused, no nudge, draining)."""
        if self.env.draining:
            return None
        if self._pause_requested:
            self._land_pause()
        mailbox = self.mailbox
        if self._paused or (self.mode is DriveMode.STEP and not mailbox.nudges):
            return None
        input: Input | None = mailbox.internal() or mailbox.redelivered()  # both admitted already
        while input is None:
            item = mailbox.pop()
            if item is None:
                return None
            input = self._admit(item)
        if self.mode is DriveMode.STEP:
            mailbox.use_nudge()
        return input

    async def _next_input(self) -> Input:
        while True:
            item = self.take_input()
            if item is not None:
                return item
            await self.mailbox.arrival()

    def _admit(self, item: Input | TimerDue) -> Input | None:
        """Turn a taken item into the input to deliver, or None if it is stale."""
        if type(item) is Cast or type(item) is Call:  # the most frequent: checked first, cheaply
            return item
        if isinstance(item, TimerDue):
            return self.timers.take(item)
        if isinstance(item, ActionSucceeded | ActionFailed):
            # Consumed on delivery: a raising transition does not bring it back. A result for
            # an action that is no longer pending (killed, or dropped by restore) is stale.
            return item if self._pending.pop(item.action_id, None) is not None else None
        return item  # a cast, a call, a control event

    async def step(self, input: Input) -> None:
        """Handle one input: run the transition under the journal, then roll back or commit."""
        await self._step(input)

    async def _step(self, input: Input) -> None:
        env = self.env
        cancelled = EVENT_TIMEOUT in self.timers and not (type(input) is TimerFired and input.name == EVENT_TIMEOUT)
        if cancelled:
            self.timers.disarm(EVENT_TIMEOUT)  # any input cancels the event timeout, whatever it leads to
        ctx = Context(self, env.clock.now())
        journal = self._journal
        before = pack(self._state) if env.check_determinism else None
        journal.begin()
        self._in_transition = True
        env.stepping = self
        try:
            await self._handle(self._state, input, ctx)
            if before is not None:
                await self._check_determinism(before, input, ctx)
        except asyncio.CancelledError:
            journal.rollback()
            self._in_transition = False
            raise
        except Exception as exc:
            journal.rollback()
            self._in_transition = False
            self._transition_failed(input, exc, ctx)
            if cancelled:
                self.mark_dirty()  # nothing of the input is kept, but it did cancel the event timeout
            return
        journal.commit()
        self._in_transition = False
        await self._commit(ctx, input)

    async def _handle(self, state: TrackedDict, input: Input, ctx: Context) -> None:
        """The machine's part of one atomic transition: the enter call of the initial phase
        before a new process's first input, the transition, and the enter call of the phase it
        moves to (gen_statem's state enter calls, for a machine with ``state_enter``)."""
        machine = self.machine
        if machine.state_enter and type(input) is Control and input.event is ControlEvent.STARTED:
            self._enter(state, ctx, ctx.phase)
        await machine.transition(state, input, ctx)
        goto = ctx.goto_phase
        if machine.state_enter and goto is not None and goto != ctx.phase:
            self._enter(state, ctx, goto)

    def _enter(self, state: TrackedDict, ctx: Context, phase: str) -> None:
        left, ctx.entered_from, ctx.phase = ctx.phase, ctx.phase, phase
        try:
            self.machine.enter(state, ctx)
        finally:
            ctx.entered_from, ctx.phase = None, left

    async def _check_determinism(self, before: bytes, input: Input, first: Context) -> None:
        shadow_journal = Journal()
        shadow_state = adopt(unpack(before), shadow_journal)
        shadow = Context(self, first.now)
        shadow_journal.begin()
        try:
            await self._handle(shadow_state, input, shadow)
        except Exception as exc:
            raise NondeterminismError(
                f"re-run of {type(input).__name__} raised {exc!r}; the first run did not"
            ) from exc
        if pack(shadow_state) != pack(self._state):
            raise NondeterminismError(f"re-run of {type(input).__name__} produced a different state")
        if shadow.effects() != first.effects():
            raise NondeterminismError(f"re-run of {type(input).__name__} described different effects")

    def _transition_failed(self, input: Input, exc: Exception, ctx: Context) -> None:
        self._errors += 1
        self.version += 1
        error = TransitionError.from_exception(exc)
        if self._history is not None:
            self._record(input, ctx, None, str(error))
        log.error(
            "transition_failed",
            pid=self.pid,
            kind=self.machine.kind,
            lifecycle=str(self.lifecycle),
            input=type(input).__name__,
            error=str(error),
        )
        self.env.observe_transition_error(self)
        if type(input) is Call:
            self.mailbox.fail_call(input.ref, error)
        if self.machine.error_policy is ErrorPolicy.FAIL:
            self._terminate(Lifecycle.FAILED, error=str(error))
        else:
            self._refresh_lifecycle()
            self._conditions.wake_all(Condition.CHANGED)

    # ========================================================================================
    # Effects: the checkpoint first, then what the transition described
    # ========================================================================================

    async def _commit(self, ctx: Context, input: Input | None) -> None:
        self.version += 1
        if input is not None:
            self._transitions += 1
        moved_from = None
        if ctx.goto_phase is not None and ctx.goto_phase != self.phase:
            moved_from = self.phase
            self.phase = ctx.goto_phase
            self.timers.disarm(STATE_TIMEOUT)
            self.mailbox.redeliver_postponed()
        if ctx.timer_ops:
            timers = self.timers
            for name, deadline, payload in ctx.timer_ops:
                if deadline is None:
                    timers.disarm(name)
                else:
                    timers.arm(name, deadline, payload)
        if ctx.postponed and input is not None:
            self.mailbox.postpone(input)
        if ctx.next_events:
            self.mailbox.push_internal(ctx.next_events)  # before the checkpoint below, which keeps them
        tracked = ctx.tracked
        if tracked:
            for action in tracked:
                self._pending[action.id] = action
        if ctx.pause_reason is not None and ctx.end is None:
            # A self-pause is part of what this transition commits: the checkpoint below carries
            # it and its reason, so a restart brings the process back paused, saying why.
            self._paused = True
            self._pause_reason = ctx.pause_reason
            self._paused_itself = True
        if self._history is not None:
            self._record(input, ctx, moved_from)
        checkpointer = self.env.checkpointer
        if checkpointer is not None:
            leaves = tracked or ctx.untracked or ctx.replies
            if leaves and ctx.end is None and checkpointer.pipelined and not self.env.checkpoint_every_commit:
                # Write-ahead, pipelined: the effects wait for the checkpoint; the process goes on.
                # (checkpoint_every_commit means one durable write per transition, each waited for.)
                self._hold_until_durable(checkpointer, ctx)
                self._refresh_lifecycle()
                self._conditions.wake_all(Condition.CHANGED)
                write_ahead = self._write_ahead
                if write_ahead is not None:
                    await write_ahead.until_room()
                return
            if leaves or ctx.end is not None or self.env.checkpoint_every_commit:
                # Write-ahead: the state is durable before anything of it leaves the process
                # (actions, replies, the end), so the outside never sees a state a crash loses.
                if self._write_ahead:
                    await self._write_ahead.until_empty()  # effects leave in transition order
                await self._make_durable(ctx.end)
            else:
                # Nothing left the process: the next group commit takes its latest state.
                self.mark_dirty()
        if tracked and ctx.end is None:
            for action in tracked:
                self.env.execute(self, action)
        self._deliver(ctx.untracked, ctx.replies)
        if ctx.end is not None:
            how, value = ctx.end
            if how == "finished":
                self._terminate(Lifecycle.FINISHED, result=value, persisted=True)
            else:
                self._terminate(Lifecycle.FAILED, error=value, persisted=True)
            return
        self._refresh_lifecycle()
        self._conditions.wake_all(Condition.CHANGED)

    def _hold_until_durable(self, checkpointer: Checkpointer, ctx: Context) -> None:
        write_ahead = self._write_ahead
        if write_ahead is None:
            write_ahead = self._write_ahead = WriteAheadQueue(self._let_out, self._make_durable)
        durable = checkpointer.submit(self.checkpoint())
        write_ahead.hold(durable, ctx.tracked, ctx.untracked, ctx.replies)

    def _let_out(self, held: HeldEffects) -> None:
        """The checkpoint of ``held``'s transition is durable: its effects go on their way."""
        if self._terminal is not None or self._kill_reason is not None:
            return  # ended or detached meanwhile: the checkpoint keeps the actions for restore
        if held.tracked:
            pending = self._pending
            for action in held.tracked:
                if action.id in pending:  # not consumed or dropped since
                    self.env.execute(self, action)
        self._deliver(held.untracked, held.replies)

    def _deliver(self, untracked: Sequence[UntrackedAction] | None, replies: Sequence[tuple[int, Any]] | None) -> None:
        """Let a committed transition's untracked actions out and answer its calls."""
        if untracked:
            for action in untracked:
                self.env.run_untracked(action)
        if replies:
            mailbox = self.mailbox
            for ref, value in replies:
                mailbox.reply(ref, value)

    async def _make_durable(self, ending: tuple[str, Any] | None = None) -> None:
        """Checkpoint the committed state; on store errors retry, then pause with the reason.

        Nothing is lost meanwhile: the state stays committed in memory and its actions are held
        until the checkpoint lands; ``resume()`` retries after an operator fixed the store.
        """
        env = self.env
        checkpointer = env.checkpointer
        assert checkpointer is not None
        attempt = 0
        while True:
            try:
                await checkpointer.save(self.checkpoint(ending))
                return
            except StoreError as exc:
                attempt += 1
                log.error("checkpoint_failed", pid=self.pid, kind=self.machine.kind, attempt=attempt, error=str(exc))
                if attempt <= len(env.store_retry_delays):
                    await asyncio.sleep(env.store_retry_delays[attempt - 1])
                    continue
                self._hold(f"checkpoint failed: {exc}")
                while self._paused:
                    await self._conditions.wait(Condition.RESUMED)
                attempt = 0

    async def run_action(self, action: TrackedAction) -> None:
        """Execute one tracked action and queue its outcome as this process's next input."""
        env = self.env
        started = env.clock.now()
        result: Input
        executor = env.executors.get(action.type)
        kind = self.machine.kind
        slotted = getattr(executor, "uses_slot", True) and env.slots.limited(kind)
        try:
            if slotted:
                await env.slots.acquire(kind)
            try:
                value = await executor.execute(action)
            finally:
                if slotted:
                    env.slots.release(kind)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = ActionFailed(action.id, action.type, type(exc).__qualname__, str(exc))
        else:
            result = ActionSucceeded(action.id, action.type, value)
        finally:
            self._action_tasks.pop(action.id, None)
        env.observe_action(self, action, env.clock.now() - started, type(result) is ActionSucceeded)
        if self._terminal is None and self._kill_reason is None:
            self.mailbox.put(result)

    def running_action(self, action_id: str, task: asyncio.Task[None]) -> None:
        """Note the task executing ``action_id`` (a kill cancels it; a detach too)."""
        self._action_tasks[action_id] = task

    # ========================================================================================
    # Control from outside the process's task
    # ========================================================================================

    def check_accepting(self) -> None:
        """Raise the right :class:`ProcessTerminated` if the process takes no more input."""
        if self._terminal is Lifecycle.FINISHED:
            raise ProcessFinished(self.pid, "finished")
        if self._terminal is Lifecycle.FAILED:
            raise ProcessFailed(self.pid, self._error or "failed")
        if self._terminal is Lifecycle.KILLED or self._kill_reason is not None:
            raise ProcessKilled(self.pid, self._kill_reason or self._error or "killed")

    # --- input room, calls and nudges -------------------------------------------------------

    def has_room(self) -> bool:
        return self.mailbox.has_room()

    async def wait_room(self) -> None:
        while not self.mailbox.has_room():
            await self._conditions.wait(Condition.ROOM)
            self.check_accepting()

    def enqueue(self, input: Cast | Call) -> None:
        self.mailbox.put_user(input)

    def new_call(self) -> tuple[int, asyncio.Future[Any]]:
        return self.mailbox.new_call()

    def forget_call(self, ref: int) -> None:
        self.mailbox.forget_call(ref)

    def nudge_full(self) -> bool:
        return self.mailbox.nudge_full()

    async def wait_nudge_room(self) -> None:
        while self.mailbox.nudge_full():
            await self._conditions.wait(Condition.NUDGE_ROOM)
            self.check_accepting()

    def add_nudge(self) -> None:
        self.mailbox.add_nudge()

    # --- pause and resume -------------------------------------------------------------------

    async def pause(self) -> None:
        self.check_accepting()
        if self._paused:
            return
        self._pause_requested = True
        if not self._in_transition:
            self._land_pause()  # waiting between inputs is a step boundary: land at once
            return
        while not self._paused:
            await self._conditions.wait(Condition.PAUSE_LANDED)
            self.check_accepting()

    def _land_pause(self) -> None:
        self._pause_requested = False
        if not self._paused:
            self._paused = True
            self.version += 1
            self._note("paused")
            self.mark_dirty()
            self._conditions.wake_all(Condition.CHANGED)
        self._conditions.wake_all(Condition.PAUSE_LANDED)

    def _hold(self, reason: str) -> None:
        """Pause on the runtime's own account, saying why (resume() lifts it)."""
        self._paused = True
        self._pause_reason = reason
        self.version += 1
        self._note(f"paused by the runtime: {reason}")
        self._conditions.wake_all(Condition.CHANGED)

    def resume(self) -> None:
        self.check_accepting()
        self._pause_requested = False
        if self._paused:
            self._paused = False
            self._pause_reason = None
            if self._paused_itself:
                self._paused_itself = False
                self.mailbox.put(Control(ControlEvent.RESUMED))
            self.version += 1
            self._note("resumed")
            self.mark_dirty()
            self._conditions.wake_all(Condition.CHANGED)
            self._conditions.wake_all(Condition.RESUMED)
            self.mailbox.wake()

    async def tell_executors(self, hook: str) -> None:
        """Pass a pause or resume on to the executors of in-flight actions that implement
        ``hook`` (a shell command's group is stopped, a queued batch job held). Bounded by the
        kill grace; an executor's error is logged, the pause or resume stands."""
        calls = []
        for action_id in list(self._action_tasks):
            action = self._pending.get(action_id)
            method = getattr(self.env.executors.get(action.type), hook, None) if action is not None else None
            if method is not None:
                calls.append(asyncio.ensure_future(method(action)))
        if not calls:
            return
        done, late = await asyncio.wait(calls, timeout=self.env.kill_grace)
        for call in late:
            call.cancel()
        for call in done:
            if call.exception() is not None:
                log.error("executor_hook_failed", pid=self.pid, hook=hook, error=repr(call.exception()))
        if late:
            log.error("executor_hook_timed_out", pid=self.pid, hook=hook, count=len(late))

    # --- watching and waiting ---------------------------------------------------------------

    async def wait_changed(self, seen: int) -> None:
        while self.version == seen and self._terminal is None:
            await self._conditions.wait(Condition.CHANGED)

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._conditions.wait(Condition.CHANGED)

    async def wait_done(self) -> None:
        while self._terminal is None:
            await self._conditions.wait(Condition.DONE)

    def watcher_added(self, delta: int) -> None:
        self._watchers += delta

    def changed_future(self, seen: int) -> asyncio.Future[None]:
        """A future done once this process has changed past version ``seen`` (or has ended): for
        an observer that cannot await one task per process, such as a fan-out that serves many
        watchers from one ticker. Cancel it to stop waiting."""
        if self.version != seen or self._terminal is not None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._conditions.future(Condition.CHANGED)

    # --- history: recorded only while an observer asks ----------------------------------------

    def keep_history(self, keep: bool) -> None:
        """Record this process's transitions from now on (``True``), or let go (``False``): the
        history is dropped once every observer that asked has let go (see :mod:`.history`)."""
        history = self._history
        if keep:
            if history is None:
                history = self._history = History()
            history.keepers += 1
        elif history is not None:
            history.keepers -= 1
            if history.keepers <= 0:
                self._history = None

    def history(self, last: int | None = None) -> list[TransitionRecord]:
        """The transitions recorded since an observer asked (:meth:`keep_history`), oldest first
        (the ``last`` ones, if given)."""
        return self._history.records(self.machine.redacted, last) if self._history is not None else []

    def _note(self, what: str) -> None:
        """Record a change that is no transition (a pause, a resume, a kill) in the history."""
        history = self._history
        if history is not None:
            history.add(self.version, self.env.clock.now(), what, self.phase)

    def _record(self, input: Input | None, ctx: Context, moved_from: str | None, error: str | None = None) -> None:
        history = self._history
        if history is not None:
            history.add(self.version, ctx.now, input, self.phase, moved_from, ctx, error)

    # --- the end: kill, detach, terminate ---------------------------------------------------

    async def kill(self, reason: str) -> None:
        if self._terminal is not None:
            return
        if self._killing is None:
            self._kill_reason = reason
            self._killing = asyncio.ensure_future(self._do_kill())
        # Shielded: a caller that gives up waiting does not abort the kill half-way.
        await asyncio.shield(self._killing)

    async def _do_kill(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.env.kill_grace
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if not task.done():
                self.env.abandon(task, self)
            self._in_transition = False
        if not self._action_tasks:
            self._run_kill_actions()
        await self._cancel_actions(deadline)
        if self._terminal is None:
            self._terminate(Lifecycle.KILLED, error=self._kill_reason)
        await self.wait_persisted(max(0.0, deadline - loop.time()))

    def _run_kill_actions(self) -> None:
        try:
            leftovers = list(self.machine.on_kill(self._state))
        except Exception as exc:
            log.error("on_kill_failed", pid=self.pid, kind=self.machine.kind, error=repr(exc))
            return
        for action_type, payload in leftovers:
            try:
                self.env.run_untracked(UntrackedAction(action_type, payload, self.pid))
            except Exception as exc:  # an unknown action type: say so, the kill goes on
                log.error("on_kill_failed", pid=self.pid, kind=self.machine.kind, error=repr(exc))

    async def _cancel_actions(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        tasks = [t for t in self._action_tasks.values() if not t.done()]
        if not tasks:
            return
        waits: list[asyncio.Future[Any]] = []
        for action_id, running in list(self._action_tasks.items()):
            action = self._pending.get(action_id)
            if action is not None:
                executor = self.env.executors.get(action.type)
                waits.append(loop.create_task(executor.cancel(action)))
            running.cancel()
            waits.append(running)
        _, late = await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()))
        for task in late:
            # A hung executor: kill does not wait for it; the runtime keeps a reference so the
            # task is neither garbage-collected while pending nor able to deliver a result.
            self.env.abandon(task, self)

    async def wait_persisted(self, timeout: float) -> None:
        """Wait (bounded) until the terminal record is durable, so an ended process is never revived."""
        saving = self._final_save
        if saving is not None and not saving.done():
            await asyncio.wait({saving}, timeout=timeout)

    async def _save_final(self, checkpointer: Checkpointer) -> None:
        try:
            await checkpointer.save(self.checkpoint())
        except StoreError as exc:
            # The process ended but the store did not hear of it: after a restart it would be
            # revived. Say so loudly; the operator can kill it again then.
            log.error("terminal_checkpoint_failed", pid=self.pid, kind=self.machine.kind, error=str(exc))

    def detach(self) -> list[asyncio.Task[Any]]:
        """Stop driving this process without ending it (graceful shutdown); the tasks that
        were cancelled, for the caller to wait on (with every other process's, in one wait).

        The task stops at its current await (a suspended transition is rolled back: its input
        was never checkpointed), in-flight action tasks are cancelled locally without asking
        executors to cancel the external work, and the lifecycle is left as checkpointed, so
        the next start revives the process and its ``restore`` picks the work up again.
        """
        if self._terminal is not None or self._kill_reason is not None:
            return []
        self._kill_reason = "detached"  # makes the task's cancellation quiet; never reported
        if self._write_ahead is not None:
            self._write_ahead.drop()
        tasks = [t for t in (self._task, *self._action_tasks.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        self.env.forget(self)
        return tasks

    def _terminate(
        self, lifecycle: Lifecycle, *, result: Any = None, error: str | None = None, persisted: bool = False
    ) -> None:
        check_move(self._lifecycle_seen, lifecycle)
        self._terminal = lifecycle
        self._lifecycle_seen = lifecycle
        self._since = self.env.clock.now()
        self._result = result
        self._error = error
        self.version += 1
        if lifecycle is Lifecycle.KILLED:
            self._note(f"killed: {error}")
        self.timers.disarm_all()
        for task in self._action_tasks.values():
            task.cancel()
        try:
            self.check_accepting()
        except ProcessTerminated as exc:
            gone: ProcessTerminated = exc
        self.mailbox.close(gone)
        self._conditions.fail_all(Condition.PAUSE_LANDED, gone)
        if self._write_ahead is not None:
            self._write_ahead.drop()
        checkpointer = self.env.checkpointer
        if checkpointer is not None and not persisted:
            self._final_save = self.env.background(self._save_final(checkpointer))
        self.snapshot()  # materialise the terminal snapshot now: every watcher will see it
        self._conditions.wake_all(Condition.CHANGED)
        self._conditions.wake_all(Condition.DONE)
        self.env.observe_terminated(self)
