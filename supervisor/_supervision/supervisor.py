"""Supervisors: a tree of children (processes or other supervisors) restarted by policy.

A supervisor is declared (:class:`SupervisorSpec`, its :class:`ChildSpec` children: plain,
frozen declarations, checked when made, so a bad tree fails where it is written) and then run
(:class:`Supervisor`). The decisions come from :mod:`.policy` (plain functions); this module
watches children, applies the decisions and does the waiting. Restart delays run on the
runtime clock, so a :class:`ManualClock` makes backoff tests take no real time. What a
supervisor needs of the node it runs in is the :class:`Spawner` protocol.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog

from .._core.clock import Clock, TimerHandle
from .._core.handle import Handle
from .._core.identifiers import check_identifier, name_problem
from .._core.lifecycle import DriveMode, Lifecycle
from .._core.machine import Machine
from .._core.snapshot import Snapshot
from .._errors import ConfigurationError, ProcessNotFound, StatevisorError
from .policy import Backoff, Budget, Restart, RestartWindow, Strategy, affected, should_restart, start_order

log = structlog.get_logger("statevisor.supervisor")


@dataclass(frozen=True)
class ChildSpec:
    """A declared child: a process of ``machine`` (with ``state``), or a child ``supervisor``.

    ``backoff``: this child's delays between restarts (default: its supervisor's).
    ``budget``: this child's own restart budget; past it the child is *given up* (left down,
    logged, counted in ``statistics().given_up``; ``start_child`` brings it back) while its
    siblings go on, as supervisord does for a program past ``startretries``. The supervisor's
    budget counts the child's restarts as well and escalates as usual.
    """

    name: str
    machine: Machine[Any] | type[Machine[Any]] | None = None
    state: Mapping[str, Any] | None = None
    restart: Restart = Restart.PERMANENT
    depends_on: tuple[str, ...] = ()
    mode: DriveMode = DriveMode.AUTO
    supervisor: SupervisorSpec | None = None
    backoff: Backoff | None = None
    budget: Budget | None = None

    def __post_init__(self) -> None:
        _check_part(self.name, "child")
        if (self.machine is None) == (self.supervisor is None):
            raise ConfigurationError(f"child {self.name!r} needs exactly one of machine= or supervisor=")
        if self.machine is not None and self.state is not None:
            # Checked here, once: Node.spawn checks again at every (re)start, and a restart
            # that raised there would leave the child down with nobody told.
            self.machine.check_settings(self.state)


@dataclass(frozen=True)
class SupervisorSpec:
    name: str
    children: Sequence[ChildSpec] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    budget: Budget = field(default_factory=Budget)
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        _check_part(self.name, "supervisor")


def _check_part(name: str, what: str) -> None:
    """A child's or supervisor's name is one part of a path (``root/web``): refused when it is
    declared, not when the supervisor first starts the child."""
    check_identifier(name, "name")
    problem = name_problem(name)
    if problem is not None:
        raise ConfigurationError(f"{what} name {name!r} {problem}")


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    children: int
    alive: int
    restarts: int
    pending_restarts: int
    given_up: int = 0


@dataclass(frozen=True, slots=True)
class ChildStatus:
    """One child of a supervisor as an operator reads it (the web console's tree).

    ``pid`` is its process's (None for a child supervisor, or a child not started);
    ``restarts`` counts its restarts since its supervisor started; ``budget_used`` is how many of
    them fall within its own budget's period (its supervisor's when it has none of its own).
    """

    name: str
    restart: Restart
    alive: bool
    pid: str | None
    kind: str | None
    restarts: int
    given_up: bool
    restart_pending: bool
    budget: Budget | None
    budget_used: int
    depends_on: tuple[str, ...] = ()


class SupervisorState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"  # the restart budget was exceeded (or a bug); the parent decides what next


class Spawner(Protocol):
    """What a supervisor needs of the node it runs in (:class:`~supervisor.Node`)."""

    @property
    def clock(self) -> Clock: ...

    async def spawn(
        self,
        machine: Machine[Any] | type[Machine[Any]],
        state: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        mode: DriveMode = DriveMode.AUTO,
        meta: Mapping[str, Any] | None = None,
    ) -> Handle:
        """Spawn a process, checkpointed before it starts."""
        ...

    def adopt(self, supervisor: str, child: str) -> Handle | None:
        """The process that was ``child`` of ``supervisor`` before a restart, revived, if any."""
        ...

    def register(self, machine: Machine[Any] | type[Machine[Any]]) -> Machine[Any]:
        """Make a process type known (a child added at run time)."""
        ...

    def restarted(self) -> None:
        """Count one restart (the node's count outlives any one supervisor)."""
        ...


def _how_it_ended(handle: Handle, ended: Snapshot) -> dict[str, Any]:
    """The error and the kind's own end details (a command's exit code) of an ended process."""
    how: dict[str, Any] = {"error": ended.error} if ended.error else {}
    process = handle._process
    try:
        how.update(process.machine.end_details(process.state_for_logs()))
    except Exception as exc:  # a kind's bug must not stop a restart decision
        how["end_details_failed"] = repr(exc)
    return how


class _Child:
    __slots__ = (
        "given_up", "handle", "on_purpose", "pending_restart", "restarts", "running", "since", "spec", "streak", "sub",
        "watcher", "window",
    )  # fmt: skip

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.handle: Handle | None = None
        self.sub: Supervisor | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.on_purpose = False
        self.running = asyncio.Event()
        self.since = 0.0
        self.streak = 0  # restarts in a row (for backoff)
        self.pending_restart: TimerHandle | None = None
        self.window: RestartWindow | None = None
        self.given_up = False
        self.restarts = 0  # since its supervisor started (an operator's count, not a budget's)
        self.reset_budget()

    def reset_budget(self) -> None:
        """Count this child's own restarts afresh (at its creation, and when an operator
        starts it again after it was given up)."""
        self.window = RestartWindow(self.spec.budget) if self.spec.budget is not None else None

    @property
    def alive(self) -> bool:
        if self.sub is not None:
            return self.sub.state is SupervisorState.RUNNING
        return self.handle is not None and not self.handle.done()


class Supervisor:
    """Starts children in dependency order, restarts them by policy, stops them in reverse."""

    def __init__(self, node: Spawner, spec: SupervisorSpec, *, parent: Supervisor | None = None) -> None:
        self.node = node
        self.spec = spec
        self.parent = parent
        self.path: str = f"{parent.path}/{spec.name}" if parent else spec.name
        names = [c.name for c in spec.children]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"supervisor {self.path}: child names repeat: {sorted(names)}")
        self.order = start_order({c.name: c.depends_on for c in spec.children})
        self._children = {c.name: _Child(c) for c in spec.children}
        self._window = RestartWindow(spec.budget)
        self._rng = random.Random(self.path)
        self.state = SupervisorState.CREATED
        self._ended = asyncio.Event()
        self._restarting: set[asyncio.Task[None]] = set()
        self.failure: str | None = None  # why it failed, once it has
        self.restarts = 0

    # --- starting ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every child once the children it depends on are running."""
        self.state = SupervisorState.RUNNING
        for name in self.order:
            child = self._children[name]
            for dependency in child.spec.depends_on:
                await self._children[dependency].running.wait()
            await self._start_child(child)

    async def _start_child(self, child: _Child) -> None:
        if self.state is not SupervisorState.RUNNING:
            return
        spec = child.spec
        child.on_purpose = False
        child.since = self.node.clock.now()
        if spec.supervisor is not None:
            child.sub = Supervisor(self.node, spec.supervisor, parent=self)
            await child.sub.start()
        else:
            assert spec.machine is not None
            adopted = self.node.adopt(self.path, spec.name)
            if adopted is not None:
                child.handle = adopted
            else:
                child.handle = await self.node.spawn(
                    spec.machine,
                    spec.state,
                    name=f"{self.path}/{spec.name}",
                    mode=spec.mode,
                    meta={"supervisor": self.path, "child": spec.name},
                )
            # Dependents start once this child has committed its start (or its restore).
            await child.handle._process.wait_ready()
        child.running.set()
        child.watcher = asyncio.get_running_loop().create_task(self._watch(child))
        child.watcher.add_done_callback(self._task_done)

    async def _watch(self, child: _Child) -> None:
        how: dict[str, Any] = {}
        if child.sub is not None:
            await child.sub._ended.wait()
            outcome = Lifecycle.FAILED if child.sub.state is SupervisorState.FAILED else Lifecycle.FINISHED
            if child.sub.failure:
                how["error"] = child.sub.failure
        else:
            assert child.handle is not None
            ended = await child.handle.wait()
            outcome = ended.lifecycle
            how = _how_it_ended(child.handle, ended)
        child.running.clear()
        self._child_ended(child, outcome, how)

    # --- deciding ------------------------------------------------------------------------

    def _child_ended(self, child: _Child, outcome: Lifecycle, how: Mapping[str, Any] | None = None) -> None:
        """``how``: what the log says of the end beside its outcome (the error, a command's
        exit code: the kind's ``Machine.end_details``)."""
        if self.state is not SupervisorState.RUNNING:
            return
        how = how or {}
        name = child.spec.name
        if not should_restart(child.spec.restart, outcome, child.on_purpose):
            log.info("child_ended", supervisor=self.path, child=name, outcome=str(outcome), **how)
            return
        now = self.node.clock.now()
        if child.window is not None and not child.window.allow(now):
            child.given_up = True
            log.error(
                "child_given_up", supervisor=self.path, child=name, outcome=str(outcome), **how,
                budget=str(child.spec.budget),
            )  # fmt: skip
            return
        if not self._window.allow(now):
            budget = self.spec.budget
            log.error("restart_budget_exceeded", supervisor=self.path, child=name, **how, budget=str(budget))
            self._fail_soon(f"restart budget exceeded ({budget.max_restarts} in {budget.period:g} s)")
            return
        backoff = child.spec.backoff or self.spec.backoff
        child.streak = 1 if now - child.since >= backoff.reset_after else child.streak + 1
        delay = backoff.delay(child.streak, self._rng)
        names = affected(self.spec.strategy, self.order, name)
        # The budget as used so far, the child's own where it has one: how close to giving up.
        window, budget = self._window, self.spec.budget
        if child.window is not None and child.spec.budget is not None:
            window, budget = child.window, child.spec.budget
        log.warning(
            "child_restarting",
            supervisor=self.path,
            child=name,
            outcome=str(outcome),
            **how,
            restarts=names,
            delay=round(delay, 3),
            budget=f"{len(window)} of {budget}",
        )
        when = now + delay
        child.pending_restart = self.node.clock.call_at(when, lambda: self._spawn_task(self._restart(names)))

    def _spawn_task(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._restarting.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A watcher or restart ended. One that raised is a bug in deciding or restarting: this
        supervisor can no longer be trusted to supervise, so it fails, as an OTP supervisor
        crashes, and its parent decides (a dead task would have stopped supervision silently)."""
        self._restarting.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        what = getattr(task.get_coro(), "__qualname__", task.get_name())
        log.error("supervisor_task_failed", supervisor=self.path, task=what, error=repr(error))
        if self.state is SupervisorState.RUNNING:
            self._fail_soon(f"{what} raised {error!r}")

    def _fail_soon(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            self._spawn_task(self._escalate())

    async def _restart(self, names: list[str]) -> None:
        if self.state is not SupervisorState.RUNNING:
            return
        streaks = {n: self._children[n].streak for n in names}
        for name in reversed(names):
            await self._stop_child(self._children[name], reason="restarting by strategy")
        for name in names:
            child = self._children[name]
            child.pending_restart = None
            for dependency in child.spec.depends_on:
                await self._children[dependency].running.wait()
            # Counted before the start, which the child may finish (new pid, first transition)
            # before this coroutine resumes: an observer must not see it restarted, uncounted.
            self.restarts += 1
            child.restarts += 1
            self.node.restarted()  # the tree's count survives this supervisor's replacement
            try:
                await self._start_child(child)
            except StatevisorError as exc:
                # The start itself failed (a full or locked store cannot take the new process):
                # a failed run, so the next try comes after the backoff, within the budget. Left
                # to the task, the child would never be restarted, and nothing would say so.
                log.error("child_start_failed", supervisor=self.path, child=name, error=str(exc))
                child.running.clear()
                self._child_ended(child, Lifecycle.FAILED)
                return  # the strategy's next restart starts the rest
            child.streak = streaks[name]

    async def _escalate(self) -> None:
        await self._stop_all(self.failure or "supervisor failed")
        self.state = SupervisorState.FAILED
        self._ended.set()

    # --- stopping ------------------------------------------------------------------------

    async def _stop_child(self, child: _Child, *, reason: str) -> None:
        child.on_purpose = True
        if child.pending_restart is not None:
            child.pending_restart.cancel()
            child.pending_restart = None
        if child.sub is not None:
            await child.sub.stop(reason)
        elif child.handle is not None and not child.handle.done():
            await child.handle.kill(reason)
        if child.watcher is not None:
            await asyncio.gather(child.watcher, return_exceptions=True)
        child.running.clear()

    async def stop_child(self, name: str, reason: str = "stopped on purpose") -> None:
        """Stop one child on purpose: no policy restarts it."""
        try:
            child = self._children[name]
        except KeyError:
            raise ProcessNotFound(f"supervisor {self.path} has no child {name!r}") from None
        await self._stop_child(child, reason=reason)

    async def start_child(self, name: str) -> None:
        """Start a child that was stopped on purpose (or has ended and is not restarted, or was
        given up)."""
        try:
            child = self._children[name]
        except KeyError:
            raise ProcessNotFound(f"supervisor {self.path} has no child {name!r}") from None
        if child.alive:
            return
        if child.given_up:  # an operator's start: the child's budget starts afresh
            child.given_up = False
            child.reset_budget()
        await self._start_child(child)

    async def add_child(self, spec: ChildSpec) -> None:
        """Add a child at run time (configuration reload) and start it once its dependencies run."""
        if spec.name in self._children:
            raise ConfigurationError(f"supervisor {self.path} already has a child {spec.name!r}")
        specs = {n: c.spec.depends_on for n, c in self._children.items()}
        specs[spec.name] = spec.depends_on
        order = start_order(specs)  # raises on unknown dependencies or cycles, before any change
        if spec.machine is not None:
            self.node.register(spec.machine)
        child = _Child(spec)
        self._children[spec.name] = child
        self.order = order
        for dependency in spec.depends_on:
            await self._children[dependency].running.wait()
        await self._start_child(child)

    async def remove_child(self, name: str, reason: str = "removed from the configuration") -> None:
        """Stop a child on purpose and forget it (configuration reload)."""
        await self.stop_child(name, reason)
        del self._children[name]
        self.order = [n for n in self.order if n != name]

    async def _stop_all(self, reason: str) -> None:
        self.state = SupervisorState.STOPPING
        for name in reversed(self.order):
            await self._stop_child(self._children[name], reason=reason)

    async def stop(self, reason: str = "supervisor stopping") -> None:
        """Stop every child in reverse start order; the supervisor ends (on purpose)."""
        if self.state in (SupervisorState.STOPPED, SupervisorState.FAILED):
            return
        await self._stop_all(reason)
        for task in list(self._restarting):
            if task is not asyncio.current_task():
                task.cancel()
        self.state = SupervisorState.STOPPED
        self._ended.set()

    def detach(self) -> None:
        """Stop restarting anything (graceful shutdown: the processes are left as they are)."""
        self.state = SupervisorState.STOPPING
        for child in self._children.values():
            if child.pending_restart is not None:
                child.pending_restart.cancel()
            if child.watcher is not None:
                child.watcher.cancel()
            if child.sub is not None:
                child.sub.detach()
        for task in self._restarting:
            task.cancel()

    async def wait_ended(self) -> SupervisorState:
        await self._ended.wait()
        return self.state

    # --- looking --------------------------------------------------------------------------

    def child(self, name: str) -> Handle | Supervisor:
        entry = self._children.get(name)
        if entry is None or (entry.handle is None and entry.sub is None):
            raise ProcessNotFound(f"supervisor {self.path} has no started child {name!r}")
        return entry.sub if entry.sub is not None else entry.handle  # type: ignore[return-value]

    def children(self) -> dict[str, Handle | Supervisor | None]:
        return {name: self._children[name].sub or self._children[name].handle for name in self.order}

    def tree(self) -> Iterator[Supervisor]:
        """This supervisor and the child supervisors running under it, depth first."""
        yield self
        for child in self._children.values():
            if child.sub is not None:
                yield from child.sub.tree()

    def child_statuses(self) -> list[ChildStatus]:
        """Each child in start order, as an operator reads it (one plain record each)."""
        now = self.node.clock.now()
        found = []
        for name in self.order:
            child = self._children[name]
            spec = child.spec
            handle = child.handle if child.sub is None else None
            window = child.window if child.window is not None else self._window
            found.append(
                ChildStatus(
                    name=name,
                    restart=spec.restart,
                    alive=child.alive,
                    pid=handle.pid if handle is not None else None,
                    kind=handle.kind if handle is not None else None,
                    restarts=child.restarts,
                    given_up=child.given_up,
                    restart_pending=child.pending_restart is not None,
                    budget=spec.budget,
                    budget_used=window.used(now),
                    depends_on=tuple(spec.depends_on),
                )
            )
        return found

    def budget_used(self) -> int:
        """Restarts of its children within its own budget's period."""
        return self._window.used(self.node.clock.now())

    def statistics(self) -> SupervisorStatistics:
        children = self._children.values()
        return SupervisorStatistics(
            children=len(self._children),
            alive=sum(1 for c in children if c.alive),
            restarts=self.restarts,
            pending_restarts=sum(1 for c in children if c.pending_restart is not None),
            given_up=sum(1 for c in children if c.given_up),
        )

    def __repr__(self) -> str:
        alive = sum(1 for c in self._children.values() if c.alive)
        given_up = sum(1 for c in self._children.values() if c.given_up)
        return (
            f"<Supervisor {self.path} {self.state} {self.spec.strategy}: {alive}/{len(self._children)} children "
            f"alive, {self.restarts} restarts" + (f", {given_up} given up>" if given_up else ">")
        )
