"""A daemon as a member of a cluster: its lease, its share of the store, and failover.

Opening joins the cluster (:class:`~.membership.Membership`) and hands the node a
:class:`~.store.ClusterStore` whose start takes over this node's own processes (an earlier
incarnation's: a restart). Once the node runs, the member:

* takes its share of every departed member's movable processes: those that rendezvous hashing
  over the live members able to run their kind places here (:func:`~.placement.place`); each
  survivor takes its own share, without asking the others, and the store's compare-and-set
  settles a process two of them reach for;
* looks through the roster (every node that may own processes) now and then for processes
  nobody took: a departure it did not see, a survivor that died before taking its share;
* drops a process whose write was fenced (another member has it now);
* on losing its own lease, sets :attr:`lost`: the daemon stops every copy it runs and joins
  again as a fresh member (a new incarnation), taking back what is still its node's.

A process is movable when its machine says so (:meth:`Machine.moves`: its kind's ``movable``,
or what its settings make it) and no supervisor of its daemon's tree owns it (a
configuration's declared processes stay with their daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
import structlog

from .._core.snapshot import ProcessRecord
from .._errors import StatevisorError, StoreError
from .._supervision.node import Node, StartReport
from .._version import __version__
from .connection import ClusterConnection, record_key
from .membership import Membership, Standing
from .placement import place
from .settings import ClusterSettings
from .store import ClusterStore

log = structlog.get_logger("statevisor.cluster")

SWEEP_LEASES = 3.0
"""Leases between two looks through the roster for processes nobody took."""


class ClusterMember:
    """A daemon's membership of the cluster ``settings`` names. Use: ``store = await
    member.open()``, build and start the node on that store, ``member.attach(node)``; at the
    end ``await member.close(leave=...)``."""

    def __init__(self, settings: ClusterSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.node_name = settings.node
        self.clock = clock
        self.connection: ClusterConnection | None = None
        self.membership: Membership | None = None
        self.store: ClusterStore | None = None
        self.node: Node | None = None
        self.lost = asyncio.Event()
        self.lost_why = ""
        self.failovers = 0  # departures whose processes this member took a share of
        self.taken = 0  # processes taken over from departed members
        self.dropped = 0  # processes dropped here because another member had taken them
        self.last_failover_seconds = 0.0
        self.departure_listeners: list[Callable[[list[str]], None]] = []  # told when members leave
        self.drop_listeners: list[Callable[[str, str], None]] = []  # told (pid, owner) when a copy is dropped
        self._claims: set[asyncio.Task[None]] = set()
        self._claiming: asyncio.Lock = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        self._stranded: list[ProcessRecord] = []  # taken over, not yet revived (a failure): tried again

    async def open(self) -> ClusterStore:
        """Connect, join, and return the store the node is to start on."""
        self.connection = await ClusterConnection.open(self.settings)
        try:
            self.membership = Membership(
                self.connection, describe=self._describe, on_left=self._members_left, on_lost=self._lease_lost
            )
            await self.membership.join()
            # Beating from now on: a node reviving many processes may hold its loop for a while
            # before it runs, and its lease must not lapse meanwhile.
            self.membership.start()
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self.connection.roster.put(self.node_name, b"")
            self.store = ClusterStore(self.connection, self.membership.incarnation, on_fenced=self._fenced)
        except BaseException:
            await self.connection.close()
            raise
        return self.store

    def attach(self, node: Node) -> None:
        """Start beating, watching and taking over, for ``node`` (started on :attr:`store`)."""
        assert self.membership is not None
        self.node = node
        self.membership.beat_now()  # the kinds it runs, for placement
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="cluster-sweep")

    async def close(self, *, leave: bool) -> None:
        """Stop; ``leave`` deletes this member's key so the others take over at once (a
        graceful stop), else its lease is left to lapse (a lost lease, a rejoin)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._claims):
            task.cancel()
        if self.membership is not None:
            if leave:
                await self.membership.leave()
            else:
                await self.membership.stop()
        if self.connection is not None:
            await self.connection.close()

    # --- what this member says of itself -----------------------------------------------------

    def _describe(self) -> dict[str, Any]:
        node = self.node
        kinds = sorted(kind for kind, machine in node.machines.items() if machine.movable) if node else []
        return {"version": __version__, "kinds": kinds, "processes": len(node.runtime) if node else 0}

    def movable(self, record: ProcessRecord) -> bool:
        """Whether ``record``'s process may continue here when its daemon is gone."""
        machine = self.node.machines.get(record.kind) if self.node is not None else None
        return machine is not None and "supervisor" not in record.meta and machine.moves(record.state)

    def able(self, kind: str) -> list[str]:
        """The live members (this one included) that run ``kind``."""
        membership = self.membership
        if membership is None:
            return []
        able = []
        for name in membership.live():
            member = membership.members.get(name)
            kinds = member.info.get("kinds") if member is not None else None
            if name == self.node_name or (isinstance(kinds, list) and kind in kinds):
                able.append(name)
        return able

    # --- failover ---------------------------------------------------------------------------

    def _members_left(self, nodes: list[str]) -> None:
        for listener in self.departure_listeners:
            listener(nodes)
        if self.node is None:
            return  # not running yet: the first sweep, soon after it does, takes its share
        for node in nodes:
            task = asyncio.get_running_loop().create_task(self._take_share(node, time.monotonic()))
            self._claims.add(task)
            task.add_done_callback(self._claims.discard)

    async def _take_share(self, departed: str, since: float) -> None:
        """Take the processes of ``departed`` that are placed here now."""
        node, store = self.node, self.store
        if node is None or store is None or self.lost.is_set():
            return
        async with self._claiming:  # one claim at a time: each sees the others' results
            if departed in (self.membership.live() if self.membership else []):
                return  # back already: it takes its own
            able: dict[str, list[str]] = {}

            def placed_here(record: ProcessRecord) -> bool:
                if not self.movable(record):
                    return False
                members = able.setdefault(record.kind, self.able(record.kind))
                return place(record_key(record.pid), members) == self.node_name

            try:
                claimed = await store.claim(departed, placed_here)
            except (StatevisorError, nats.errors.Error, TimeoutError) as exc:
                # A NATS server restarting, a stream electing its leader: soon over. Try again
                # after a heartbeat (and the sweep, later, in any case).
                log.error("failover_failed", departed=departed, error=repr(exc), retry_in=self.settings.heartbeat)
                self._later(departed, since)
                return
            report = await self._revive(claimed.records)
            if claimed.failed:
                self._later(departed, since)
        if claimed.records:
            self.failovers += 1
            self.taken += report.revived
            self.last_failover_seconds = time.monotonic() - since
        if claimed.records or claimed.left:
            log.info(
                "failover", departed=departed, taken=report.revived, quarantined=len(report.quarantined),
                left_to_others=claimed.left, failed=claimed.failed, seconds=round(time.monotonic() - since, 3),
                members=sorted({m for ms in able.values() for m in ms}),
            )  # fmt: skip

    async def _revive(self, records: list[ProcessRecord]) -> StartReport:
        """Run the processes whose records this member has just taken. They are its own now
        (their records name it): if reviving them fails, they are kept and tried again, never
        left owned and not running."""
        node = self.node
        assert node is not None
        running = {handle.pid for handle in node.list()}
        records = [record for record in self._stranded + records if record.pid not in running]
        self._stranded = []
        try:
            return await node.take(records)
        except (StatevisorError, nats.errors.Error, TimeoutError) as exc:
            self._stranded = records  # those revived meanwhile are left out at the next try
            log.error(
                "takeover_revive_failed", processes=len(records), error=repr(exc), retry_in=self.settings.heartbeat
            )
            self._later("", time.monotonic())
            return StartReport(0)

    def _later(self, departed: str, since: float) -> None:
        """Try again after a heartbeat: the share of ``departed`` (or, with "", only what was
        taken and not yet revived)."""

        async def again() -> None:
            await asyncio.sleep(self.settings.heartbeat)
            if departed:
                await self._take_share(departed, since)
            elif self._stranded and self.node is not None:
                async with self._claiming:
                    await self._revive([])

        task = asyncio.get_running_loop().create_task(again())
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

    async def _sweep_forever(self) -> None:
        """Now and then, every roster node that is not live: take what is placed here."""
        interval = self.settings.lease * SWEEP_LEASES
        await asyncio.sleep(self.settings.heartbeat)  # first, soon after joining
        while not self.lost.is_set():
            with contextlib.suppress(StoreError, nats.errors.Error, TimeoutError):
                await self.sweep()
            await asyncio.sleep(interval)

    async def sweep(self) -> None:
        """Take this member's share of the processes of every roster node that is not live;
        forget roster nodes left with nothing on their index."""
        assert self.connection is not None
        assert self.membership is not None
        assert self.store is not None
        roster = self.connection.roster
        for name in await self.connection.keys(roster):
            if name in self.membership.live():
                continue
            await self._take_share(name, time.monotonic())
            if not await self.store.index(name) and name not in self.membership.live():
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    await roster.delete(name)

    def _fenced(self, pid: str, owner: str) -> None:
        if self.node is not None and self.node.drop(pid, f"its record is {owner}'s now (fenced)"):
            self.dropped += 1
        for listener in self.drop_listeners:
            listener(pid, owner)

    def _lease_lost(self, why: str) -> None:
        self.lost_why = why
        self.lost.set()

    @property
    def standing(self) -> Standing:
        return self.membership.standing if self.membership is not None else Standing.OUTSIDE

    def status(self) -> dict[str, Any]:
        """The cluster as this member sees it (``statevisor status``, the control API)."""
        membership = self.membership
        members: dict[str, Any] = {}
        if membership is not None:
            now = membership.clock()
            for name in membership.live():
                member = membership.members.get(name)
                if name == self.node_name:
                    members[name] = {
                        "incarnation": membership.incarnation, "lease_left": round(membership.lease_left(), 3),
                        "processes": len(self.node.runtime) if self.node else 0, "self": True,
                        "in_doubt": membership.in_doubt,
                    }  # fmt: skip
                elif member is not None:
                    members[name] = {
                        "incarnation": member.incarnation,
                        "lease_left": round(max(0.0, membership.lease - (now - member.seen)), 3),
                        "processes": member.info.get("processes"), "self": False,
                    }  # fmt: skip
        return {
            "name": self.settings.name, "node": self.node_name, "standing": str(self.standing),
            "lease": self.settings.lease, "members": members, "failovers": self.failovers, "taken": self.taken,
            "dropped": self.dropped, "fenced_writes": self.store.fenced if self.store else 0,
            "departures": membership.departures if membership else 0,
        }  # fmt: skip

    def __repr__(self) -> str:
        live = len(self.membership.live()) if self.membership else 0
        return (
            f"<ClusterMember {self.node_name} of {self.settings.name} {self.standing}: {live} live, "
            f"{self.taken} taken in {self.failovers} failovers, {self.dropped} dropped>"
        )
