"""Control of a process from outside its task: mailbox room, calls, nudges, pause, resume,
kill, detach and the end of the process.

These run in the caller's task; they change flags and wake the process's task, which acts on
them only between transitions (step boundaries).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, cast

import structlog

from .._errors import (
    ProcessFailed,
    ProcessFinished,
    ProcessKilled,
    ProcessTerminated,
    StoreError,
)
from .actions import UntrackedAction
from .inputs import Call, Cast, Control, ControlEvent
from .lifecycle import Lifecycle, check_move
from .process_base import EMPTY_QUEUE, ProcessBase
from .waiters import Condition

if TYPE_CHECKING:
    from .process import Process
    from .runtime import Checkpointer

log = structlog.get_logger("statevisor.process")

_call_refs = itertools.count(1)


class ProcessControl(ProcessBase):
    """Operations on a process from outside its task (handles, the runtime, supervisors)."""

    __slots__ = ()

    # --- input room, calls and nudges -----------------------------------------------------

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
            await self._conditions.wait(Condition.ROOM)
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
            await self._conditions.wait(Condition.NUDGE_ROOM)
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
            await self._conditions.wait(Condition.PAUSE_LANDED)
            self.check_accepting()

    def _land_pause(self) -> None:
        self._pause_requested = False
        if not self._paused:
            self._paused = True
            self.version += 1
            self.mark_dirty()
            self._conditions.wake_all(Condition.CHANGED)
        self._conditions.wake_all(Condition.PAUSE_LANDED)

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
            self.mark_dirty()
            self._conditions.wake_all(Condition.CHANGED)
            self._conditions.wake_all(Condition.RESUMED)
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
            await self._conditions.wait(Condition.CHANGED)

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
            await self._conditions.wait(Condition.CHANGED)

    async def wait_done(self) -> None:
        while self._terminal is None:
            await self._conditions.wait(Condition.DONE)

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
        if self._held is not None:
            self._held.drop()
        tasks = [t for t in (self._task, *self._action_tasks.values()) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        self.runtime.forget(self)
        return tasks

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
        self._conditions.fail_all(Condition.ROOM, gone)
        self._conditions.fail_all(Condition.NUDGE_ROOM, gone)
        self._conditions.fail_all(Condition.PAUSE_LANDED, gone)
        # An ended process may be kept for lookups (Host.ended_kept) long after: its queues
        # give their memory back (an empty deque keeps a block of ~0.4 KB). Nothing can queue
        # on it any more (inputs are refused first), and the shared queue holds nothing.
        self._mailbox = self._redeliver = EMPTY_QUEUE
        self._postponed.clear()
        if self._held is not None:
            self._held.drop()
        checkpointer = self.runtime.checkpointer
        if checkpointer is not None and not persisted:
            self._final_save = self.runtime.background(self._save_final(checkpointer))
        self.snapshot()  # materialise the terminal snapshot now: every watcher will see it
        self._conditions.wake_all(Condition.CHANGED)
        self._conditions.wake_all(Condition.DONE)
        self.runtime.observe_terminated(cast("Process", self))  # the only concrete subclass

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
