"""The replicated log: one NATS JetStream stream per machine; the stream sequence is the index.

Appends: each writer (a daemon's replica, named by ``writer``) publishes on subjects of its
own, one per *lane*: ``svlog.<stream>.<writer>`` for lane 0 and ``svlog.<stream>.<writer>.<k>``
for lane k. Each append carries ``Nats-Expected-Last-Subject-Sequence`` (the previous append's
sequence on its lane) and ``Nats-Msg-Id`` (the proposal's id). The expected sequence fences a
stale incarnation of the same writer (a daemon thought dead, still running): once the new
incarnation has appended on a lane, the old one's next append there is refused and the old log
stops appending altogether. The message id makes a retried append (timeout, failover) land once;
nats-server checks the expected sequence *before* deduplication, so a refused retry is resolved
by reading the lane's last message: if it carries our id, the earlier attempt landed. An
append given up on (``append_timeout``) may still land, its publish still on its way (measured:
with every server frozen, it lands when they resume); until the lane's next success its id is
kept, and a refusal whose cause is that message at the end of the lane goes on after it
instead of taking it for another incarnation's.

A lane has one append in flight (its next expected sequence is the ack of the one before), so
lanes are what lets a writer pipeline: up to ``lanes`` appends in flight. Each lane is a task
that publishes its next queued append as soon as the last one is acknowledged (a task per
append, handed out by a dispatcher, cost two event-loop hops per append: measured, a quarter of
the throughput). An append wakes the lowest idle lane, so a lightly loaded writer uses lane 0
only and a stale incarnation meets the new one's appends there at once. Entries of one writer
in flight together may land in any order (as concurrent proposals may); one proposal awaited
before the next lands after it.

Following: an ordered push consumer from ``applied + 1``, messages buffered by a callback. After
a server failover the consumer may deliver an entry twice or skip ahead; the replica drops
duplicates and asks to follow again from its applied index on a hole, so a fresh consumer is
made from exactly there.

Closing is bounded (:data:`CLOSE_GRACE`): nats-py swallows a cancellation that lands while it
queues a flush (``Client._flush_pending``), so a lane cancelled mid-publish can go on; lanes also
stop at the closing flag, and whatever is still running after the grace is left behind with a
warning rather than waited on. One CI run hung at a close for its whole 90 minutes.

The stream is shared by every replica, so it is never compacted by one of them: retention is the
operator's (``max_msgs``/``max_age`` on the stream), and a replica that falls behind the stream's
first sequence without a covering snapshot stops with :class:`LogGap`.
"""

from __future__ import annotations

import asyncio
import heapq
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from ._entry_log import Entry, bounded
from .errors import EntryLogError, EntryRejected, StaleWriter

log = structlog.get_logger("statevisor.logapply")

_WRONG_LAST_SEQUENCE = 10071
_HEADERS_ROOM = 256  # an append's headers besides its message id (expected sequence and framing)
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise EntryLogError(value, f"{what} {value!r} may hold only letters, digits, '-' and '_' (NATS names)")
    return value


class JetStreamEntryLog:
    """A log on a JetStream stream; ``servers`` are NATS URLs (any node of the cluster)."""

    def __init__(
        self,
        servers: Sequence[str],
        stream: str,
        *,
        writer: str | None = None,
        replicas: int = 3,
        append_timeout: float = 30.0,
        duplicate_window: float = 120.0,
        stall_after: float = 3.0,
        lanes: int = 8,
    ) -> None:
        if not 1 <= lanes <= 64:
            raise EntryLogError(stream, f"lanes must be 1 to 64; got {lanes}")
        self.servers = list(servers)
        self.stream = check_name("stream", stream)
        self.writer = check_name("writer", writer or socket.gethostname().split(".")[0])
        self.name = f"jetstream:{stream}"
        self.subject = f"svlog.{stream}.{self.writer}"
        self.lanes = lanes
        self.replicas = replicas
        self.append_timeout = append_timeout
        self.duplicate_window = duplicate_window
        self.appended = 0
        self.retries = 0
        self.resubscribes = 0
        self.stalls = 0
        self.stall_after = stall_after
        self._nc: Any = None
        self._js: Any = None
        self._queue: deque[tuple[bytes, str | None, asyncio.Future[int]]] = deque()
        self._lane_last = [0] * lanes  # each lane's last sequence: its next append's expectation
        self._unsure: list[set[str]] = [set() for _ in range(lanes)]  # given up on, may land yet
        self._idle: list[int] = []  # a heap of lanes waiting for work: appends wake the lowest
        self._lane_wake = [asyncio.Event() for _ in range(lanes)]
        self._lanes: list[asyncio.Task[None]] = []
        self._stale: StaleWriter | None = None
        self._closing = False

    def lane_subject(self, lane: int) -> str:
        return self.subject if lane == 0 else f"{self.subject}.{lane}"

    async def open(self) -> None:
        import nats
        from nats.js.api import StorageType, StreamConfig

        self._nc = await nats.connect(
            servers=self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5
        )
        self._js = self._nc.jetstream(timeout=5)
        config = StreamConfig(
            name=self.stream,
            subjects=[f"svlog.{self.stream}.>"],
            num_replicas=self.replicas,
            storage=StorageType.FILE,
            duplicate_window=self.duplicate_window,
        )
        deadline = time.monotonic() + self.append_timeout
        while True:  # a fresh cluster may still be electing its meta leader
            try:
                await self._js.add_stream(config)
                break
            except Exception as exc:
                if "already in use" in str(exc):
                    break
                if time.monotonic() > deadline:
                    raise EntryLogError(self.name, f"cannot create or find the stream: {exc}") from None
                await asyncio.sleep(0.25)
        self._lane_last = list(await asyncio.gather(*(self._last_on_lane(lane) for lane in range(self.lanes))))
        loop = asyncio.get_running_loop()
        self._lanes = [loop.create_task(self._lane(k), name=f"log-lane {self.name} {k}") for k in range(self.lanes)]

    async def _last_on_lane(self, lane: int) -> int:
        from nats.js.errors import NotFoundError

        try:
            message = await self._js.get_last_msg(self.stream, self.lane_subject(lane))
        except NotFoundError:
            return 0
        return int(message.seq)

    # --- appending --------------------------------------------------------------------------

    async def append(self, data: bytes, msg_id: str | None = None) -> int:
        if self._stale is not None:
            raise self._stale
        limit = self._nc.max_payload if self._nc is not None else 0
        if limit and len(data) + _HEADERS_ROOM + len(msg_id or "") > limit:
            # Refused now: retried, it would fail the same way until the append timeout.
            raise EntryRejected(
                self.name, f"an entry of {len(data)} bytes does not fit the servers' max_payload of {limit} bytes"
            )
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((data, msg_id, future))
        if self._idle:
            self._lane_wake[heapq.heappop(self._idle)].set()
        return await future

    async def _lane(self, lane: int) -> None:
        # One lane: takes the next queued append as soon as its last one is acknowledged (no
        # hop through another task: the next publish follows the ack at once), and waits among
        # the idle lanes when there is none; stops for good on a stale writer.
        wake = self._lane_wake[lane]
        while self._stale is None and not self._closing:
            if not self._queue:
                heapq.heappush(self._idle, lane)
                await wake.wait()
                wake.clear()
                continue
            await self._send_on(lane, *self._queue.popleft())

    async def _send_on(self, lane: int, data: bytes, msg_id: str | None, future: asyncio.Future[int]) -> None:
        try:
            seq = await self._send(lane, data, msg_id)
        except asyncio.CancelledError:  # the log is closing
            if not future.done():
                future.set_exception(EntryLogError(self.name, "the log was closed before the append was acknowledged"))
            raise
        except StaleWriter as exc:
            self._stale = exc
            for _, _, waiting in [(data, msg_id, future), *self._queue]:
                if not waiting.done():
                    waiting.set_exception(exc)
            self._queue.clear()
            for other in self._lane_wake:
                other.set()  # every lane sees the stale writer and stops
            return
        except Exception as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, EntryLogError) else EntryLogError(self.name, str(exc)))
        else:
            if not future.done():
                future.set_result(seq)

    async def _send(self, lane: int, data: bytes, msg_id: str | None) -> int:
        from nats.js.errors import APIError

        subject = self.lane_subject(lane)
        deadline = time.monotonic() + self.append_timeout
        delay = 0.05
        while True:
            headers = {"Nats-Expected-Last-Subject-Sequence": str(self._lane_last[lane])}
            if msg_id is not None:
                headers["Nats-Msg-Id"] = msg_id
            try:
                ack = await self._js.publish(subject, data, headers=headers, timeout=2.0)
            except APIError as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    raise EntryLogError(self.name, f"append refused: {exc.description}") from None
                last = await self._last_message(subject)
                if last is not None and msg_id is not None and last[1] == msg_id:
                    seq = last[0]  # an earlier attempt of this very append landed
                elif last is not None and last[1] in self._unsure[lane]:
                    # An append this incarnation gave up on landed after all (its publish was
                    # still on its way): the lane goes on after it, and this append is retried.
                    self._lane_last[lane] = last[0]
                    self._unsure[lane].clear()
                    continue
                else:
                    raise StaleWriter(
                        self.name,
                        f"writer {self.writer!r}: the stream holds an append this incarnation did not make "
                        f"({exc.description}); is another daemon running with the same writer name?",
                    ) from None
            except Exception as exc:
                if self._closing:
                    raise EntryLogError(self.name, "the log was closed before the append was acknowledged") from None
                if time.monotonic() > deadline:
                    if msg_id is not None:
                        self._unsure[lane].add(msg_id)  # it may land yet: see above
                    raise EntryLogError(self.name, f"append gave up after {self.append_timeout} s: {exc}") from None
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            else:
                seq = int(ack.seq)
            # An append expecting the lane's last sequence landed: no earlier one can land now
            # (each expected an older sequence).
            self._lane_last[lane] = seq
            self._unsure[lane].clear()
            self.appended += 1
            return seq

    async def _last_message(self, subject: str) -> tuple[int, str | None] | None:
        """The sequence and message id of the last message on ``subject`` (None: there is none)."""
        from nats.js.errors import NotFoundError

        try:
            message = await self._js.get_last_msg(self.stream, subject)
        except NotFoundError:
            return None
        return int(message.seq), (message.headers or {}).get("Nats-Msg-Id")

    # --- following --------------------------------------------------------------------------

    async def follow(self, after: int) -> AsyncIterator[list[Entry]]:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        buffer: list[Entry] = []
        arrived = asyncio.Event()

        async def received(message: Any) -> None:
            buffer.append((int(message.metadata.sequence.stream), bytes(message.data)))
            arrived.set()

        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
        self.resubscribes += 1
        deadline = time.monotonic() + self.append_timeout
        while True:  # during a failover the consumer cannot be made for a while: retry, bounded
            try:
                subscription = await self._js.subscribe(
                    f"svlog.{self.stream}.>", cb=received, ordered_consumer=True, config=config, idle_heartbeat=2.0
                )
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise EntryLogError(self.name, f"cannot make a consumer from index {after + 1}: {exc}") from None
                await asyncio.sleep(0.25)
        delivered = after
        try:
            while True:
                try:
                    await asyncio.wait_for(arrived.wait(), self.stall_after)
                except TimeoutError:
                    # Nothing arrived for a while. If the stream has moved on, the consumer is
                    # stalled (its server died and the client did not notice): end this follow,
                    # and the replica follows again from its applied index on a new consumer.
                    if (await self.bounds())[1] > delivered:
                        self.stalls += 1
                        log.warning("consumer_stalled", log=self.name, delivered=delivered)
                        return
                    continue
                arrived.clear()
                batch, buffer[:] = list(buffer), []
                if batch:
                    delivered = max(delivered, batch[-1][0])
                    yield batch
        finally:
            # The connection may be gone (nothing to clean then), or stuck: bounded either way.
            await bounded("unsubscribe", subscription.unsubscribe())

    async def bounds(self) -> tuple[int, int]:
        deadline = time.monotonic() + self.append_timeout
        while True:
            try:
                info = await self._js.stream_info(self.stream)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise EntryLogError(self.name, f"stream info unavailable: {exc}") from None
                await asyncio.sleep(0.2)
        state = info.state
        last = int(state.last_seq)
        first = int(state.first_seq) if state.messages else last + 1
        return max(first, 1), last

    async def compact(self, through: int) -> None:
        return None  # shared by every replica: retention is the stream's (see the module docstring)

    async def close(self) -> None:
        """Stop appending and disconnect, within about two :data:`CLOSE_GRACE` whatever NATS does."""
        self._closing = True
        for wake in self._lane_wake:
            wake.set()
        lanes = list(self._lanes)
        for task in lanes:
            task.cancel()
        if lanes:
            await bounded("lanes", asyncio.gather(*lanes, return_exceptions=True))
        for _, _, future in self._queue:
            if not future.done():
                future.set_exception(EntryLogError(self.name, "the log was closed before the entry was appended"))
        self._queue.clear()
        if self._nc is not None:
            await bounded("connection close", self._nc.close())

    def __repr__(self) -> str:
        return (
            f"<JetStreamEntryLog {self.stream} writer={self.writer} lanes={self.lanes - len(self._idle)}/{self.lanes} "
            f"busy queued={len(self._queue)} appended={self.appended} retries={self.retries}>"
        )
