"""The runtime: spawns processes and owns what they share (clock, executors, settings)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from .._errors import ConfigurationError, ProcessNotFound
from .actions import ExecuteFunction, Executor, ExecutorRegistry, TrackedAction, UntrackedAction
from .checkpointer import Checkpointer
from .clock import Clock, SystemClock
from .handle import Handle
from .identifiers import check_identifier
from .lifecycle import DriveMode, Lifecycle
from .machine import Machine
from .process import Process
from .slots import SlotPool
from .snapshot import ProcessRecord
from .state import Journal, new_state

log = structlog.get_logger("statevisor.runtime")


class RuntimeObserver(Protocol):
    """Receives runtime events (metrics hook). Methods must be quick and must not raise."""

    def transition_error(self, process: Process) -> None: ...

    def action_done(self, process: Process, action: TrackedAction, seconds: float, ok: bool) -> None: ...

    def terminated(self, process: Process) -> None: ...


@dataclass(frozen=True, slots=True)
class RuntimeStatistics:
    live: int
    spawned: int
    finished: int
    failed: int
    killed: int
    transitions: int
    transition_errors: int
    abandoned_tasks: int


class Runtime:
    """Spawns and tracks processes.

    ``kill_grace`` bounds how long a kill waits for a transition and for executors to cancel
    in-flight actions; ``check_determinism`` re-runs every transition on a copy of the state
    and fails it when the outcome differs (a debug/test mode: it doubles the cost and adds one
    state copy per transition).
    """

    def __init__(
        self,
        *,
        executors: Mapping[str, Executor | ExecuteFunction] | None = None,
        clock: Clock | None = None,
        kill_grace: float = 5.0,
        mailbox_size: int = 1024,
        nudge_buffer: int = 64,
        check_determinism: bool = False,
        ids: Iterator[str] | None = None,
        slots: Mapping[str, int] | None = None,
    ) -> None:
        if kill_grace <= 0:
            raise ConfigurationError(f"kill_grace must be > 0 seconds, got {kill_grace!r}")
        if mailbox_size < 1 or nudge_buffer < 1:
            raise ConfigurationError(f"mailbox_size and nudge_buffer must be >= 1, got {mailbox_size}, {nudge_buffer}")
        self.executors = ExecutorRegistry(executors)
        self.clock: Clock = clock or SystemClock()
        self.kill_grace = kill_grace
        self.mailbox_size = mailbox_size
        self.nudge_buffer = nudge_buffer
        self.check_determinism = check_determinism
        self.checkpointer: Checkpointer | None = None
        self.store_retry_delays: tuple[float, ...] = (0.05, 0.2, 1.0)
        # False: a commit waits for its checkpoint only when something leaves the process
        # (actions, replies, the end); effect-free commits fold into the next group commit.
        # True: every commit waits for its own checkpoint row (an audit trail of every state).
        self.checkpoint_every_commit = False
        # Graceful shutdown: processes take no new input (without that being part of their state).
        self.draining = False
        # The process that last began a transition (or a restore): the one running now while its
        # _in_transition is set. Read by the loop watchdog to name what blocks the loop.
        self.stepping: Process | None = None
        self.observers: list[RuntimeObserver] = []
        self.slots = SlotPool(slots)
        self._ids = ids
        self._live: dict[str, Process] = {}
        self._names: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._spawned = 0
        self._ended = {Lifecycle.FINISHED: 0, Lifecycle.FAILED: 0, Lifecycle.KILLED: 0}
        self._ended_transitions = 0
        self._errors = 0

    def register_executor(self, action_type: str, executor: Executor | ExecuteFunction) -> None:
        self.executors.register(action_type, executor)

    # --- spawning ----------------------------------------------------------------------

    def _new_pid(self) -> str:
        return next(self._ids) if self._ids is not None else secrets.token_hex(6)

    def spawn(
        self,
        machine: Machine[Any] | type[Machine[Any]],
        state: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        mode: DriveMode = DriveMode.AUTO,
        pid: str | None = None,
        meta: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> Handle:
        """Start a new process of ``machine`` with ``state`` (default: ``machine.initial_state()``).

        ``start=False`` spawns it held: it exists (it can be found, paused, killed) and takes no
        input until ``await handle.start()``.

        A state msgpack cannot carry exactly raises :class:`StateTypeError` here, not later; so
        does an id or name with control characters, or an empty, ``.`` or ``..`` part between
        ``/`` (:class:`ConfigurationError`; ids and names become file paths).
        """
        if isinstance(machine, type):
            machine = machine()
        if not isinstance(machine, Machine):
            raise ConfigurationError(f"spawn() needs a Machine, got {machine!r}")
        pid = self._new_pid() if pid is None else check_identifier(pid, "id")
        if name is not None:
            check_identifier(name, "name")
        journal = Journal()
        tree = new_state(machine.initial_state() if state is None else state, journal)
        process = self._create(machine, pid, name, tree, journal, machine.initial_phase, 0, mode)
        process.meta.update(meta or {})
        if start:
            process.start()
        else:
            process.meta["held"] = True  # kept in its checkpoints until it starts
        return Handle(process)

    def start(self, handle: Handle) -> None:
        """Start a process spawned with ``start=False`` at once (``await handle.start()`` also
        checkpoints the start first, where there is a store)."""
        handle._process.start()

    def revive(self, machine: Machine[Any], record: ProcessRecord, *, mode: DriveMode = DriveMode.AUTO) -> Handle:
        """Bring back a process from its checkpoint: timers re-armed, then ``machine.restore``."""
        if record.lifecycle.terminal:
            raise ConfigurationError(f"process {record.pid} is {record.lifecycle}; only live processes are revived")
        journal = Journal()
        tree = new_state(record.state, journal)
        process = self._create(machine, record.pid, record.name, tree, journal, record.phase, record.version, mode)
        process.meta.update(record.meta)
        if record.meta.get("held"):
            process.held_as(record)  # spawned held and never started: still held
        else:
            process.start(restore=record)
        return Handle(process)

    def _create(
        self,
        machine: Machine[Any],
        pid: str,
        name: str | None,
        tree: Any,
        journal: Journal,
        phase: str,
        version: int,
        mode: DriveMode,
    ) -> Process:
        if pid in self._live:
            raise ConfigurationError(f"a live process already has id {pid!r}")
        name = name or pid
        if name in self._names:
            raise ConfigurationError(f"a live process is already named {name!r} (id {self._names[name]})")
        process = Process(
            self,
            machine,
            pid,
            name,
            tree,
            journal,
            phase=phase,
            version=version,
            mode=mode if type(mode) is DriveMode else DriveMode(mode),
            mailbox_size=self.mailbox_size,
            nudge_buffer=self.nudge_buffer,
        )
        self._live[pid] = process
        self._names[name] = pid
        self._spawned += 1
        return process

    # --- lookup ------------------------------------------------------------------------

    def get(self, pid: str) -> Handle:
        try:
            return Handle(self._live[pid])
        except KeyError:
            raise ProcessNotFound(f"no live process with id {pid!r}") from None

    def find(self, name: str) -> Handle:
        try:
            return Handle(self._live[self._names[name]])
        except KeyError:
            raise ProcessNotFound(f"no live process named {name!r}") from None

    def handles(self) -> list[Handle]:
        return [Handle(p) for p in self._live.values()]

    def processes(self, *, newest_first: bool = False) -> Iterator[Process]:
        """The live processes in the order they were spawned (or revived), for reading on the
        loop with no handle made for each."""
        return reversed(self._live.values()) if newest_first else iter(self._live.values())

    def __len__(self) -> int:
        return len(self._live)

    # --- shared services for processes (the simulator overrides these) ---------------

    def drive(self, process: Process, restore: ProcessRecord | None) -> asyncio.Task[None] | None:
        """Start driving ``process``: one asyncio task per process."""
        return asyncio.get_running_loop().create_task(process.run(restore), name=f"statevisor:{process.pid}")

    def execute(self, process: Process, action: TrackedAction) -> None:
        """Hand a tracked action to its executor (after its checkpoint is durable)."""
        process.running_action(action.id, asyncio.get_running_loop().create_task(process.run_action(action)))

    def background(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
        """Run housekeeping (e.g. a terminal checkpoint) without blocking the caller."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def run_untracked(self, action: UntrackedAction) -> None:
        task = asyncio.get_running_loop().create_task(self._untracked(action))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _untracked(self, action: UntrackedAction) -> None:
        try:
            await self.executors.get(action.type).execute(action)
        except Exception as exc:
            log.warning("untracked_action_failed", pid=action.pid, action_type=action.type, error=repr(exc))

    def abandon(self, task: asyncio.Future[Any], process: Process) -> None:
        log.warning("task_abandoned", pid=process.pid, kind=process.kind, task=repr(task))
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    def observe_transition_error(self, process: Process) -> None:
        self._errors += 1
        for observer in self.observers:
            observer.transition_error(process)

    def observe_action(self, process: Process, action: TrackedAction, seconds: float, ok: bool) -> None:
        for observer in self.observers:
            observer.action_done(process, action, seconds, ok)

    def forget(self, process: Process) -> None:
        """Drop a process from the live registry (it ended, or it was detached)."""
        if self._live.get(process.pid) is process:
            del self._live[process.pid]
            self._names.pop(process.name, None)

    def observe_terminated(self, process: Process) -> None:
        self.forget(process)
        self._ended[process.lifecycle] += 1
        self._ended_transitions += process.transitions
        for observer in self.observers:
            observer.terminated(process)

    # --- shutting down ----------------------------------------------------------------

    async def kill_all(self, reason: str = "runtime closing") -> None:
        """Kill every live process (concurrently, each bounded by the kill grace)."""
        live = list(self._live.values())
        if live:
            await asyncio.gather(*(p.kill(reason) for p in live))
        for task in list(self._background):
            task.cancel()

    def statistics(self, *, live_transitions: int | None = None) -> RuntimeStatistics:
        """The runtime's counts. ``live_transitions``: the live processes' transitions, when the
        caller has counted them in a pass of its own (a second pass is 100,000 processes more)."""
        if live_transitions is None:
            live_transitions = sum(p.transitions for p in self._live.values())
        return RuntimeStatistics(
            live=len(self._live),
            spawned=self._spawned,
            finished=self._ended[Lifecycle.FINISHED],
            failed=self._ended[Lifecycle.FAILED],
            killed=self._ended[Lifecycle.KILLED],
            transitions=self._ended_transitions + live_transitions,
            transition_errors=self._errors,
            abandoned_tasks=len(self._abandoned),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Runtime {s.live} live, {s.finished} finished, {s.failed} failed, {s.killed} killed, "
            f"{len(self.executors._executors)} executors>"
        )
