"""The replicated log: one NATS JetStream stream per machine; the stream sequence is the index.

Appends: each writer (a daemon's replica, named by ``writer``) publishes on subjects of its
own, one per *lane*: ``svlog.<stream>.<writer>`` for lane 0 and ``svlog.<stream>.<writer>.<k>``
for lane k. Each append carries ``Nats-Expected-Last-Subject-Sequence`` (the previous append's
sequence on its lane) and ``Nats-Msg-Id`` (the proposal's id). The expected sequence fences a
stale incarnation of the same writer (a daemon thought dead, still running): once the new
incarnation has appended on a lane, the old one's next append there is refused and the old log
stops appending altogether. The message id makes a retried append (timeout, failover) land once;
nats-server checks the expected sequence *before* deduplication, so a refused retry is resolved
by reading the lane's last message: if it carries our id, the earlier attempt landed.

A lane has one append in flight (its next expected sequence is the ack of the one before), so
lanes are what lets a writer pipeline: up to ``lanes`` appends in flight. An append takes the
lowest idle lane, so a lightly loaded writer uses lane 0 only and a stale incarnation meets the
new one's appends there at once. Entries of one writer in flight together may land in any order
(as concurrent proposals may); one proposal awaited before the next lands after it.

Following: an ordered push consumer from ``applied + 1``, messages buffered by a callback. After
a server failover the consumer may deliver an entry twice or skip ahead; the replica drops
duplicates and asks to follow again from its applied index on a hole, so a fresh consumer is
made from exactly there.

The stream is shared by every replica, so it is never compacted by one of them: retention is the
operator's (``max_msgs``/``max_age`` on the stream), and a replica that falls behind the stream's
first sequence without a covering snapshot stops with :class:`LogGap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog

from supervisor import LogError, StaleWriter

from ._log import Entry

log = structlog.get_logger("statevisor.logapply")

_WRONG_LAST_SEQUENCE = 10071
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise LogError(value, f"{what} {value!r} may hold only letters, digits, '-' and '_' (NATS names)")
    return value


class JetStreamLog:
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
            raise LogError(stream, f"lanes must be 1 to 64; got {lanes}")
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
        self._wake = asyncio.Event()
        self._lane_last = [0] * lanes  # each lane's last sequence: its next append's expectation
        self._idle = list(range(lanes))  # a heap: appends take the lowest idle lane
        self._sending: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Task[None] | None = None
        self._stale: StaleWriter | None = None

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
                    raise LogError(self.name, f"cannot create or find the stream: {exc}") from None
                await asyncio.sleep(0.25)
        self._lane_last = list(await asyncio.gather(*(self._last_on_lane(lane) for lane in range(self.lanes))))
        self._sender = asyncio.get_running_loop().create_task(self._send_forever(), name=f"log-send {self.name}")

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
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._queue.append((data, msg_id, future))
        self._wake.set()
        return await future

    async def _send_forever(self) -> None:
        # Hands queued appends to idle lanes, lowest first; stops for good on a stale writer.
        loop = asyncio.get_running_loop()
        while self._stale is None:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._idle and self._stale is None:
                lane = heapq.heappop(self._idle)
                task = loop.create_task(self._send_on(lane, *self._queue.popleft()))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send_on(self, lane: int, data: bytes, msg_id: str | None, future: asyncio.Future[int]) -> None:
        try:
            seq = await self._send(lane, data, msg_id)
        except asyncio.CancelledError:  # the log is closing
            if not future.done():
                future.set_exception(LogError(self.name, "the log was closed before the append was acknowledged"))
            raise
        except StaleWriter as exc:
            self._stale = exc
            for _, _, waiting in [(data, msg_id, future), *self._queue]:
                if not waiting.done():
                    waiting.set_exception(exc)
            self._queue.clear()
            self._wake.set()
            return
        except Exception as exc:
            if not future.done():
                future.set_exception(exc if isinstance(exc, LogError) else LogError(self.name, str(exc)))
        else:
            if not future.done():
                future.set_result(seq)
        heapq.heappush(self._idle, lane)
        self._wake.set()

    async def _send(self, lane: int, data: bytes, msg_id: str | None) -> int:
        from nats.js.errors import APIError

        subject = self.lane_subject(lane)
        headers = {"Nats-Expected-Last-Subject-Sequence": str(self._lane_last[lane])}
        if msg_id is not None:
            headers["Nats-Msg-Id"] = msg_id
        deadline = time.monotonic() + self.append_timeout
        delay = 0.05
        while True:
            try:
                ack = await self._js.publish(subject, data, headers=headers, timeout=2.0)
            except APIError as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    raise LogError(self.name, f"append refused: {exc.description}") from None
                landed = await self._landed(subject, msg_id)
                if landed is None:
                    raise StaleWriter(
                        self.name,
                        f"writer {self.writer!r}: the stream holds an append this incarnation did not make "
                        f"({exc.description}); is another daemon running with the same writer name?",
                    ) from None
                seq = landed
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise LogError(self.name, f"append gave up after {self.append_timeout} s: {exc}") from None
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            else:
                seq = int(ack.seq)
            self._lane_last[lane] = seq
            self.appended += 1
            return seq

    async def _landed(self, subject: str, msg_id: str | None) -> int | None:
        """After a refused retry: the sequence our earlier attempt got, if it landed."""
        if msg_id is None:
            return None
        from nats.js.errors import NotFoundError

        try:
            message = await self._js.get_last_msg(self.stream, subject)
        except NotFoundError:
            return None
        if (message.headers or {}).get("Nats-Msg-Id") == msg_id:
            return int(message.seq)
        return None

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
                    raise LogError(self.name, f"cannot make a consumer from index {after + 1}: {exc}") from None
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
            with contextlib.suppress(Exception):  # the connection may be gone: nothing to clean then
                await subscription.unsubscribe()

    async def bounds(self) -> tuple[int, int]:
        deadline = time.monotonic() + self.append_timeout
        while True:
            try:
                info = await self._js.stream_info(self.stream)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise LogError(self.name, f"stream info unavailable: {exc}") from None
                await asyncio.sleep(0.2)
        state = info.state
        last = int(state.last_seq)
        first = int(state.first_seq) if state.messages else last + 1
        return max(first, 1), last

    async def compact(self, through: int) -> None:
        return None  # shared by every replica: retention is the stream's (see the module docstring)

    async def close(self) -> None:
        tasks = [*self._sending, *([self._sender] if self._sender is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, _, future in self._queue:
            if not future.done():
                future.set_exception(LogError(self.name, "the log was closed before the entry was appended"))
        if self._nc is not None:
            await self._nc.close()

    def __repr__(self) -> str:
        return (
            f"<JetStreamLog {self.stream} writer={self.writer} lanes={self.lanes - len(self._idle)}/{self.lanes} "
            f"busy queued={len(self._queue)} appended={self.appended} retries={self.retries}>"
        )
