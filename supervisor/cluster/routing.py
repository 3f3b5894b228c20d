"""Handles through any daemon: control requests for a process another member owns are relayed
to it over NATS, and answered as if it were here.

The asking side (:meth:`Router.route`) looks the process's owner up in its record, publishes
the request on the owner's control subject (``sv.<cluster>.control.<node>``) with a reply
inbox of its own, and passes every frame that comes back to its client unchanged (they carry
the client's request id already): stream items first, then the response, marked as the last.
The owning side (:meth:`Router.serve`) runs the request through the same operations a local
connection does, on a :class:`_RelayOutlet` that publishes its frames to that inbox in order.

When the owner leaves while it has the request, a call fails with :class:`OwnerLost` (it may
have been handled: retry what is safe to repeat), while a watch goes on from the process's new
owner once a survivor has taken it (the client sees no version twice). A request for a process
whose owner has left and that nobody has taken yet waits for the take, up to about a lease and
a half, then fails with :class:`ProcessMoving`; one for a process bound to a dead daemon's
machine fails at once with :class:`ProcessUnreachable`. All three are retryable.

Spawns of a movable kind are placed by rendezvous hashing over the members able to run it
(:mod:`.placement`), the same rule failover uses; ``ps`` lists the whole cluster, each
process with its owner, those bound to a dead daemon from their records.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]
import nats.errors
import structlog

from .._core.lifecycle import Lifecycle
from .._core.secrets import redact
from .._core.snapshot import ProcessRecord
from .._core.state import pack, unpack
from .._errors import ProcessNotFound, StatevisorError, Unavailable
from .._supervision.node import Node
from ..control._errors import ProtocolError
from ..control._ops import OPS, Requester, answer, argument, array_chunks, snapshot_fields
from ..control._protocol import encode, encode_item, error_fields
from ..control._server import ControlServer
from .connection import pid_of, record_key
from .errors import OwnerLost, ProcessMoving, ProcessUnreachable
from .member import ClusterMember
from .placement import place
from .store import Latency, cumulative

log = structlog.get_logger("statevisor.cluster")

ROUTED = frozenset(
    {"state", "start", "cast", "try_cast", "call", "nudge", "try_nudge", "pause", "resume", "kill", "wait",
     "statistics", "watch", "logs", "follow"}
)  # fmt: skip
"""Operations on one process (``pid``): relayed to its owner."""

FOLLOWS_MOVES = frozenset({"watch"})
"""Streams that go on from a process's new owner when it moves (a watch shows the latest state;
a log followed elsewhere would repeat or skip lines, so ``follow`` ends with a retryable error)."""

OWNERS_KEPT = 65_536
"""Process owners remembered from routed requests (the oldest forgotten first): a request for a
process asked about before goes to its owner without reading its record."""

LAST = "Sv-Last"  # header of the frame that answers a relayed request (after its stream items)
LATENCY_KEPT = 2048  # the latest relayed requests' latencies kept for their percentiles
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_NATS_FAILURES = (nats.errors.Error, TimeoutError, OSError)


class _Gone(Exception):
    """The owner left while a request was with it (``delivered``), or had no relay listening
    (not ``delivered``: the request reached nobody)."""

    def __init__(self, node: str, *, delivered: bool) -> None:
        super().__init__(node)
        self.delivered = delivered


class Router:
    """Routes a daemon's control requests across the cluster ``member`` belongs to."""

    def __init__(self, member: ClusterMember, server: ControlServer) -> None:
        assert member.connection is not None
        assert member.store is not None
        assert member.membership is not None
        self.member = member
        self.server = server
        self.node: Node = server.node
        self.nc = member.connection.nc
        self.store = member.store
        self.settings = member.settings
        self.name = member.node_name
        self.subject = self.settings.subject("control", self.name)
        self.move_wait = self.settings.lease * 1.5 + self.settings.heartbeat * 2
        self._subscription: Any = None
        self._serving: dict[str, asyncio.Task[None]] = {}  # reply inbox -> the relayed request it answers
        self._departures: dict[str, set[asyncio.Future[None]]] = {}  # owner -> requests relayed to it
        self._owners: dict[str, str] = {}  # pid -> the member that answered for it last (see OWNERS_KEPT)
        self.routed = 0  # requests this daemon sent to another
        self.served = 0  # requests another daemon sent here
        self.route_failures = 0  # routed requests that failed for the cluster's sake (moving, owner lost)
        self._latencies: deque[float] = deque(maxlen=LATENCY_KEPT)
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_total = 0.0
        member.departure_listeners.append(self.departed)
        member.drop_listeners.append(self.dropped)

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(self.subject, cb=self.serve)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(*_NATS_FAILURES):
                await self._subscription.unsubscribe()
        for task in list(self._serving.values()):
            task.cancel()

    # --- deciding -------------------------------------------------------------------------------

    def routes(self, op: str, args: dict[str, Any]) -> bool:
        if self.member.lost.is_set():
            return False  # rejoining: answer for this node only, until it is a member again
        if op == "summary":
            return True
        if op == "list":
            return not args.get("local")
        if op == "spawn":
            return self._placed_elsewhere(args)
        if op in ROUTED:
            pid = args.get("pid")
            return isinstance(pid, str) and not self._here(pid)
        return False

    def _here(self, pid: str) -> bool:
        try:
            self.node.get(pid)
        except ProcessNotFound:
            try:
                self.node.find(pid)
            except ProcessNotFound:
                return False
        return True

    def _placed_elsewhere(self, args: dict[str, Any]) -> bool:
        """Choose a spawn's process id and member now (rendezvous over the members able to run
        its kind); True when that is another member (remembered in ``args`` for :meth:`route`)."""
        kind = args.get("kind")
        machine = self.node.machines.get(kind) if isinstance(kind, str) else None
        state = args.get("state")
        if machine is None or not machine.moves(state if isinstance(state, dict) else machine.initial_state()):
            return False
        pid = args.get("pid")
        if not isinstance(pid, str):
            pid = args["pid"] = secrets.token_hex(6)
        target = place(record_key(pid), self.member.able(machine.kind))
        if target is None or target == self.name:
            return False
        args[".placed_on"] = target
        return True

    # --- the asking side ------------------------------------------------------------------------

    async def route(self, c: Requester, op: str, args: dict[str, Any], request_id: int) -> None:
        if op == "summary":
            fields = self.node.summary().to_fields()
            fields["cluster"] = {**self.member.status(), "routed": self.routed, "served": self.served}
            await c.send({"id": request_id, "ok": True, "result": fields})
            return
        if op == "list":
            await self._list(c, args, request_id)
            return
        if op == "spawn":
            target = args.pop(".placed_on")
            try:
                final = await self._relay(target, op, args, request_id, c.send_frame)
            except _Gone as gone:
                if not gone.delivered:  # it reached nobody: nothing was spawned
                    raise Unavailable(
                        f"the spawn was placed on member {target}, which is stopping or gone: nothing was spawned "
                        "(retry: it is placed on the members left)",
                        0.5,
                    ) from None
                raise OwnerLost(str(args["pid"]), target) from None
            await c.send_frame(final)
            return
        await self._route_to_owner(c, op, str(args["pid"]), args, request_id)

    async def _route_to_owner(self, c: Requester, op: str, pid: str, args: dict[str, Any], request_id: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.move_wait
        last_error: bytes | None = None
        node: str | None = self._owners.get(pid)  # where it was last time: no lookup if it is still there
        while True:
            if node is None:
                owner = await self.store.owner(pid)
                if owner is None:
                    raise ProcessNotFound(
                        f"no process {pid!r} in cluster {self.settings.name} (a name is looked up on the daemon "
                        "asked; ask by pid, or ask the daemon that runs it)"
                    )
                node = owner[0]
            if node == self.name:
                if self._here(pid):
                    message = await answer(c, OPS[op], args, request_id, self.server.count_bug)
                    if message is not None:
                        await c.send(message)
                    return
            elif node in self.member.membership.live():  # type: ignore[union-attr]
                try:
                    final = await self._relay(node, op, args, request_id, c.send_frame)
                except _Gone as gone:
                    self._forget(pid)
                    if gone.delivered and op not in FOLLOWS_MOVES:
                        self.route_failures += 1
                        raise OwnerLost(pid, node) from None
                    if gone.delivered:
                        deadline = loop.time() + self.move_wait  # a watch: follow it to its next owner
                    await self._unreachable_if_bound(pid, node)
                    await asyncio.sleep(min(0.1, self.settings.heartbeat / 4))
                    node = None
                    continue
                if _moved_away(final) and final != last_error:
                    last_error = final  # the owner no longer had it: it moved on; look again, once
                    self._forget(pid)
                    node = None
                    continue
                if op in FOLLOWS_MOVES and _retryable(final):
                    deadline = loop.time() + self.move_wait  # dropped there (fenced): follow it on
                    self._forget(pid)
                    node = None
                    continue
                self._remember(pid, node)
                await c.send_frame(final)
                return
            else:
                self._forget(pid)
                await self._unreachable_if_bound(pid, node)
            if loop.time() > deadline:
                self.route_failures += 1
                raise ProcessMoving(pid, node)
            await asyncio.sleep(min(0.1, self.settings.heartbeat / 4))
            node = None

    def _remember(self, pid: str, node: str) -> None:
        if pid not in self._owners and len(self._owners) >= OWNERS_KEPT:
            self._owners.pop(next(iter(self._owners)))  # the oldest: a bounded cache, not a registry
        self._owners[pid] = node

    def _forget(self, pid: str) -> None:
        self._owners.pop(pid, None)

    async def _unreachable_if_bound(self, pid: str, node: str) -> None:
        """Raise :class:`ProcessUnreachable` when ``pid``, whose daemon ``node`` is gone, cannot
        move (nobody will take it: no use waiting)."""
        record = await self._record(pid)
        if record is not None and not self.member.movable(record):
            self.route_failures += 1
            raise ProcessUnreachable(pid, node, record.kind)

    async def _record(self, pid: str) -> ProcessRecord | None:
        with contextlib.suppress(StatevisorError):
            return await self.store.get(pid)
        return None

    async def _relay(
        self, node: str, op: str, args: dict[str, Any], request_id: int, deliver: Callable[[bytes], Any]
    ) -> bytes:
        """Send the request to ``node``, pass each stream item to ``deliver`` as a whole frame,
        and return the response's frame. Raises :class:`_Gone` when ``node`` leaves meanwhile,
        has no relay listening, or (for requests that are not streams) does not answer in time."""
        streaming = op in ("watch", "follow") or bool(args.get("chunked"))
        own = args.get("timeout")
        limit = None if op in ("watch", "follow") else self.settings.request_timeout + (
            float(own) if isinstance(own, int | float) and not isinstance(own, bool) else 0.0
        )  # fmt: skip
        if not streaming:
            return await self._ask(node, op, args, request_id, limit or self.settings.request_timeout)
        inbox = self.nc.new_inbox()
        frames: asyncio.Queue[Any] = asyncio.Queue()
        departed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._departures.setdefault(node, set()).add(departed)
        subscription = await self.nc.subscribe(inbox, cb=frames.put)
        self.routed += 1
        answered = False
        try:
            body = pack({"op": op, "args": args, "id": request_id})
            await self.nc.publish(self.settings.subject("control", node), body, reply=inbox)
            while True:
                getting = asyncio.ensure_future(frames.get())
                done, _ = await asyncio.wait({getting, departed}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
                if getting not in done:
                    getting.cancel()
                    raise _Gone(node, delivered=True)
                message = getting.result()
                headers = message.headers or {}
                if headers.get("Status") == "503":
                    raise _Gone(node, delivered=False)  # no relay listening there: stopping or gone
                frame = _framed(message.data)
                if headers.get(LAST):
                    answered = True
                    return frame
                await deliver(frame)
        finally:
            waiting = self._departures.get(node)
            if waiting is not None:
                waiting.discard(departed)
            with contextlib.suppress(*_NATS_FAILURES):
                await subscription.unsubscribe()
                if not answered:  # the asker stopped (a cancelled stream), or the owner left
                    cancel = pack({"op": ".cancel", "inbox": inbox})
                    await self.nc.publish(self.settings.subject("control", node), cancel)

    async def _ask(self, node: str, op: str, args: dict[str, Any], request_id: int, limit: float) -> bytes:
        """A request with no stream items: one NATS request, its one reply the response frame
        (on the client's shared reply subscription: no subscription of its own to make)."""
        departed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._departures.setdefault(node, set()).add(departed)
        self.routed += 1
        started = time.perf_counter()
        body = pack({"op": op, "args": args, "id": request_id})
        asking: asyncio.Future[Any] = asyncio.ensure_future(
            self.nc.request(self.settings.subject("control", node), body, timeout=limit)
        )
        try:
            await asyncio.wait([asking, departed], return_when=asyncio.FIRST_COMPLETED)
            if not asking.done():
                asking.cancel()
                raise _Gone(node, delivered=True)
            try:
                message = asking.result()
            except nats.errors.NoRespondersError:
                raise _Gone(node, delivered=False) from None
            except (nats.errors.TimeoutError, TimeoutError):
                raise _Gone(node, delivered=True) from None
        finally:
            waiting = self._departures.get(node)
            if waiting is not None:
                waiting.discard(departed)
        self._observe(time.perf_counter() - started)
        return _framed(message.data)

    def departed(self, nodes: list[str]) -> None:
        """Members left: requests relayed to them end (:class:`_Gone`)."""
        for node in nodes:
            for future in self._departures.pop(node, set()):
                if not future.done():
                    future.set_result(None)

    def dropped(self, pid: str, owner: str) -> None:
        """A process was dropped here (fenced): its watchers, ours and relayed, look again."""
        self.server.fanout.end_watching(pid, ProcessMoving(pid, owner, retry_after=0.1))

    def _observe(self, seconds: float) -> None:
        self._latencies.append(seconds)
        self._latency_total += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._latency_counts[i] += 1
                return
        self._latency_counts[-1] += 1

    def latency(self) -> Latency:
        """Relayed requests' latencies (streams left out) as a cumulative histogram."""
        return cumulative(LATENCY_BUCKETS, self._latency_counts, self._latency_total)

    def latency_p99(self) -> float | None:
        """Seconds, the 99th percentile of the latest relayed requests that are not streams."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    # --- listing the cluster ------------------------------------------------------------------

    async def _list(self, c: Requester, args: dict[str, Any], request_id: int) -> None:
        lifecycle = argument(args, "lifecycle", str, required=False)
        kind = argument(args, "kind", str, required=False)
        paused = argument(args, "paused", bool, required=False)
        found = await self.placed(kind=kind, lifecycle=lifecycle, paused=paused, request_id=request_id)
        if not argument(args, "chunked", bool, required=False):
            await c.send({"id": request_id, "ok": True, "result": found})
            return
        for chunk in array_chunks(pack(fields) for fields in found):
            await c.send_frame(encode_item(request_id, chunk))
        await c.send({"id": request_id, "ok": True, "result": None})

    async def placed(
        self, *, kind: str | None = None, lifecycle: str | None = None, paused: bool | None = None, request_id: int = 0
    ) -> list[dict[str, Any]]:
        """Every member's live processes that match, as snapshot fields each with its ``owner``
        (and ``reachable``: false for those whose daemon is down or did not answer, from their
        records): ``ps`` through this daemon, and the web console's cluster page."""
        found: list[dict[str, Any]] = []
        for handle in self.node.list(kind=kind, lifecycle=Lifecycle(lifecycle) if lifecycle else None, paused=paused):
            found.append({**snapshot_fields(handle.snapshot()), "owner": self.name, "reachable": True})
        live = self.member.membership.live()  # type: ignore[union-attr]
        asked = {"kind": kind, "lifecycle": lifecycle, "paused": paused, "local": True, "chunked": True}
        unanswered: list[str] = []
        for node in live:
            if node == self.name:
                continue
            items: list[dict[str, Any]] = []

            async def collect(frame: bytes, into: list[dict[str, Any]] = items) -> None:
                into.extend(unpack(frame[4:])["item"])

            try:
                await self._relay(node, "list", asked, request_id, collect)
            except _Gone:
                unanswered.append(node)
                continue
            found.extend({**fields, "owner": node, "reachable": True} for fields in items)
        for node in unanswered + sorted(set(await self._roster()) - set(live)):
            found.extend(await self._unreachable(node, kind, lifecycle, paused))
        return found

    async def _roster(self) -> list[str]:
        assert self.member.connection is not None
        try:
            return await self.member.connection.keys(self.member.connection.roster)
        except _NATS_FAILURES:  # NATS trouble: list what answered
            return []

    async def _unreachable(
        self, node: str, kind: str | None, lifecycle: str | None, paused: bool | None
    ) -> list[dict[str, Any]]:
        """The live processes on ``node``'s index, from their records (its daemon is down)."""
        listed: list[dict[str, Any]] = []
        with contextlib.suppress(StatevisorError):
            for key in await self.store.index(node):
                try:
                    record = await self.store.get(pid_of(key))
                except StatevisorError:
                    continue
                if record is None or record.lifecycle.terminal:
                    continue
                if (kind and record.kind != kind) or (lifecycle and str(record.lifecycle) != lifecycle):
                    continue
                if paused is not None and bool(record.paused) is not paused:
                    continue
                listed.append({**self._fields_of(record), "owner": node, "reachable": False})
        return listed

    def _fields_of(self, record: ProcessRecord) -> dict[str, Any]:
        machine = self.node.machines.get(record.kind)
        state = redact(record.state, machine.secret_keys) if machine is not None else "(a kind this daemon lacks)"
        return {
            "pid": record.pid, "name": record.name, "kind": record.kind, "version": record.version,
            "lifecycle": str(record.lifecycle), "paused": bool(record.paused), "pause_reason": record.pause_reason,
            "phase": record.phase, "state": state, "waiting_on": [], "since": record.since or 0.0,
            "result": record.result, "error": record.error,
        }  # fmt: skip

    # --- the owning side ------------------------------------------------------------------------

    async def serve(self, message: Any) -> None:
        """A request relayed here by another member (a NATS subscription's callback: it only
        starts the work, so one slow request holds up no other)."""
        try:
            request = unpack(message.data)
            op = request["op"]
        except Exception:
            log.warning("relayed_request_unreadable", subject=message.subject)
            return
        if op == ".cancel":
            task = self._serving.get(str(request.get("inbox")))
            if task is not None:
                task.cancel()
            return
        reply = message.reply
        if not reply:
            return
        outlet = _RelayOutlet(self, reply)
        handler = OPS.get(op) if isinstance(op, str) else None
        args = request.get("args")
        request_id = request.get("id")
        if handler is None or not isinstance(args, dict) or not isinstance(request_id, int):
            error = ProtocolError(f"relayed request {op!r} is not one this daemon knows, or is malformed")
            outlet.write_now(encode({"id": request_id, "ok": False, "error": error_fields(error)}), last=True)
            return
        self.served += 1
        task = asyncio.get_running_loop().create_task(self._answer(outlet, handler, args, request_id))
        self._serving[reply] = task
        task.add_done_callback(lambda _: self._serving.pop(reply, None))

    async def _answer(self, outlet: _RelayOutlet, handler: Any, args: dict[str, Any], request_id: int) -> None:
        message = await answer(outlet, handler, args, request_id, self.server.count_bug)
        if message is not None:
            await outlet.send(message)

    def __repr__(self) -> str:
        return (
            f"<Router {self.name}: {self.routed} routed, {self.served} served, {len(self._serving)} serving, "
            f"{self.route_failures} failed>"
        )


class _RelayOutlet:
    """A relayed request's connection, as the operations see one: frames go back to the asking
    daemon's inbox, published in the order they are written."""

    def __init__(self, router: Router, reply: str) -> None:
        self.node = router.node
        self.fanout = router.server.fanout
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._nc = router.nc
        self._reply = reply
        self._queue: deque[tuple[bytes, bool]] = deque()
        self._queued_bytes = 0
        self._sender: asyncio.Task[None] | None = None
        self._sent = asyncio.Event()
        self._sent.set()

    def handle(self, args: dict[str, Any]) -> Any:
        pid = argument(args, "pid", str)
        try:
            return self.node.get(pid)
        except ProcessNotFound:
            return self.node.find(pid)

    async def send(self, message: dict[str, Any]) -> None:
        try:
            frame = encode(message)
        except ProtocolError as exc:  # a result too large for one frame
            frame = encode({"id": message.get("id"), "ok": False, "error": error_fields(exc)})
        self.write_now(frame, last="ok" in message)
        await self._sent.wait()

    async def send_frame(self, frame: bytes) -> None:
        self.write_now(frame)
        await self._sent.wait()

    def write_now(self, frame: bytes, last: bool = False) -> None:
        self._queue.append((frame[4:], last))
        self._queued_bytes += len(frame)
        self._sent.clear()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_queued())

    def backlog(self) -> int:
        return self._queued_bytes

    async def _send_queued(self) -> None:
        while self._queue:
            body, last = self._queue.popleft()
            self._queued_bytes -= len(body) + 4
            try:
                await self._nc.publish(self._reply, body, headers={LAST: "1"} if last else None)
            except _NATS_FAILURES as exc:
                log.warning("relay_reply_failed", error=repr(exc))
                self._queue.clear()
                self._queued_bytes = 0
        self._sent.set()


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _error_type(frame: bytes) -> tuple[str, bool] | None:
    """(error type, retryable) of a response frame that is an error; None for a success."""
    try:
        message = msgpack.unpackb(frame[4:], raw=False)
    except Exception:
        return None
    if not isinstance(message, dict) or message.get("ok") is not False:
        return None
    error = message.get("error") or {}
    return str(error.get("type")), bool(error.get("retryable"))


def _moved_away(frame: bytes) -> bool:
    found = _error_type(frame)
    return found is not None and found[0] == "ProcessNotFound"


def _retryable(frame: bytes) -> bool:
    found = _error_type(frame)
    return found is not None and found[1]
