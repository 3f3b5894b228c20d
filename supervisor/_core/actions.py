"""Actions (effects a transition describes) and the executors that perform them.

The executor contract, also in the manual (the model page):

* ``execute(action)`` performs a tracked action and returns its result (any msgpack value) or
  raises. ``action.id`` is the idempotency key: after a crash the same action may be handed
  to the executor again under the same id. An executor that declares ``idempotent = True``
  promises that executing an id a second time performs no second effect (it looks the id up,
  or the backend deduplicates by it) and returns the first outcome.
* ``cancel(action)`` asks the backend to stop an in-flight action (kill). It should return
  promptly; the runtime bounds the wait in any case and never lets a hung executor block kill.
* Optional: ``pause(action)`` / ``resume(action)``, called when the process is paused or
  resumed while the action is in flight (stop a command's process group, hold a queued job).
  ``uses_slot = False`` exempts an executor from the per-kind slot limits. ``close()`` is
  awaited once at host shutdown (release connections, stop background tasks).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._errors import ConfigurationError, UnknownActionType


@dataclass(frozen=True, slots=True)
class TrackedAction:
    """An effect whose result comes back to the process as an input.

    ``id`` is stable: derived from the process id, the version and the action's position, or
    given by the transition. It is the idempotency key.
    """

    id: str
    type: str
    payload: Any
    pid: str


@dataclass(frozen=True, slots=True)
class UntrackedAction:
    """A fire-and-forget effect: executed once, its outcome is only logged."""

    type: str
    payload: Any
    pid: str


@runtime_checkable
class Executor(Protocol):
    """Performs the actions of one or more action types."""

    idempotent: bool

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any: ...

    async def cancel(self, action: TrackedAction) -> None: ...


ExecuteFunction = Callable[[TrackedAction | UntrackedAction], Awaitable[Any]]


class FunctionExecutor:
    """An executor made of one async function (cancel does nothing beyond task cancellation)."""

    def __init__(self, function: ExecuteFunction, *, idempotent: bool = False) -> None:
        self._function = function
        self.idempotent = idempotent

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        return await self._function(action)

    async def cancel(self, action: TrackedAction) -> None:
        return None

    def __repr__(self) -> str:
        name = getattr(self._function, "__qualname__", repr(self._function))
        return f"<FunctionExecutor {name} idempotent={self.idempotent}>"


class ExecutorRegistry:
    """Action type -> executor."""

    def __init__(self, executors: Mapping[str, Executor | ExecuteFunction] | None = None) -> None:
        self._executors: dict[str, Executor] = {}
        for action_type, executor in (executors or {}).items():
            self.register(action_type, executor)

    def register(self, action_type: str, executor: Executor | ExecuteFunction) -> None:
        if not isinstance(action_type, str) or not action_type:
            raise ConfigurationError(f"action type must be a non-empty str, got {action_type!r}")
        if not isinstance(executor, Executor):
            if not inspect.iscoroutinefunction(executor):
                raise ConfigurationError(
                    f"executor for {action_type!r} must be an Executor or an async function, got {executor!r}"
                )
            executor = FunctionExecutor(executor)
        self._executors[action_type] = executor

    def get(self, action_type: str) -> Executor:
        try:
            return self._executors[action_type]
        except KeyError:
            known = ", ".join(sorted(self._executors)) or "none"
            raise UnknownActionType(
                f"no executor registered for action type {action_type!r} (registered: {known})"
            ) from None

    def unique(self) -> list[Executor]:
        """Each registered executor once (one executor often serves several action types)."""
        return list({id(e): e for e in self._executors.values()}.values())

    async def close(self, timeout: float) -> None:
        """Close every executor that has a ``close()`` (once each, bounded by ``timeout``)."""

        closing = []
        for executor in self.unique():
            close = getattr(executor, "close", None)
            if close is not None:
                closing.append(asyncio.ensure_future(close()))
        if closing:
            _, late = await asyncio.wait(closing, timeout=timeout)
            for task in late:
                task.cancel()

    def __contains__(self, action_type: object) -> bool:
        return action_type in self._executors

    def __repr__(self) -> str:
        return f"<ExecutorRegistry {len(self._executors)} types: {', '.join(sorted(self._executors))}>"
