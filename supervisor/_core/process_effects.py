"""What leaves a process once a transition commits: its checkpoint first, then its effects.

The write-ahead rule is kept here. Tracked actions, untracked actions and call replies leave
only once the checkpoint of the transition that described them is durable: either waited for
(``_make_durable``), or pipelined behind it (``_hold_until_durable``; ``_release`` lets them
out in transition order). Running a tracked action and turning its outcome into the process's
next input is here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import structlog

from .._errors import StoreError
from .actions import TrackedAction, UntrackedAction
from .inputs import ActionFailed, ActionSucceeded, Input
from .machine import Context
from .process_control import ProcessControl
from .waiters import Condition
from .write_ahead import Held, ReleaseQueue

if TYPE_CHECKING:
    from .process import Process
    from .runtime import Checkpointer

log = structlog.get_logger("statevisor.process")


class ProcessEffects(ProcessControl):
    """A process's checkpoints and the effects held behind them (see the module's text)."""

    __slots__ = ()

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
                    await self._conditions.wait(Condition.RESUMED)
                attempt = 0

    # --- actions --------------------------------------------------------------------------

    def _dispatch(self, action: TrackedAction) -> None:
        self.runtime.dispatch(cast("Process", self), action)  # the only concrete subclass

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
        runtime.observe_action(
            cast("Process", self), action, runtime.clock.now() - started, type(result) is ActionSucceeded
        )
        if self._terminal is None and self._kill_reason is None:
            self._mailbox.append(result)
            self._poke()

    def _dispatch_untracked(self, action: UntrackedAction) -> None:
        self.runtime.run_untracked(action)
