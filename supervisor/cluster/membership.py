"""Who is in the cluster: leases as heartbeats in the ``members`` bucket.

A member holds the key of its node name in the bucket, written when it joins and rewritten every
third of the lease, each time on the revision it wrote last (compare-and-set). The bucket's age
limit is the lease: a member that stops beating (dead, paused, cut off) loses its key on the
servers' own clock, whatever the members' clocks say, and cannot beat again: its next rewrite
finds the key gone (or another incarnation's) and is refused. That refusal is how a member
learns it lost its lease: it stops its copies and joins again (:class:`LeaseLost`).

A lease's worth of time without a beat landing is not a loss by itself: the bucket's stream may
have had no leader meanwhile (a NATS server killed: its Raft groups elect anew after 4 to 9 s of
silence), and then no server expired the key either. The member is *in doubt* until a beat
lands: on the revision it wrote last, nobody can have taken its processes (they take them only
once its key is gone), and it goes on; refused, it lost them. Nothing unsafe runs meanwhile:
every checkpoint write is a compare-and-set (:mod:`.store`), so a copy another member took is
fenced off at its next transition, before its actions leave.

Members see each other through a watch of the bucket: joins and heartbeats as they are
written, a leaving member's delete at once. A lapsed lease makes no event, so a member whose
beats stop coming for a lease is looked up: its key gone means it is gone. Joining waits for a
key of its own name that another incarnation still holds to lapse (a restart right after a
crash), and refuses a name whose holder goes on beating (two daemons given one node name).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack  # type: ignore[import-untyped]
import nats.errors
import nats.js.errors
import structlog

from .connection import ClusterConnection
from .errors import ClusterError
from .settings import SAFE_LEASE

log = structlog.get_logger("statevisor.cluster")

_NATS_FAILURES = (nats.errors.Error, TimeoutError, OSError)


class Standing(enum.StrEnum):
    """Where this daemon stands in the cluster."""

    OUTSIDE = "outside"  # not joined yet, or left
    MEMBER = "member"
    LOST = "lost"  # its lease lapsed: it must stop its copies and join again


@dataclass(slots=True)
class Member:
    """One member as this daemon last saw it."""

    node: str
    incarnation: str
    revision: int
    seen: float  # this daemon's monotonic clock when its latest heartbeat was seen
    info: dict[str, Any] = field(default_factory=dict)  # what it says of itself (kinds, processes, version)


def _decode(value: bytes | None) -> dict[str, Any]:
    try:
        info = msgpack.unpackb(value or b"", raw=False)
    except Exception:
        return {}
    return info if isinstance(info, dict) else {}


class Membership:
    """This daemon's lease, and its view of the other members.

    ``describe()`` is what each heartbeat says of this member (a map: kinds it runs, processes
    it owns); ``on_left(nodes)`` is called when members leave or lapse; ``on_lost(why)`` once,
    when this member's own lease is gone.
    """

    def __init__(
        self,
        connection: ClusterConnection,
        *,
        describe: Callable[[], dict[str, Any]] = dict,
        on_left: Callable[[list[str]], None] = lambda nodes: None,
        on_lost: Callable[[str], None] = lambda why: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = connection.settings
        self.connection = connection
        self.node = settings.node
        self.lease = settings.lease
        self.heartbeat = settings.heartbeat
        self.incarnation = secrets.token_hex(8)
        self.describe = describe
        self.on_left = on_left
        self.on_lost = on_lost
        self.clock = clock
        self.standing = Standing.OUTSIDE
        self.members: dict[str, Member] = {}
        self.revision = 0
        self.joined_at: float | None = None
        self.beat_landed = 0.0  # when the last heartbeat that landed was sent (monotonic)
        self.beats = 0
        self.beat_failures = 0  # heartbeats that did not land (NATS unreachable, slow)
        self.in_doubt = False  # a lease passed without a beat landing: the next one decides
        self.departures = 0  # members seen leaving or lapsing
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False  # stop() was called: the loops end at their next turn
        self._nudged = asyncio.Event()  # beat now, not at the next heartbeat (what it says changed)
        self._watch_seen = 0.0  # when the watch last showed this member's own heartbeat

    def _value(self) -> bytes:
        info = {"incarnation": self.incarnation, "joined": self.joined_at, **self.describe()}
        packed: bytes = msgpack.packb(info, use_bin_type=True)
        return packed

    # --- joining and leaving --------------------------------------------------------------

    async def join(self) -> None:
        """Take this node's key (waiting, up to a lease and a half, for an earlier incarnation's
        to lapse), then see who else is there."""
        members = self.connection.members
        self.joined_at = time.time()
        deadline = self.clock() + self.lease * 1.5 + self.heartbeat
        holder: tuple[str, int] | None = None
        while True:
            sent = self.clock()
            try:
                self.revision = await members.create(self.node, self._value())
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            except _NATS_FAILURES as exc:
                # A cluster just started (its streams electing leaders) answers so for a moment.
                if self.clock() > deadline:
                    raise ClusterError(f"joining cluster {self.connection.settings.name}: {exc!r}") from exc
                await asyncio.sleep(min(0.25, self.heartbeat))
                continue
            try:
                entry = await members.get(self.node)
            except nats.js.errors.KeyNotFoundError:
                continue  # lapsed or left just now: take it
            except _NATS_FAILURES:
                await asyncio.sleep(min(0.25, self.heartbeat))
                continue
            info = _decode(entry.value)
            seen = (str(info.get("incarnation")), int(entry.revision or 0))
            if holder is None:
                log.warning(
                    "node_name_held", node=self.node, incarnation=seen[0],
                    note=f"an earlier daemon of this name; waiting up to {self.lease * 1.5:g} s for its lease to lapse",
                )  # fmt: skip
            elif seen[1] != holder[1] and self.clock() > deadline:
                raise ClusterError(
                    f"node name {self.node!r} is held by a live daemon of cluster {self.connection.settings.name} "
                    f"(incarnation {seen[0]}, still beating): is another daemon configured with the same "
                    "[cluster] node?"
                )
            holder = seen
            if self.clock() > deadline + self.lease:
                raise ClusterError(f"node name {self.node!r}: its earlier holder's key did not lapse in time")
            await asyncio.sleep(min(0.25, self.heartbeat))
        self.beat_landed = sent
        self.standing = Standing.MEMBER
        await self._load_members()
        log.info("cluster_joined", node=self.node, incarnation=self.incarnation, members=sorted(self.members))
        if self.lease < SAFE_LEASE:
            log.warning(
                "cluster_lease_short", lease=self.lease, safe=SAFE_LEASE,
                why="a NATS server's death (its streams electing new leaders) may outlast it",
            )  # fmt: skip

    async def _load_members(self) -> None:
        members = self.connection.members
        watcher = await members.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    break
                self._saw(entry)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    def _running(self) -> bool:
        return self.standing is Standing.MEMBER and not self._stopping

    def start(self) -> None:
        """Beat, watch the others, and look up the silent ones, until :meth:`leave`."""
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._tasks = [
            loop.create_task(self._beat_forever(), name="cluster-heartbeat"),
            loop.create_task(self._watch_forever(), name="cluster-watch"),
            loop.create_task(self._check_forever(), name="cluster-expiry"),
        ]

    async def stop(self) -> None:
        """Stop beating and watching (the key stays until it lapses: :meth:`leave` deletes it)."""
        # The loops also stop at their next turn: a cancellation can be lost on Python 3.11 when
        # it meets a wait_for (nats-py's watch uses one) finishing at the same moment.
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        while tasks:
            for task in tasks:
                task.cancel()
            done, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: a loop that failed is over all the same
            tasks = list(pending)

    async def leave(self) -> None:
        """Leave on purpose: the key is deleted, so the others take over at once rather than
        after a lease."""
        await self.stop()
        if self.standing is Standing.MEMBER:
            with contextlib.suppress(*_NATS_FAILURES, nats.js.errors.KeyWrongLastSequenceError):
                await self.connection.members.delete(self.node, last=self.revision)
                log.info("cluster_left", node=self.node, incarnation=self.incarnation)
        self.standing = Standing.OUTSIDE

    # --- this member's lease ----------------------------------------------------------------

    async def _beat_forever(self) -> None:
        members = self.connection.members
        while self._running():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat):
                    await self._nudged.wait()
            self._nudged.clear()
            silent = self.clock() - self.beat_landed
            if silent > self.lease and not self.in_doubt:
                self.in_doubt = True
                log.warning("cluster_lease_in_doubt", node=self.node, silent_seconds=round(silent, 1))
            sent = self.clock()
            try:
                self.revision = await members.update(self.node, self._value(), last=self.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                self._lost(
                    f"its membership key lapsed or was taken by another incarnation "
                    f"(no heartbeat had landed for {self.clock() - self.beat_landed:.1f} s)"
                )
                return
            except _NATS_FAILURES as exc:
                self.beat_failures += 1
                log.warning("heartbeat_failed", node=self.node, error=repr(exc), lease_left=self.lease_left())
                continue
            if self.in_doubt:
                self.in_doubt = False
                log.warning("cluster_lease_kept", node=self.node, silent_seconds=round(sent - self.beat_landed, 1))
            self.beat_landed = sent
            self.beats += 1

    def beat_now(self) -> None:
        """Beat at once (what :attr:`describe` says has changed: the kinds it runs)."""
        self._nudged.set()

    def _lost(self, why: str) -> None:
        if self.standing is not Standing.MEMBER:
            return
        self.standing = Standing.LOST
        log.error("cluster_lease_lost", node=self.node, incarnation=self.incarnation, why=why)
        self.on_lost(why)

    def lease_left(self) -> float:
        """Seconds this member's lease has left, as far as its own clock can tell."""
        return max(0.0, self.lease - (self.clock() - self.beat_landed)) if self.standing is Standing.MEMBER else 0.0

    # --- the others -------------------------------------------------------------------------

    def live(self) -> list[str]:
        """The members as this daemon sees them, itself included while it is one, by name."""
        names = set(self.members)
        if self.standing is Standing.MEMBER:
            names.add(self.node)
        else:
            names.discard(self.node)
        return sorted(names)

    def _saw(self, entry: Any) -> None:
        node = entry.key
        if entry.operation in ("DEL", "PURGE"):
            self._gone([node], "left")
            return
        info = _decode(entry.value)
        incarnation = str(info.get("incarnation", ""))
        if node == self.node:
            if incarnation == self.incarnation:
                self._watch_seen = self.clock()
            else:
                return  # an earlier incarnation's last beat: not a member
        known = self.members.get(node)
        revision = int(entry.revision or 0)
        if known is not None and known.incarnation != incarnation and node != self.node:
            self._gone([node], "restarted")  # its old incarnation's processes are orphans now
            known = None
        if known is None or revision > known.revision:  # the same revision again is no news of it
            self.members[node] = Member(node, incarnation, revision, self.clock(), info)

    def _gone(self, nodes: list[str], why: str) -> None:
        left = [node for node in nodes if self.members.pop(node, None) is not None and node != self.node]
        if left:
            self.departures += len(left)
            log.warning("cluster_members_gone", nodes=left, why=why, live=self.live())
            self.on_left(left)

    async def _watch_forever(self) -> None:
        """Follow the bucket; after any failure (a NATS server gone, the watch stalled: this
        member's own heartbeats stopped showing) start over, and take what changed meanwhile."""
        members = self.connection.members
        while self._running():
            self._watch_seen = self.clock()
            try:
                watcher = await members.watchall()
            except _NATS_FAILURES as exc:
                log.warning("cluster_watch_failed", error=repr(exc))
                await asyncio.sleep(self.heartbeat / 2)
                continue
            synced = False
            try:
                while self._running():
                    try:
                        entry = await watcher.updates(timeout=self.heartbeat)  # type: ignore[no-untyped-call]
                    except nats.errors.TimeoutError:
                        entry = False
                    if entry is None and not synced:
                        # Members missing from a new watch are not taken for gone here: the
                        # watch's "that is all" may come before its first entries. A member
                        # that did lapse meanwhile falls silent, and is looked up (below).
                        synced = True
                        continue
                    if entry:
                        self._saw(entry)
                    if self.clock() - self._watch_seen > self.lease:
                        log.warning("cluster_watch_stalled", seconds=round(self.clock() - self._watch_seen, 1))
                        break
            finally:
                with contextlib.suppress(*_NATS_FAILURES):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _check_forever(self) -> None:
        """Look up the members silent for a lease: gone when their key is."""
        members = self.connection.members
        while self._running():
            await asyncio.sleep(self.heartbeat / 2)
            now = self.clock()
            for node, member in list(self.members.items()):
                if node == self.node or now - member.seen < self.lease:
                    continue
                try:
                    entry = await members.get(node)
                except nats.js.errors.KeyNotFoundError:
                    self._gone([node], "lease lapsed")
                    continue
                except _NATS_FAILURES:
                    continue
                self._saw(entry)

    def __repr__(self) -> str:
        return (
            f"<Membership {self.node} {self.standing}: {len(self.live())} live, lease {self.lease:g} s, "
            f"{self.beats} beats, {self.departures} departures>"
        )
