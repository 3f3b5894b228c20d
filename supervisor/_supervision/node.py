"""The node: a runtime with its checkpoint store, its process types and its root supervisor;
everything one daemon runs (an Erlang node's share of the work, in OTP's words).

Start = open the store, revive every live process from its checkpoint (or quarantine it with
the reason), then start the root supervisor, which adopts revived children instead of starting
them twice. Shutdown = stop restarting, let in-flight transitions commit, stop driving the
processes without ending them, flush and close the store: external work keeps running and the
next start continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from .._core.actions import ExecuteFunction, Executor
from .._core.clock import Clock
from .._core.codec import encode_record
from .._core.handle import Handle
from .._core.lifecycle import DriveMode, Lifecycle
from .._core.machine import Machine
from .._core.process import Process
from .._core.runtime import Runtime
from .._core.snapshot import ProcessRecord
from .._core.state import check_value
from .._errors import ConfigurationError, ProcessNotFound, StatevisorError
from .._store.protocol import Quarantined, Store
from .._store.sqlite import SQLiteStore, Synchronous
from .._version import __version__
from .retention import prune_ended, prune_interval, prune_periodically
from .summary import LIVE_LIFECYCLES, KindCounts, NodeSummary, SlotCounts
from .supervisor import Supervisor, SupervisorSpec

log = structlog.get_logger("statevisor.node")

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class StartReport:
    revived: int
    quarantined: list[Quarantined] = field(default_factory=list)


class Node:
    """Everything one daemon runs.

    ``store``: a SQLite file's path (opened by :meth:`start` with ``synchronous``,
    ``busy_timeout`` and ``verify_writes``), a :class:`Store` already open (the node closes it
    at shutdown), or None: nothing is persisted.
    """

    def __init__(
        self,
        *,
        machines: Iterable[Machine[Any] | type[Machine[Any]]] = (),
        executors: Mapping[str, Executor | ExecuteFunction] | None = None,
        store: str | Store | None = None,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        verify_writes: bool = False,
        checkpoint_every_commit: bool = False,
        root: SupervisorSpec | None = None,
        slots: Mapping[str, int] | None = None,
        clock: Clock | None = None,
        kill_grace: float = 5.0,
        retention: float = 7 * DAY,
        ended_kept: int = 10_000,
        check_determinism: bool = False,
    ) -> None:
        if not isinstance(ended_kept, int) or ended_kept < 0:
            raise ConfigurationError(f"ended_kept must be a whole number >= 0; got {ended_kept!r}")
        self.runtime = Runtime(
            executors=executors, clock=clock, kill_grace=kill_grace, slots=slots, check_determinism=check_determinism
        )
        self.runtime.checkpoint_every_commit = checkpoint_every_commit
        self.machines: dict[str, Machine[Any]] = {}
        for machine in machines:
            self.register(machine)
        self._given_store = store if store is not None and not isinstance(store, str) else None
        self.store_path = store if isinstance(store, str) else store.path if store is not None else None
        self.synchronous: Synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.verify_writes = verify_writes
        self.store: Store | None = None
        self.retention = retention
        self.root = Supervisor(self, root or SupervisorSpec("root"))
        for spec in _all_machines(self.root.spec):
            self.register(spec)
        self._adoptable: dict[tuple[str, str], Handle] = {}
        # Recently ended processes stay findable (how did it end?), up to a bound.
        self._ended: OrderedDict[str, Process] = OrderedDict()
        self.ended_kept = ended_kept  # ended processes kept in memory for get/find (their rows stay for retention)
        self.runtime.observers.append(_EndedKeeper(self._ended, ended_kept))
        self._closing = False
        self._pruner: asyncio.Task[None] | None = None
        self.restarts = 0  # by every supervisor of the tree since start (one counter for the metrics)
        self.started_at: float | None = None
        self.quarantined_at_start = 0
        self.quarantined_why: dict[str, int] = {}  # by why: corrupt, unknown_kind, newer_schema...
        self._retired: list[Executor] = []  # replaced by install(): closed at shutdown

    def register(self, machine: Machine[Any] | type[Machine[Any]]) -> Machine[Any]:
        """Make a process type known by its kind (revived checkpoints find their type this way).

        A class whose kind is already registered as an instance of that class resolves to that
        instance: kinds whose constructor needs arguments (hosts, directories) are registered
        once, built, and then named by class in child specs.
        """
        if isinstance(machine, type):
            registered = self.machines.get(machine.kind)
            if type(registered) is machine:
                return registered
        instance = machine() if isinstance(machine, type) else machine
        known = self.machines.get(instance.kind)
        if known is not None and type(known) is not type(instance):
            raise ConfigurationError(
                f"kind {instance.kind!r} is registered twice: {type(known).__name__} and {type(instance).__name__}"
            )
        self.machines.setdefault(instance.kind, instance)
        return self.machines[instance.kind]

    def install(self, machine: Machine[Any], executors: Mapping[str, Executor | ExecuteFunction]) -> None:
        """Make ``machine`` the process type of its kind from now on, with ``executors`` for its
        actions (a configuration reload's new or changed kind). New processes of the kind, and
        revived or restarted ones, use it; live ones go on with the machine they were started
        with. Executors it replaces finish what they run and are closed at shutdown."""
        self.machines[machine.kind] = machine
        self.install_executors(executors)

    def install_executors(self, executors: Mapping[str, Executor | ExecuteFunction]) -> None:
        """Execute these action types with these executors from now on (see :meth:`install`)."""
        for action_type, executor in executors.items():
            if action_type in self.runtime.executors:
                self._retired.append(self.runtime.executors.get(action_type))
            self.runtime.executors.register(action_type, executor)

    # --- starting -------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self.runtime.clock

    def restarted(self) -> None:
        """One more restart by a supervisor of this node's tree."""
        self.restarts += 1

    async def start(self) -> StartReport:
        report = StartReport(0)
        self.started_at = time.time()
        if self._given_store is not None:
            self.store = self._given_store
        elif self.store_path is not None:
            self.store = await SQLiteStore.open(
                self.store_path,
                synchronous=self.synchronous,
                busy_timeout=self.busy_timeout,
                verify_writes=self.verify_writes,
            )
        if self.store is not None:
            self.runtime.checkpointer = self.store
            report = await self._recover(self.store)
            self.quarantined_at_start = len(report.quarantined)
            pruning = prune_periodically(self.prune, prune_interval(self.retention))
            self._pruner = asyncio.get_running_loop().create_task(pruning)
        await self.root.start()
        return report

    async def _recover(self, store: Store) -> StartReport:
        with collector_paused():
            recovery = await store.load()
            self.quarantined_why = {"corrupt": len(recovery.quarantined)} if recovery.quarantined else {}
            report = await self._bring_in(store, recovery.records, list(recovery.quarantined), adopt=True)
        log.info("recovered", revived=report.revived, quarantined=len(report.quarantined), store=self.store_path)
        return report

    async def take(self, records: list[ProcessRecord]) -> StartReport:
        """Revive processes whose records this node's store has just taken over (a cluster's
        failover): brought up to date, restored (their pending actions re-issued under the same
        ids) and running when this returns. They run unsupervised: a supervisor's children
        stay with their daemon."""
        if self.store is None or self._closing:
            raise ConfigurationError("only a started node with a store takes processes over")
        with collector_paused():
            report = await self._bring_in(self.store, records, [], adopt=False)
        self.quarantined_at_start += len(report.quarantined)
        return report

    def drop(self, pid: str, why: str) -> bool:
        """Stop running ``pid`` here without ending it (its record is another daemon's now):
        its task and actions are cancelled, nothing it held is let out. Whether it was here."""
        try:
            process = self.runtime.get(pid)._process
        except ProcessNotFound:
            return False
        process.detach()
        log.warning("process_dropped", pid=pid, name=process.name, kind=process.kind, why=why)
        return True

    async def _bring_in(
        self, store: Store, records: list[ProcessRecord], quarantined: list[Quarantined], *, adopt: bool
    ) -> StartReport:
        revived: list[Handle] = []
        usable: list[ProcessRecord] = []
        migrated: list[ProcessRecord] = []
        for record in records:
            why, problem, record = self._bring_up_to_date(record)
            if problem:
                quarantined.append(await store.quarantine(record.pid, problem))
                self.quarantined_why[why] = self.quarantined_why.get(why, 0) + 1
                continue
            usable.append(record)
            if why == "migrated":
                migrated.append(record)
        if migrated:
            # Written back before any of them runs again, together: a crash now finds
            # every one migrated, or none.
            await store.save_batch([encode_record(record) for record in migrated])
            kinds = sorted({record.kind for record in migrated})
            log.info("checkpoints_migrated", processes=len(migrated), kinds=kinds, store=self.store_path)
        for record in usable:
            try:
                handle = self._revive(record)
            except StatevisorError as exc:
                quarantined.append(await store.quarantine(record.pid, str(exc)))
                self.quarantined_why["revive_failed"] = self.quarantined_why.get("revive_failed", 0) + 1
                continue
            revived.append(handle)
            owner = (record.meta.get("supervisor"), record.meta.get("child"))
            if adopt and isinstance(owner[0], str) and isinstance(owner[1], str):
                self._adoptable[(owner[0], owner[1])] = handle
        # Returns with every revived process through its restore.
        for handle in revived:
            await handle._process.wait_ready()
        for entry in quarantined:
            log.error("checkpoint_quarantined", pid=entry.pid, reason=entry.reason, store=self.store_path)
        return StartReport(len(revived), quarantined)

    def _bring_up_to_date(self, record: ProcessRecord) -> tuple[str, str, ProcessRecord]:
        """A loaded record checked against its kind as installed now: (why, problem, record),
        where a problem quarantines it, and ``why`` is ``migrated`` for a record whose state was
        brought up to its machine's schema (the record returned carries the new state)."""
        machine = self.machines.get(record.kind)
        if machine is None:
            known = ", ".join(sorted(self.machines))
            return "unknown_kind", f"no process type registered for kind {record.kind!r} (known: {known})", record
        if record.schema > machine.schema:
            problem = (
                f"its checkpoint is of schema {record.schema}, newer than kind {record.kind!r}'s {machine.schema}: "
                "written by a newer version of the machine, it is kept rather than misread"
            )
            return "newer_schema", problem, record
        if record.schema == machine.schema:
            return "", "", record
        try:
            state = machine.migrate(record.state, record.schema)
            if not isinstance(state, Mapping):
                raise TypeError(f"migrate() returned {type(state).__name__}, not a mapping")
            check_value(dict(state), "migrated state")
        except Exception as exc:
            problem = f"migrating its state from schema {record.schema} to {machine.schema} raised {exc!r}"
            return "migration_failed", problem, record
        return "migrated", "", dataclasses.replace(record, state=dict(state), schema=machine.schema)

    def _revive(self, record: ProcessRecord) -> Handle:
        machine = self.machines.get(record.kind)
        if machine is None:
            raise ConfigurationError(
                f"no process type registered for kind {record.kind!r} (known: {', '.join(sorted(self.machines))})"
            )
        mode = DriveMode.STEP if record.meta.get("mode") == DriveMode.STEP else DriveMode.AUTO
        return self.runtime.revive(machine, record, mode=mode)

    def summary(self) -> NodeSummary:
        """This node in counts, one pass over its live processes (``statevisor status``, the
        metrics): one small answer for 100,000 processes, not 100,000 snapshots to count."""
        counting: dict[str, list[int]] = {kind: [0, 0, 0, 0, 0] for kind in self.machines}
        column = {lc: i for i, lc in enumerate(LIVE_LIFECYCLES)}
        live_transitions = 0
        for process in self.runtime.processes():
            live_transitions += process.transitions
            row = counting.setdefault(process.kind, [0, 0, 0, 0, 0])
            lifecycle = process.lifecycle
            if lifecycle in column:  # an ended process still in the live table for a moment
                row[column[lifecycle]] += 1
                row[3] += process.paused
                row[4] += process.mailbox_depth
        stats = self.runtime.statistics(live_transitions=live_transitions)  # this pass counted them
        supervisors = list(self.root.tree())
        return NodeSummary(
            version=__version__,
            started=self.started_at,
            kinds={kind: KindCounts(*row) for kind, row in sorted(counting.items())},
            ended={"finished": stats.finished, "failed": stats.failed, "killed": stats.killed},
            transitions=stats.transitions,
            transition_errors=stats.transition_errors,
            restarts=self.restarts,
            given_up=sum(s.statistics().given_up for s in supervisors),
            quarantined=self.quarantined_at_start,
            quarantined_why=dict(self.quarantined_why),
            slots={s.kind: SlotCounts(s.capacity, s.used, s.queued) for s in self.runtime.slots.statistics()},
            store=self.store_path,
            failed_supervisors={s.path: s.failure for s in supervisors if s.failure is not None},
            store_problem=self.store.statistics().file_problem if self.store is not None else "",
        )

    def adopt(self, supervisor: str, child: str) -> Handle | None:
        """A revived process that was ``child`` of ``supervisor`` (used once, by that supervisor)."""
        handle = self._adoptable.pop((supervisor, child), None)
        return handle if handle is not None and not handle.done() else None

    async def prune(self) -> int:
        """Delete checkpoints of processes that ended more than ``retention`` seconds ago, and
        the log files that belonged to them alone (their machines' ``owned_logs``); the number
        of checkpoints deleted."""
        if self.store is None:
            return 0
        return await prune_ended(self.store, self.machines, self.runtime.clock.now() - self.retention)

    # --- spawning and finding ---------------------------------------------------------------

    async def spawn(
        self,
        machine: Machine[Any] | type[Machine[Any]] | str,
        state: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        mode: DriveMode = DriveMode.AUTO,
        pid: str | None = None,
        meta: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> Handle:
        """Spawn a process; with a store, it is checkpointed before it starts (and survives a crash).

        ``state`` is checked with the kind's ``check_settings`` first: invalid settings raise
        :class:`SettingsError` naming the key, and nothing is spawned. ``start=False`` spawns it
        held: checkpointed, listed, pausable and killable, and started by ``await handle.start()``
        (a restart keeps it held).
        """
        if self._closing:
            raise ConfigurationError("the node is shutting down and spawns nothing new")
        if isinstance(machine, str):
            try:
                machine = self.machines[machine]
            except KeyError:
                raise ConfigurationError(
                    f"no process type registered for kind {machine!r} (known: {', '.join(sorted(self.machines))})"
                ) from None
        instance = self.register(machine)
        if state is not None:
            # The configuration's settings are checked when it loads; these come from a caller,
            # who should hear "argv: expected a list" now, not find a failed process later.
            instance.check_settings(state)
        meta = {**(meta or {}), "mode": str(mode)}
        handle = self.runtime.spawn(instance, state, name=name, mode=mode, pid=pid, meta=meta, start=False)
        if start:
            handle._process.meta.pop("held", None)  # held only until the checkpoint below is durable
        if self.store is not None:
            try:
                await self.store.save(handle._process.checkpoint())
            except BaseException:
                self.runtime.forget(handle._process)
                raise
        if start:
            self.runtime.start(handle)
        return handle

    def get(self, pid: str) -> Handle:
        """A live process by id, or one that ended recently (its handle reports how it ended)."""
        try:
            return self.runtime.get(pid)
        except ProcessNotFound:
            if pid in self._ended:
                return Handle(self._ended[pid])
            raise

    def find(self, name: str) -> Handle:
        """A live process by name, or the latest recently ended one of that name.

        Supervised children are named by their path (``root/web``); a bare child name of the
        root supervisor (``web``, as a configuration declares it) finds it too.
        """
        names = [name] if "/" in name else [name, f"{self.root.path}/{name}"]
        for candidate in names:
            with contextlib.suppress(ProcessNotFound):
                return self.runtime.find(candidate)
        for process in reversed(self._ended.values()):
            if process.name in names:
                return Handle(process)
        raise ProcessNotFound(f"no live or recently ended process named {name!r}")

    def recently_ended(self, *, newest_first: bool = False) -> Iterator[Process]:
        """The ended processes kept for lookups (the last ``ended_kept``) in the order they
        ended: for reading on the loop, without a handle made for each."""
        return reversed(self._ended.values()) if newest_first else iter(self._ended.values())

    @property
    def ended_in_memory(self) -> int:
        """How many ended processes are kept for lookups now (at most ``ended_kept``)."""
        return len(self._ended)

    def list(
        self, *, kind: str | None = None, lifecycle: Lifecycle | None = None, paused: bool | None = None
    ) -> list[Handle]:
        """Live processes, filtered by kind, lifecycle and paused flag."""
        found = []
        for handle in self.runtime.handles():
            process = handle._process
            if kind is not None and process.machine.kind != kind:
                continue
            if lifecycle is not None and process.lifecycle is not lifecycle:
                continue
            if paused is not None and process.paused is not paused:
                continue
            found.append(handle)
        return found

    async def stop(self, pid: str, reason: str = "stopped on purpose") -> None:
        """Stop a process on purpose (kill it); no restart policy brings it back."""
        try:
            handle = self.get(pid)
        except ProcessNotFound:
            handle = self.find(pid)
        await handle.kill(reason)

    # --- shutting down -----------------------------------------------------------------------

    async def shutdown(self, timeout: float = 10.0) -> bool:
        """Bounded graceful shutdown; processes are left to be revived by the next start.

        Returns whether the store took every checkpoint and closed within ``timeout``. A store
        whose writer hangs (a disk or network file system that stopped answering) is left
        behind, said so, instead of holding the shutdown past its bound: the checkpoints it had
        not written are lost to this run, and the next start revives the durable ones.
        """
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.root.detach()
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        processes = list(self.runtime.processes())
        # Let in-flight transitions commit: no process takes a new input, and the ones handling
        # one finish it (bounded). Nothing here changes a process's own (checkpointed) state.
        self.runtime.draining = True
        settle_by = loop.time() + max(0.0, (deadline - loop.time()) / 2)
        while any(p.stepping for p in processes) and loop.time() < settle_by:  # noqa: ASYNC110 - once, bounded
            await asyncio.sleep(0.01)
        # One wait for every process's cancelled tasks: a wait each cost 100,000 processes more
        # than the whole timeout (measured: 12.5 s for a 10 s shutdown).
        owners = {task: process for process in processes for task in process.detach()}
        if owners:
            grace = min(self.runtime.kill_grace, max(0.1, deadline - loop.time()))
            _, late = await asyncio.wait(owners, timeout=grace)
            for task in late:
                self.runtime.abandon(task, owners[task])
        await self.runtime.executors.close(max(0.1, deadline - loop.time()))
        retired = [getattr(e, "close", None) for e in {id(e): e for e in self._retired}.values()]
        closing = [asyncio.ensure_future(close()) for close in retired if close is not None]
        if closing:
            _, late = await asyncio.wait(closing, timeout=max(0.1, deadline - loop.time()))
            for task in late:
                task.cancel()
        if self.store is not None:
            self.runtime.checkpointer = None
            try:
                await asyncio.wait_for(self.store.close(), max(0.1, deadline - loop.time()))
            except TimeoutError:
                log.error(
                    "store_not_closed", store=self.store_path, timeout=timeout,
                    note="its writer did not finish in time (a hung disk?); what it had not written is lost "
                    "to this run, and the next start revives the last durable checkpoints",
                )  # fmt: skip
                return False
        return True

    def __repr__(self) -> str:
        store = self.store_path or "no store"
        return f"<Node {store}: {len(self.runtime)} live processes, {len(self.machines)} kinds, {self.root!r}>"


class _EndedKeeper:
    """A runtime observer keeping the last ``limit`` ended processes."""

    def __init__(self, ended: OrderedDict[str, Process], limit: int) -> None:
        self.ended = ended
        self.limit = limit

    def transition_error(self, process: Process) -> None:
        return None

    def action_done(self, process: Process, action: Any, seconds: float, ok: bool) -> None:
        return None

    def terminated(self, process: Process) -> None:
        self.ended[process.pid] = process
        if len(self.ended) > self.limit:
            self.ended.popitem(last=False)


def _all_machines(spec: SupervisorSpec) -> list[Machine[Any] | type[Machine[Any]]]:
    found: list[Machine[Any] | type[Machine[Any]]] = []
    for child in spec.children:
        if child.machine is not None:
            found.append(child.machine)
        if child.supervisor is not None:
            found.extend(_all_machines(child.supervisor))
    return found


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while reviving many processes at once.

    Reviving creates millions of long-lived objects and almost no garbage; with the collector on,
    its full passes walk the growing heap again and again and recovery goes quadratic (measured:
    5.0 s vs 2.5 s for 50,000 processes). The collector is restored afterwards, but its next
    passes would walk every new object twice more, as young and as middle-aged, before the
    full passes that walk the oldest anyway: the survivors are moved straight to the oldest
    generation instead (``freeze`` then at once ``unfreeze``; never left frozen, as frozen
    objects are never collected and ended processes' cycles would leak), unless something else
    froze objects (its freeze is left alone).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()
