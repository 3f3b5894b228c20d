"""The pieces a :class:`Simulation` plugs into the real runtime: executors, calls, store, runtime."""

from __future__ import annotations

import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._core.actions import TrackedAction, UntrackedAction
from .._core.codec import Checkpoint
from .._core.process import Process
from .._core.runtime import Runtime
from .._core.snapshot import ProcessRecord
from .._errors import ConfigurationError, SimulationError

if TYPE_CHECKING:
    from .simulation import Simulation

Respond = Callable[[TrackedAction | UntrackedAction, random.Random], Any]


def _echo(action: TrackedAction | UntrackedAction, rng: random.Random) -> Any:
    return action.payload


@dataclass(frozen=True)
class SimExecutor:
    """A simulated backend for one action type.

    ``respond(action, rng)`` performs the effect and returns the result (or raises: the action
    fails). It runs once per action id when ``idempotent`` (the executor contract: a re-issued
    id gets the first outcome back), once per dispatch otherwise. The result arrives after a
    latency drawn from ``latency``; ``failure_rate`` of actions fail without an effect and
    ``hang_rate`` never answer (the machine's own timeouts must cope).
    """

    respond: Respond = _echo
    latency: tuple[float, float] = (0.001, 0.01)
    failure_rate: float = 0.0
    hang_rate: float = 0.0
    idempotent: bool = True

    def __post_init__(self) -> None:
        low, high = self.latency
        if not 0 <= low <= high:
            raise ConfigurationError(f"latency must be (low, high) with 0 <= low <= high, got {self.latency}")
        for name in ("failure_rate", "hang_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigurationError(f"{name} must be within [0, 1], got {getattr(self, name)}")


class SimCall:
    """The outcome of ``Simulation.call``: filled in when the process replies (or fails)."""

    __slots__ = ("_done", "error", "message", "value")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = False

    # The duck-typed future the process resolves.
    def done(self) -> bool:
        return self._done

    def set_result(self, value: Any) -> None:
        self.value, self._done = value, True

    def set_exception(self, error: BaseException) -> None:
        self.error, self._done = error, True

    def __repr__(self) -> str:
        if not self._done:
            return f"<SimCall {self.message!r} pending>"
        return f"<SimCall {self.message!r} -> {self.error or self.value!r}>"


class _Inert:
    """Stands in the executor registry so ``ctx.track`` accepts the simulated action types."""

    idempotent = True

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        raise SimulationError("simulated actions are executed by the simulation, not by this executor")

    async def cancel(self, action: TrackedAction) -> None:
        return None


class Wake:
    """Set as a simulated process's wake-up: poking it makes the process runnable."""

    __slots__ = ("pid", "sim")

    def __init__(self, sim: Simulation, pid: str) -> None:
        self.sim = sim
        self.pid = pid

    def done(self) -> bool:
        return False

    def set_result(self, value: Any) -> None:
        self.sim.runnable(self.pid)


def drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must not suspend (simulated transitions never wait on real I/O)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise SimulationError("a transition awaited real I/O; in a simulation every await must complete at once")


class SimStore:
    """Durable checkpoints of a simulation: what survives a simulated crash."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.durable: dict[str, bytes] = {}
        self.dirty: dict[str, Process] = {}

    async def save(self, checkpoint: Checkpoint) -> None:
        self.durable[checkpoint.pid] = checkpoint.blob

    def mark_dirty(self, process: Process) -> None:
        self.dirty[process.pid] = process
        self.sim.flush_soon()

    def flush(self) -> None:
        for process in self.dirty.values():
            if process.dirty and not process.done:
                self.durable[process.pid] = process.checkpoint().blob
        self.dirty.clear()


class SimRuntime(Runtime):
    """The real runtime, with launching, dispatching and background work routed to the simulation."""

    def __init__(self, sim: Simulation, action_types: list[str], check_determinism: bool) -> None:
        super().__init__(
            executors={t: _Inert() for t in action_types},
            clock=sim.clock,
            check_determinism=check_determinism,
            ids=iter(()),
        )
        self.sim = sim
        self.checkpointer = sim.store
        self.store_retry_delays = ()

    def launch(self, process: Process, restore: ProcessRecord | None) -> None:
        process._wakeup = Wake(self.sim, process.pid)  # type: ignore[assignment]
        drive(process.begin(restore))
        self.sim.runnable(process.pid)

    def dispatch(self, process: Process, action: TrackedAction) -> None:
        self.sim.execute(process, action)

    def run_untracked(self, action: UntrackedAction) -> None:
        self.sim.execute(None, action)

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        drive(coroutine)
