"""One process: a machine, its state, its mailbox and the asyncio task that drives it.

Decisions (what an input does to the state) are made by the machine in the transition; this
module does the bookkeeping around it: it takes inputs from the mailbox in order, runs the
transition under the journal, rolls back or commits, and hands what the transition described
to ``_process_effects``, which makes the state durable and then lets the effects out. Control
operations (pause, resume, nudge, kill: ``_process_control``) change flags and wake the task;
the task acts on them only between transitions (step boundaries). The status, snapshots,
checkpoints and timers all layers read are in ``_process_base``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

import structlog

from .._errors import (
    NondeterminismError,
    TransitionError,
)
from .inputs import STATE_TIMEOUT, ActionFailed, ActionSucceeded, Call, Cast, Control, ControlEvent, Input
from .lifecycle import DriveMode, ErrorPolicy, Lifecycle
from .machine import Context
from .process_base import TimerDue
from .process_effects import ProcessEffects
from .snapshot import ProcessRecord
from .state import Journal, adopt, pack, unpack
from .waiters import Condition

if TYPE_CHECKING:
    pass

log = structlog.get_logger("statevisor.process")


class Process(ProcessEffects):
    """The runtime side of one process. Users hold a :class:`~supervisor.Handle` to it."""

    __slots__ = ()

    # --- starting -------------------------------------------------------------------------

    def start(self, *, restore: ProcessRecord | None = None) -> None:
        if restore is not None and restore.version == 0:
            restore = None  # checkpointed at spawn but never started: start it now, as new
        if restore is None:
            self._mailbox.append(Control(ControlEvent.STARTED))
        else:
            self._paused = restore.paused
            self._pause_reason = restore.pause_reason
            self._paused_itself = restore.pause_reason is not None
            for action in restore.pending:
                self._pending[action.id] = action
            if restore.since is not None:
                # The lifecycle goes on from where the checkpoint left it: a command that has
                # run for an hour does not seem to have started at the daemon's restart.
                self._since = restore.since
                self._lifecycle_seen = restore.lifecycle
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
            self._conditions.wake_all(Condition.CHANGED)

    async def _main(self, restore: ProcessRecord | None) -> None:
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
        ctx = Context(self, self.runtime.clock.now())
        self._journal.begin()
        self._in_transition = True
        self.runtime.stepping = self
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
            self._conditions.wake_all(Condition.CHANGED)
            return
        for action_id in [i for i in self._pending if i not in reissued]:
            del self._pending[action_id]
        await self._commit(ctx, None)

    # --- the loop -------------------------------------------------------------------------

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
            self._conditions.wake_one(Condition.NUDGE_ROOM)
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

    def _admit(self, item: Input | TimerDue) -> Input | None:
        """Turn a queued item into the input to deliver, or None if it is stale."""
        kind = type(item)
        if kind is Cast or kind is Call:
            self._user_queued -= 1
            self._conditions.wake_one(Condition.ROOM)
            return item  # type: ignore[return-value]
        if isinstance(item, TimerDue):
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
        runtime.stepping = self
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
            self._conditions.wake_all(Condition.CHANGED)

    async def _commit(self, ctx: Context, input: Input | None) -> None:
        self.version += 1
        if input is not None:
            self._transitions += 1
        if ctx.goto_phase is not None and ctx.goto_phase != self.phase:
            self.phase = ctx.goto_phase
            self._disarm(STATE_TIMEOUT)
            if self._postponed:
                if self._redeliver:
                    self._redeliver.extend(self._postponed)
                else:  # the shared empty queue, or an emptied one: a queue of its own
                    self._redeliver = deque(self._postponed)
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
        if ctx.pause_reason is not None and ctx.end is None:
            # A self-pause is part of what this transition commits: the checkpoint below carries
            # it and its reason, so a restart brings the process back paused, saying why.
            self._paused = True
            self._pause_reason = ctx.pause_reason
            self._paused_itself = True
        checkpointer = self.runtime.checkpointer
        if checkpointer is not None:
            if ctx.end is None and (tracked or ctx.untracked or ctx.replies) and self._can_pipeline(checkpointer):
                # Write-ahead, pipelined: the effects wait for the checkpoint; the process goes on.
                self._hold_until_durable(checkpointer, ctx)
                self._refresh_lifecycle()
                self._conditions.wake_all(Condition.CHANGED)
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
                self.mark_dirty()
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
        self._refresh_lifecycle()
        self._conditions.wake_all(Condition.CHANGED)
