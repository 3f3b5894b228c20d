"""Deterministic simulation of processes: virtual time, simulated backends, crashes, invariants.

The simulation drives the *real* process code (the transition under the journal, the commit
rules, timers, postpone, write-ahead checkpoints) synchronously, on a virtual clock, from one
seeded random source. Same seed, same workload: same trace, same trace hash, on every machine.

What it injects, all drawn from the seed: latencies and failures of actions, answers that never
come, delivery delays (so messages from different senders arrive reordered), and crashes: every
in-memory thing is dropped, each process is reloaded from its last durable checkpoint and its
``restore`` runs, exactly as after a real restart. Effect-free commits reach the store only at
the next (simulated) group commit, so a crash can lose them, as it can for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._core.actions import TrackedAction, UntrackedAction
from .._core.checkpointer import Checkpointable
from .._core.clock import TimerHandle
from .._core.codec import Checkpoint, decode_record
from .._core.handle import Handle
from .._core.inputs import ActionFailed, ActionSucceeded, Call, Cast, Input
from .._core.lifecycle import Lifecycle
from .._core.machine import Machine
from .._core.process import Process
from .._core.runtime import Runtime
from .._core.snapshot import ProcessRecord
from .._core.state import pack
from .._errors import ConfigurationError, ProcessKilled
from .errors import InvariantViolation, SimulationError

Invariant = Callable[["Simulation"], Any]


# --- the simulated backends, calls, store and runtime ----------------------------------------

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


def run_at_once(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must not suspend (simulated transitions never wait on real I/O)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise SimulationError("a transition awaited real I/O; in a simulation every await must complete at once")


class SimStore:
    """Durable checkpoints of a simulation: what survives a simulated crash.

    It does not pipeline: a process waits for each effectful checkpoint, and an effect-free
    one is written at the next simulated group commit (``flush``), so a crash can lose it.
    """

    pipelined = False

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.durable: dict[str, bytes] = {}
        self.dirty: dict[str, Checkpointable] = {}

    async def save(self, checkpoint: Checkpoint) -> None:
        self.durable[checkpoint.pid] = checkpoint.blob

    def submit(self, checkpoint: Checkpoint) -> asyncio.Future[None]:
        raise SimulationError("the simulated store does not pipeline checkpoints (pipelined is False)")

    def mark_dirty(self, process: Checkpointable) -> None:
        self.dirty[process.pid] = process
        self.sim.flush_soon()

    def flush(self) -> None:
        for process in self.dirty.values():
            if process.dirty and not (isinstance(process, Process) and process.done):
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

    def drive(self, process: Process, restore: ProcessRecord | None) -> None:
        process.drive_with(Wake(self.sim, process.pid))
        run_at_once(process.begin(restore))
        self.sim.runnable(process.pid)
        return None

    def execute(self, process: Process, action: TrackedAction) -> None:
        self.sim.execute(process, action)

    def run_untracked(self, action: UntrackedAction) -> None:
        self.sim.execute(None, action)

    def background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        run_at_once(coroutine)
        return None


# --- the simulation ----------------------------------------------------------------------

_STEP, _CALLBACK, _DELIVER, _COMPLETE, _FLUSH = range(5)
_HANG = object()


class _SimTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """Virtual time: timers become events of the simulation."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    def now(self) -> float:
        return self._sim.now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _SimTimer()
        self._sim.schedule(when, _CALLBACK, (timer, callback))
        return timer


def _describe(input: Input) -> list[Any]:
    return [type(input).__name__, *(getattr(input, name) for name in input.__slots__)]


class Simulation:
    """Many processes on virtual time, with injected failures and crashes, invariants checked
    after every transition.

    ``invariants`` are callables ``(simulation) -> None`` that raise ``AssertionError`` (a plain
    ``assert`` does); ``crash_every`` is the mean number of transitions between crashes (None:
    no crashes); ``max_delivery_delay`` spreads message arrivals so that messages reorder.
    """

    def __init__(
        self,
        machines: Iterable[Machine[Any] | type[Machine[Any]]],
        *,
        seed: int = 0,
        executors: Mapping[str, SimExecutor] | None = None,
        invariants: Sequence[Invariant] = (),
        crash_every: float | None = None,
        max_delivery_delay: float = 0.001,
        flush_delay: float = 0.0005,
        check_determinism: bool = False,
        replay_hint: str | None = None,
    ) -> None:
        self.machines: dict[str, Machine[Any]] = {}
        for machine in machines:
            instance = machine() if isinstance(machine, type) else machine
            self.machines[instance.kind] = instance
        if crash_every is not None and crash_every < 1:
            raise ConfigurationError(f"crash_every must be >= 1 transition, got {crash_every}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.executors = dict(executors or {})
        self.invariants = list(invariants)
        self.crash_every = crash_every
        self.max_delivery_delay = max_delivery_delay
        self.flush_delay = flush_delay
        self.check_determinism = check_determinism
        self.replay_hint = replay_hint
        self.now = 0.0
        self.clock = SimClock(self)
        self.store = SimStore(self)
        self.epoch = 0
        self.transitions = 0
        self.crashes = 0
        self.applied: dict[str, int] = {}  # action id -> how many times its effect was performed
        self.repeated: list[str] = []  # action ids whose effect was performed more than once
        self._outcomes: dict[str, Any] = {}
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = itertools.count()
        self._scheduled: set[str] = set()
        self._flush_pending = False
        self._pids = itertools.count()
        self._calls = itertools.count(1)
        self._hash = hashlib.blake2b(digest_size=16)
        self.runtime = self._new_runtime()
        self.processes: dict[str, Process] = {}
        self.ended: dict[str, Process] = {}
        self._states: dict[str, Any] = {}

    def _new_runtime(self) -> SimRuntime:
        return SimRuntime(self, list(self.executors), self.check_determinism)

    # --- the workload's side -------------------------------------------------------------

    def spawn(self, machine: Machine[Any] | type[Machine[Any]] | str, state: Mapping[str, Any] | None = None) -> str:
        """Spawn a process (checkpointed before it starts, as on a real host); returns its pid."""
        if isinstance(machine, str):
            machine = self.machines[machine]
        instance = machine() if isinstance(machine, type) else machine
        self.machines.setdefault(instance.kind, instance)
        pid = f"{instance.kind}-{next(self._pids)}"
        handle = self.runtime.spawn(instance, state, pid=pid, start=False)
        process = handle._process
        process.meta.pop("held", None)  # started just below, once its first checkpoint is durable
        self.processes[pid] = process
        self._states[pid] = process._state
        self.store.durable[pid] = process.checkpoint().blob
        process.start()
        return pid

    def cast(self, pid: str, message: Any) -> None:
        """Send a message; it arrives after a random delivery delay (it is lost if a crash comes first)."""
        self._deliver(pid, Cast(message))

    def call(self, pid: str, message: Any) -> SimCall:
        """Send a message expecting a reply; the returned SimCall fills in when it comes."""
        result = SimCall(message)
        ref = next(self._calls)
        self._deliver(pid, Call(message, ref), result)
        return result

    def _deliver(self, pid: str, input: Cast | Call, call: SimCall | None = None) -> None:
        if pid not in self.processes and pid not in self.ended:
            raise SimulationError(f"no process {pid!r} in this simulation")
        delay = self.rng.uniform(0.0, self.max_delivery_delay)
        self.schedule(self.now + delay, _DELIVER, (pid, input, call))

    def state(self, pid: str) -> Any:
        """The committed state of a process (live or ended). Read it; do not change it."""
        process = self.processes.get(pid) or self.ended.get(pid)
        if process is None:
            raise SimulationError(f"no process {pid!r} in this simulation")
        return process._state

    def handle(self, pid: str) -> Handle:
        return Handle(self.processes.get(pid) or self.ended[pid])

    def states(self) -> Mapping[str, Any]:
        """Every process's committed state, ended ones included, by pid (kept up to date, not
        rebuilt: invariants call this after every transition)."""
        return self._states

    def lifecycle(self, pid: str) -> Lifecycle:
        return (self.processes.get(pid) or self.ended[pid]).lifecycle

    @property
    def trace_hash(self) -> str:
        """A stable hash of every transition so far (input, resulting version, phase, lifecycle)."""
        return self._hash.hexdigest()

    # --- the engine ----------------------------------------------------------------------

    def schedule(self, when: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, self.epoch, payload))

    def runnable(self, pid: str) -> None:
        if pid not in self._scheduled:
            self._scheduled.add(pid)
            self.schedule(self.now, _STEP, pid)

    def flush_soon(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.schedule(self.now + self.flush_delay, _FLUSH, None)

    def idle(self) -> bool:
        return not self._heap

    def step(self) -> bool:
        """Handle the next event; False when nothing is left to happen."""
        heap = self._heap
        if not heap:
            return False
        when, _, kind, epoch, payload = heapq.heappop(heap)
        if epoch != self.epoch:
            return True
        if when > self.now:
            self.now = when
        if kind == _STEP:
            self._scheduled.discard(payload)
            process = self.processes.get(payload)
            if process is not None:
                self._run_one(process)
        elif kind == _CALLBACK:
            timer, callback = payload
            if not timer.cancelled:
                callback()
        elif kind == _DELIVER:
            pid, input, call = payload
            process = self.processes.get(pid)
            if process is None:
                if call is not None:
                    call.set_exception(SimulationError(f"process {pid} has ended"))
            else:
                if call is not None:
                    process.mailbox.expect_reply(input.ref, call)
                process.enqueue(input)
        elif kind == _COMPLETE:
            pid, result = payload
            process = self.processes.get(pid)
            if process is not None:
                process.mailbox.put(result)  # which makes it runnable
        else:
            self._flush_pending = False
            self.store.flush()
        return True

    def run(self, steps: int) -> int:
        """Handle up to ``steps`` events; returns how many were handled."""
        done = 0
        while done < steps and self.step():
            done += 1
        return done

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        """Handle events until nothing is left to happen (raises if it never settles)."""
        for _ in range(max_steps):
            if not self.step():
                return
        raise SimulationError(f"still busy after {max_steps} events (a timer loop that never ends?)")

    def _run_one(self, process: Process) -> None:
        input = process.take_input()
        if input is None:
            return
        run_at_once(process.step(input))
        self.transitions += 1
        self._hash.update(
            pack(
                [
                    self.transitions,
                    process.pid,
                    _describe(input),
                    process.version,
                    process.phase,
                    str(process.lifecycle),
                ]
            )
        )
        if process.done:
            self.processes.pop(process.pid, None)
            self.ended[process.pid] = process
        elif process.mailbox:
            self.runnable(process.pid)
        for invariant in self.invariants:
            try:
                invariant(self)
            except AssertionError as exc:
                name = getattr(invariant, "__name__", repr(invariant))
                replay = self.replay_hint or f"Simulation(..., seed={self.seed}) and the same workload"
                raise InvariantViolation(
                    invariant=name,
                    message=str(exc) or "assertion failed",
                    seed=self.seed,
                    step=self.transitions,
                    pid=process.pid,
                    input=repr(input),
                    replay=replay,
                ) from exc
        if self.crash_every is not None and self.rng.random() * self.crash_every < 1.0:
            self.crash()

    def execute(self, process: Process | None, action: TrackedAction | UntrackedAction) -> None:
        """Perform an action on its simulated backend; a tracked one answers after a latency."""
        executor = self.executors[action.type]
        key = action.id if isinstance(action, TrackedAction) else None
        outcome: Any = self._outcomes.get(key) if (key is not None and executor.idempotent) else None
        if outcome is None:
            rng = self.rng
            if rng.random() < executor.hang_rate:
                outcome = _HANG
            elif rng.random() < executor.failure_rate:
                outcome = ("failed", "SimulatedFailure", "injected failure")
            else:
                try:
                    outcome = ("ok", executor.respond(action, rng))
                except Exception as exc:
                    outcome = ("failed", type(exc).__qualname__, str(exc))
                if key is not None:
                    count = self.applied[key] = self.applied.get(key, 0) + 1
                    if count == 2:
                        self.repeated.append(key)
            if key is not None:
                self._outcomes[key] = outcome
        if process is None or outcome is _HANG or not isinstance(action, TrackedAction):
            return
        if outcome[0] == "ok":
            result: Input = ActionSucceeded(action.id, action.type, outcome[1])
        else:
            result = ActionFailed(action.id, action.type, outcome[1], outcome[2])
        low, high = executor.latency
        self.schedule(self.now + self.rng.uniform(low, high), _COMPLETE, (process.pid, result))

    def crash(self) -> None:
        """Lose everything in memory; reload every process from its last durable checkpoint."""
        self.crashes += 1
        self.epoch += 1
        lost = ProcessKilled("*", "the simulated host crashed")
        for _, _, kind, _, payload in self._heap:
            if kind == _DELIVER and payload[2] is not None:
                payload[2].set_exception(lost)  # a call still in transit is lost with the host
        self._heap = []
        self._scheduled.clear()
        self._flush_pending = False
        self.store.dirty.clear()
        for process in self.processes.values():
            for call in process.mailbox.calls():
                if not call.done():
                    call.set_exception(lost)
        self.runtime = self._new_runtime()
        self.processes = {}
        self.ended = {}
        self._states = {}
        for pid, blob in self.store.durable.items():
            record = decode_record(blob)
            machine = self.machines[record.kind]
            if record.lifecycle.terminal:
                ended = self.runtime.spawn(machine, record.state, pid=pid, start=False)._process
                self.runtime.forget(ended)
                ended.ended_before(record)
                self.ended[pid] = ended
                self._states[pid] = ended._state
            else:
                self.processes[pid] = self.runtime.revive(machine, record)._process
                self._states[pid] = self.processes[pid]._state

    def __repr__(self) -> str:
        return (
            f"<Simulation seed={self.seed} t={self.now:.4f}: {len(self.processes)} live, {len(self.ended)} ended, "
            f"{self.transitions} transitions, {self.crashes} crashes>"
        )
