"""One process: a machine, its state, its mailbox and the asyncio task that drives it.

Decisions (what an input does to the state) are made by the machine in the transition; this
module does the bookkeeping around it: it takes inputs from the mailbox in order, runs the
transition under the journal, rolls back or commits, then performs the described effects.
Control operations (pause, resume, nudge, kill) change flags and wake the task; the task acts
on them only between transitions (step boundaries).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from ._actions import TrackedAction, UntrackedAction
from ._codec import Checkpoint, decode_record, encode_fields
from ._exceptions import (
    NondeterminismError,
    ProcessFailed,
    ProcessFinished,
    ProcessKilled,
    ProcessTerminated,
    StoreError,
    TransitionError,
)
from ._inputs import STATE_TIMEOUT, ActionFailed, ActionSucceeded, Call, Cast, Control, ControlEvent, Input, TimerFired
from ._lifecycle import DriveMode, ErrorPolicy, Lifecycle, check_move
from ._machine import Context, Machine
from ._release import Held, ReleaseQueue
from ._snapshot import ProcessRecord, ProcessStatistics, Snapshot
from ._state import Journal, TrackedDict, adopt, pack, unpack
from ._waiters import WaitQueue

if TYPE_CHECKING:
    from ._clock import TimerHandle
    from ._runtime import Checkpointer, Runtime

log = structlog.get_logger("statevisor.process")

_timer_tokens = itertools.count()
_call_refs = itertools.count(1)


class _Timer:
    __slots__ = ("deadline", "handle", "payload", "token")

    def __init__(self, deadline: float, payload: Any, token: int, handle: TimerHandle) -> None:
        self.deadline = deadline
        self.payload = payload
        self.token = token
        self.handle = handle


class _TimerDue:
    """A timer's expiry as queued; stale ones (re-armed or cancelled since) are dropped."""

    __slots__ = ("name", "token")

    def __init__(self, name: str, token: int) -> None:
        self.name = name
        self.token = token


class Process:
    """The runtime side of one process. Users hold a :class:`~supervisor.Handle` to it."""

    __slots__ = (
        "__weakref__",
        "_action_tasks",
        "_calls",
        "_capacity",
        "_changed",
        "_dirty",
        "_done",
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
        "_nudge_room",
        "_nudges",
        "_pause_landed",
        "_pause_reason",
        "_pause_requested",
        "_paused",
        "_paused_itself",
        "_pending",
        "_postponed",
        "_redeliver",
        "_restored",
        "_result",
        "_resumed",
        "_room",
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
        self._mailbox: deque[Input | _TimerDue] = deque()
        self._capacity = mailbox_size
        self._user_queued = 0
        self._postponed: list[Input] = []
        self._redeliver: deque[Input] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._room = WaitQueue()
        self._nudges = 0
        self._nudge_capacity = nudge_buffer
        self._nudge_room = WaitQueue()
        self._paused = False
        self._pause_reason: str | None = None
        self._paused_itself = False
        self._resumed = WaitQueue()
        self._pause_requested = False
        self._pause_landed = WaitQueue()
        self._pending: dict[str, TrackedAction] = {}
        self._action_tasks: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, _Timer] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._changed = WaitQueue()
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
        self._done = WaitQueue()
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
                view = unpack(pack(self.machine.view(self._state)))
            finally:
                self._journal.swap_to_after()
        else:
            view = unpack(pack(self.machine.view(self._state)))
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
        pending = [[a.id, a.type, a.payload] for a in self._pending.values()] if self._pending else []
        timers = [[n, t.deadline, t.payload] for n, t in self._timers.items()] if self._timers else []
        self._dirty = False
        if self._in_transition and self._journal.entries:
            self._journal.swap_to_before()  # a transition is suspended: save what was committed
            try:
                return encode_fields(
                    self.pid, self.name, self.machine.kind, self.version, self.phase, self._state,
                    pending, timers, lifecycle, result, error, self._paused, self.meta,
                )  # fmt: skip
            finally:
                self._journal.swap_to_after()
        return encode_fields(
            self.pid, self.name, self.machine.kind, self.version, self.phase, self._state,
            pending, timers, lifecycle, result, error, self._paused, self.meta,
        )  # fmt: skip

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

    # --- starting -------------------------------------------------------------------------

    def start(self, *, restore: ProcessRecord | None = None) -> None:
        if restore is not None and restore.version == 0:
            restore = None  # checkpointed at spawn but never started: start it now, as new
        if restore is None:
            self._mailbox.append(Control(ControlEvent.STARTED))
        else:
            self._paused = restore.paused
            for action in restore.pending:
                self._pending[action.id] = action
        self._task = self.runtime.launch(self, restore)

    def _mark_started(self) -> None:
        self._started = True
        self._refresh_lifecycle()

    async def begin(self, restore: ProcessRecord | None) -> None:
        """Mark the process started; after a crash, re-arm its timers and run its restore."""
        self._mark_started()
        if restore is not None:
            for timer in restore.timers:
                self._arm(timer.name, timer.deadline, timer.payload)
            await self._run_restore()
            self._restored = True
            self._changed.wake_all()

    async def _main(self, restore: ProcessRecord | None) -> None:
        try:
            await self.begin(restore)
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

    async def _run_restore(self) -> None:
        ctx = Context(self, self.runtime.clock.now())
        self._journal.begin()
        self._in_transition = True
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
                self._dispatch(action)
            self._refresh_lifecycle()
            self._changed.wake_all()
            return
        for action_id in [i for i in self._pending if i not in reissued]:
            del self._pending[action_id]
        await self._commit(ctx, None)

    # --- the loop -------------------------------------------------------------------------

    def _poke(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def take_input(self) -> Input | None:
        """The next input this process may handle now (None: nothing, paused, no nudge, draining)."""
        if self.runtime.draining:
            return None
        if self._pause_requested:
            self._land_pause()
        if self._paused or (self.mode is DriveMode.STEP and not self._nudges):
            return None
        item: Input | None = self._redeliver.popleft() if self._redeliver else None
        mailbox = self._mailbox
        while item is None and mailbox:
            item = self._admit(mailbox.popleft())
        if item is not None and self.mode is DriveMode.STEP:
            self._nudges -= 1
            self._nudge_room.wake_one()
        return item

    async def _next_input(self) -> Input:
        while True:
            item = self.take_input()
            if item is not None:
                return item
            wakeup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._wakeup = wakeup
            try:
                await wakeup
            finally:
                self._wakeup = None

    def _admit(self, item: Input | _TimerDue) -> Input | None:
        """Turn a queued item into the input to deliver, or None if it is stale."""
        kind = type(item)
        if kind is Cast or kind is Call:
            self._user_queued -= 1
            self._room.wake_one()
            return item  # type: ignore[return-value]
        if isinstance(item, _TimerDue):
            return self._take_timer(item)
        if isinstance(item, ActionSucceeded | ActionFailed):
            # Consumed on delivery: a raising transition does not bring it back. A result for
            # an action that is no longer pending (killed, or dropped by restore) is stale.
            return item if self._pending.pop(item.action_id, None) is not None else None
        return item

    async def step(self, input: Input) -> None:
        """Handle one input: run the transition under the journal, then roll back or commit."""
        await self._step(input)

    async def _step(self, input: Input) -> None:
        runtime = self.runtime
        ctx = Context(self, runtime.clock.now())
        journal = self._journal
        before = pack(self._state) if runtime.check_determinism else None
        journal.begin()
        self._in_transition = True
        try:
            await self.machine.transition(self._state, input, ctx)
            if before is not None:
                await self._check_determinism(before, input, ctx)
        except asyncio.CancelledError:
            journal.rollback()
            self._in_transition = False
            raise
        except Exception as exc:
            journal.rollback()
            self._in_transition = False
            self._transition_failed(input, exc)
            return
        journal.commit()
        self._in_transition = False
        await self._commit(ctx, input)

    async def _check_determinism(self, before: bytes, input: Input, first: Context) -> None:
        shadow_journal = Journal()
        shadow_state = adopt(unpack(before), shadow_journal)
        shadow = Context(self, first.now)
        shadow_journal.begin()
        try:
            await self.machine.transition(shadow_state, input, shadow)
        except Exception as exc:
            raise NondeterminismError(
                f"re-run of {type(input).__name__} raised {exc!r}; the first run did not"
            ) from exc
        if pack(shadow_state) != pack(self._state):
            raise NondeterminismError(f"re-run of {type(input).__name__} produced a different state")
        if shadow.effects() != first.effects():
            raise NondeterminismError(f"re-run of {type(input).__name__} described different effects")

    def _transition_failed(self, input: Input, exc: Exception) -> None:
        self._errors += 1
        self.version += 1
        error = TransitionError.from_exception(exc)
        log.error(
            "transition_failed",
            pid=self.pid,
            kind=self.machine.kind,
            lifecycle=str(self.lifecycle),
            input=type(input).__name__,
            error=str(error),
        )
        self.runtime.observe_transition_error(self)
        if type(input) is Call:
            future = self._calls.pop(input.ref, None)
            if future is not None and not future.done():
                future.set_exception(error)
        if self.machine.error_policy is ErrorPolicy.FAIL:
            self._terminate(Lifecycle.FAILED, error=str(error))
        else:
            self._refresh_lifecycle()
            self._changed.wake_all()

    async def _commit(self, ctx: Context, input: Input | None) -> None:
        self.version += 1
        if input is not None:
            self._transitions += 1
        if ctx.goto_phase is not None and ctx.goto_phase != self.phase:
            self.phase = ctx.goto_phase
            self._disarm(STATE_TIMEOUT)
            if self._postponed:
                self._redeliver.extend(self._postponed)
                self._postponed.clear()
        if ctx.timer_ops:
            for name, deadline, payload in ctx.timer_ops:
                if deadline is None:
                    self._disarm(name)
                else:
                    self._arm(name, deadline, payload)
        if ctx.postponed and input is not None:
            self._postponed.append(input)
        tracked = ctx.tracked
        if tracked:
            for action in tracked:
                self._pending[action.id] = action
        checkpointer = self.runtime.checkpointer
        if checkpointer is not None:
            if ctx.end is None and (tracked or ctx.untracked or ctx.replies) and self._can_pipeline(checkpointer):
                # Write-ahead, pipelined: the effects wait for the checkpoint; the process goes on.
                self._hold_until_durable(checkpointer, ctx)
                if ctx.pause_reason is not None:
                    self._paused_itself = True
                    self._hold(ctx.pause_reason)
                self._refresh_lifecycle()
                self._changed.wake_all()
                await self._held_room()
                return
            if tracked or ctx.untracked or ctx.replies or ctx.end is not None or self.runtime.checkpoint_every_commit:
                # Write-ahead: the state is durable before anything of it leaves the process
                # (actions, replies, the end), so the outside never sees a state a crash loses.
                if self._held:
                    await self._held.until_empty()  # effects leave in transition order
                await self._make_durable(ctx.end)
            else:
                # Nothing left the process: the next group commit takes its latest state.
                self._dirty = True
                checkpointer.mark_dirty(self)
        if tracked and ctx.end is None:
            for action in tracked:
                self._dispatch(action)
        self._deliver(ctx.untracked, ctx.replies)
        if ctx.end is not None:
            how, value = ctx.end
            if how == "finished":
                self._terminate(Lifecycle.FINISHED, result=value, persisted=True)
            else:
                self._terminate(Lifecycle.FAILED, error=value, persisted=True)
            return
        if ctx.pause_reason is not None:
            self._paused_itself = True
            self._hold(ctx.pause_reason)
        self._refresh_lifecycle()
        self._changed.wake_all()

    def _can_pipeline(self, checkpointer: Checkpointer) -> bool:
        # Only stores that hand out a future per checkpoint can; checkpoint_every_commit means
        # one durable write per transition, each waited for, so it never pipelines.
        return not self.runtime.checkpoint_every_commit and hasattr(checkpointer, "submit")

    def _hold_until_durable(self, checkpointer: Checkpointer, ctx: Context) -> None:
        held = self._held
        if held is None:
            held = self._held = ReleaseQueue(self._release, self._make_durable)
        durable = checkpointer.submit(self.checkpoint())  # type: ignore[attr-defined]
        held.hold(durable, ctx.tracked, ctx.untracked, ctx.replies)

    async def _held_room(self) -> None:
        held = self._held
        if held is not None:
            await held.until_room()

    def _release(self, held: Held) -> None:
        """The checkpoint of ``held``'s transition is durable: let its effects out."""
        if self._terminal is not None or self._kill_reason is not None:
            return  # ended or detached meanwhile: the checkpoint keeps the actions for restore
        if held.tracked:
            pending = self._pending
            for action in held.tracked:
                if action.id in pending:  # not consumed or dropped since
                    self._dispatch(action)
        self._deliver(held.untracked, held.replies)

    def _deliver(self, untracked: Sequence[UntrackedAction] | None, replies: Sequence[tuple[int, Any]] | None) -> None:
        """Let a committed transition's untracked actions out and answer its calls."""
        if untracked:
            for action in untracked:
                self._dispatch_untracked(action)
        if replies:
            calls = self._calls
            for ref, value in replies:
                future = calls.pop(ref, None)
                if future is not None and not future.done():
                    future.set_result(value)

    async def _make_durable(self, ending: tuple[str, Any] | None = None) -> None:
        """Checkpoint the committed state; on store errors retry, then pause with the reason.

        Nothing is lost meanwhile: the state stays committed in memory and its actions are held
        until the checkpoint lands; ``resume()`` retries after an operator fixed the store.
        """
        checkpointer = self.runtime.checkpointer
        assert checkpointer is not None
        attempt = 0
        while True:
            try:
                await checkpointer.save(self.checkpoint(ending))
                return
            except StoreError as exc:
                attempt += 1
                log.error("checkpoint_failed", pid=self.pid, kind=self.machine.kind, attempt=attempt, error=str(exc))
                if attempt <= len(self.runtime.store_retry_delays):
                    await asyncio.sleep(self.runtime.store_retry_delays[attempt - 1])
                    continue
                self._hold(f"checkpoint failed: {exc}")
                while self._paused:
                    await self._resumed.wait()
                attempt = 0

    def _hold(self, reason: str) -> None:
        """Pause on the runtime's own account, saying why (resume() lifts it)."""
        self._paused = True
        self._pause_reason = reason
        self.version += 1
        self._changed.wake_all()

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
        self._timers[name] = _Timer(deadline, payload, token, handle)

    def _disarm(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.handle.cancel()

    def _timer_due(self, name: str, token: int) -> None:
        if self._terminal is None:
            self._mailbox.append(_TimerDue(name, token))
            self._poke()

    def _take_timer(self, due: _TimerDue) -> TimerFired | None:
        timer = self._timers.get(due.name)
        if timer is None or timer.token != due.token:
            return None
        del self._timers[due.name]
        return TimerFired(due.name, timer.payload)

    # --- actions --------------------------------------------------------------------------

    def _dispatch(self, action: TrackedAction) -> None:
        self.runtime.dispatch(self, action)

    async def _run_action(self, action: TrackedAction) -> None:
        runtime = self.runtime
        started = runtime.clock.now()
        result: Input
        executor = runtime.executors.get(action.type)
        slotted = getattr(executor, "uses_slot", True) and runtime.slots.limited(self.machine.kind)
        try:
            if slotted:
                await runtime.slots.acquire(self.machine.kind)
            try:
                value = await executor.execute(action)
            finally:
                if slotted:
                    runtime.slots.release(self.machine.kind)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = ActionFailed(action.id, action.type, type(exc).__qualname__, str(exc))
        else:
            result = ActionSucceeded(action.id, action.type, value)
        finally:
            self._action_tasks.pop(action.id, None)
        runtime.observe_action(self, action, runtime.clock.now() - started, type(result) is ActionSucceeded)
        if self._terminal is None and self._kill_reason is None:
            self._mailbox.append(result)
            self._poke()

    def _dispatch_untracked(self, action: UntrackedAction) -> None:
        self.runtime.run_untracked(action)

    async def _cancel_actions(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        tasks = [t for t in self._action_tasks.values() if not t.done()]
        if not tasks:
            return
        waits: list[asyncio.Future[Any]] = []
        for action_id, running in list(self._action_tasks.items()):
            action = self._pending.get(action_id)
            if action is not None:
                executor = self.runtime.executors.get(action.type)
                waits.append(loop.create_task(executor.cancel(action)))
            running.cancel()
            waits.append(running)
        _, late = await asyncio.wait(waits, timeout=max(0.0, deadline - loop.time()))
        for task in late:
            # A hung executor: kill does not wait for it; the runtime keeps a reference so the
            # task is neither garbage-collected while pending nor able to deliver a result.
            self.runtime.abandon(task, self)

    # --- control --------------------------------------------------------------------------

    def check_accepting(self) -> None:
        """Raise the right :class:`ProcessTerminated` if the process takes no more input."""
        if self._terminal is Lifecycle.FINISHED:
            raise ProcessFinished(self.pid, "finished")
        if self._terminal is Lifecycle.FAILED:
            raise ProcessFailed(self.pid, self._error or "failed")
        if self._terminal is Lifecycle.KILLED or self._kill_reason is not None:
            raise ProcessKilled(self.pid, self._kill_reason or self._error or "killed")

    def has_room(self) -> bool:
        return self._user_queued < self._capacity

    async def wait_room(self) -> None:
        while self._user_queued >= self._capacity:
            await self._room.wait()
            self.check_accepting()

    def enqueue(self, input: Cast | Call) -> None:
        self._user_queued += 1
        self._mailbox.append(input)
        self._poke()

    def new_call(self) -> tuple[int, asyncio.Future[Any]]:
        ref = next(_call_refs)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[ref] = future
        return ref, future

    def forget_call(self, ref: int) -> None:
        self._calls.pop(ref, None)

    def nudge_full(self) -> bool:
        return self._nudges >= self._nudge_capacity

    async def wait_nudge_room(self) -> None:
        while self._nudges >= self._nudge_capacity:
            await self._nudge_room.wait()
            self.check_accepting()

    def add_nudge(self) -> None:
        self._nudges += 1
        self._poke()

    async def pause(self) -> None:
        self.check_accepting()
        if self._paused:
            return
        self._pause_requested = True
        if not self._in_transition:
            self._land_pause()  # waiting between inputs is a step boundary: land at once
            return
        while not self._paused:
            await self._pause_landed.wait()
            self.check_accepting()

    def _land_pause(self) -> None:
        self._pause_requested = False
        if not self._paused:
            self._paused = True
            self.version += 1
            self._changed.wake_all()
        self._pause_landed.wake_all()

    def resume(self) -> None:
        self.check_accepting()
        self._pause_requested = False
        if self._paused:
            self._paused = False
            self._pause_reason = None
            if self._paused_itself:
                self._paused_itself = False
                self._mailbox.append(Control(ControlEvent.RESUMED))
            self.version += 1
            self._changed.wake_all()
            self._resumed.wake_all()
            self._poke()

    def state_for_logs(self) -> Any:
        """The committed state, read-only use: where the machine's log files are."""
        return self._state

    async def tell_executors(self, hook: str) -> None:
        """Pass a pause or resume on to the executors of in-flight actions that implement
        ``hook`` (a shell command's group is stopped, a queued batch job held). Bounded by the
        kill grace; an executor's error is logged, the pause or resume stands."""
        calls = []
        for action_id in list(self._action_tasks):
            action = self._pending.get(action_id)
            method = getattr(self.runtime.executors.get(action.type), hook, None) if action is not None else None
            if method is not None:
                calls.append(asyncio.ensure_future(method(action)))
        if not calls:
            return
        done, late = await asyncio.wait(calls, timeout=self.runtime.kill_grace)
        for call in late:
            call.cancel()
        for call in done:
            if call.exception() is not None:
                log.error("executor_hook_failed", pid=self.pid, hook=hook, error=repr(call.exception()))
        if late:
            log.error("executor_hook_timed_out", pid=self.pid, hook=hook, count=len(late))

    async def wait_changed(self, seen: int) -> None:
        while self.version == seen and self._terminal is None:
            await self._changed.wait()

    @property
    def ready(self) -> bool:
        """Started and through its first transition (or its restore), or ended."""
        return (
            self._terminal is not None
            or (self._started and self._transitions + self._errors > 0)
            or (self._started and self._restored)
        )

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._changed.wait()

    async def wait_done(self) -> None:
        while self._terminal is None:
            await self._done.wait()

    def watcher_added(self, delta: int) -> None:
        self._watchers += delta

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
        deadline = loop.time() + self.runtime.kill_grace
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if not task.done():
                self.runtime.abandon(task, self)
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
                self.runtime.run_untracked(UntrackedAction(action_type, payload, self.pid))
            except Exception as exc:  # an unknown action type: say so, the kill goes on
                log.error("on_kill_failed", pid=self.pid, kind=self.machine.kind, error=repr(exc))

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

    async def detach(self) -> None:
        """Stop driving this process without ending it (graceful shutdown).

        The task stops at its current await (a suspended transition is rolled back: its input
        was never checkpointed), in-flight action tasks are cancelled locally without asking
        executors to cancel the external work, and the lifecycle is left as checkpointed, so
        the next start revives the process and its ``restore`` picks the work up again.
        """
        if self._terminal is not None or self._kill_reason is not None:
            return
        self._kill_reason = "detached"  # makes the task's cancellation quiet; never reported
        if self._held is not None:
            self._held.drop()
        tasks = [t for t in (self._task, *self._action_tasks.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.runtime.kill_grace)
            for task in late:
                self.runtime.abandon(task, self)
        self.runtime.forget(self)

    def _terminate(
        self, lifecycle: Lifecycle, *, result: Any = None, error: str | None = None, persisted: bool = False
    ) -> None:
        check_move(self._lifecycle_seen, lifecycle)
        self._terminal = lifecycle
        self._lifecycle_seen = lifecycle
        self._since = self.runtime.clock.now()
        self._result = result
        self._error = error
        self.version += 1
        for name in list(self._timers):
            self._disarm(name)
        for task in self._action_tasks.values():
            task.cancel()
        try:
            self.check_accepting()
        except ProcessTerminated as exc:
            gone: ProcessTerminated = exc
        for future in self._calls.values():
            if not future.done():
                future.set_exception(gone)
        self._calls.clear()
        self._room.fail_all(gone)
        self._nudge_room.fail_all(gone)
        self._pause_landed.fail_all(gone)
        self._mailbox.clear()
        self._redeliver.clear()
        self._postponed.clear()
        if self._held is not None:
            self._held.drop()
        checkpointer = self.runtime.checkpointer
        if checkpointer is not None and not persisted:
            self._final_save = self.runtime.background(self._save_final(checkpointer))
        self.snapshot()  # materialise the terminal snapshot now: every watcher will see it
        self._changed.wake_all()
        self._done.wake_all()
        self.runtime.observe_terminated(self)
