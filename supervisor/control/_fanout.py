"""Watch streams, paced: one pass per tick pushes the latest snapshot to every watcher.

A watch stream that slept and woke on its own cost, per watcher and per tick, a task wake-up, a
timer and a drain: with 1,000 remote watchers on a busy process, some 20,000 wake-ups a second
taken from the very process being watched. Here one ticker wakes every ``interval``, takes each
watched process's snapshot once, encodes it once, and writes it to each of its watchers. A
watcher whose connection still holds a backlog of earlier pushes is skipped for this tick: it
sees a later version instead (watch semantics: the latest, never a queue). The terminal snapshot
is always written, after which the stream ends. With very many watchers the ticks space out so
that all of them together cost at most ``PUSH_BUDGET`` pushes a second (1,000 watchers: one
push each per 100 ms); the daemon's processes keep their pace however many watch.

The ticker sleeps while nothing it serves changes, and a change after a quiet spell is pushed at
once: each watched process holds one future of its next change (``Process.changed_future``, no
task of its own), whose callback wakes the ticker. Ticks stay at least the pace apart, so a busy
process is pushed once per tick and a quiet one without waiting for the next.

The control server frames each push as a stream item of its protocol; the web console frames
them as server-sent events (``frame``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .._core.snapshot import Snapshot
from ._errors import ProtocolError
from ._protocol import encode_item

if TYPE_CHECKING:
    from .._core.process import Process

PUSH_BUDGET = 10_000
"""Pushes a second, over all remote watchers, above which the pace slows (see ``pace``)."""

BACKLOG_LIMIT = 256 * 1024
"""Bytes already queued on a connection above which a non-terminal push is skipped."""


class Outlet(Protocol):
    """Where a watcher's frames go (a control connection)."""

    def write_now(self, frame: bytes) -> None: ...
    def backlog(self) -> int: ...


class _Watcher:
    __slots__ = ("done", "outlet", "request_id", "seen")

    def __init__(self, outlet: Outlet, request_id: int, done: asyncio.Future[None]) -> None:
        self.outlet = outlet
        self.request_id = request_id
        self.done = done
        self.seen = -1


class WatchFanout:
    """Every remote watcher of every process, served by one ticker.

    ``encode`` makes a snapshot's body (once per version, however many watch); ``frame`` wraps a
    body for one watcher's stream (its request id and the body: a control stream item by
    default); ``interval`` gives the least time between two ticks.
    """

    def __init__(
        self,
        encode: Callable[[Snapshot], bytes],
        interval: Callable[[], float],
        frame: Callable[[int, bytes], bytes] = encode_item,
    ) -> None:
        self._encode = encode
        self._interval = interval
        self._frame = frame
        self._watchers: dict[Process, list[_Watcher]] = {}
        # Each watched process's latest snapshot encoded, made once per version however many
        # watch it; dropped with the process's last watcher, so a daemon that is watched on and
        # off for months keeps nothing for processes nobody watches.
        self._encoded: dict[Process, tuple[int, bytes]] = {}
        self._ticker: asyncio.Task[None] | None = None
        # Each watched process's next change, as a future whose callback wakes the ticker: at
        # most one per process, re-armed by the tick that pushes its change.
        self._armed: dict[Process, asyncio.Future[None]] = {}
        self._wake: asyncio.Future[None] | None = None  # what the ticker sleeps on when all is quiet
        self._changed = False  # something changed (or a watcher was skipped) since the last tick
        self._last_tick = float("-inf")  # time.monotonic()
        self.pushes = 0
        self.skipped = 0

    async def watch(self, outlet: Outlet, request_id: int, process: Process) -> None:
        """Stream ``process``'s snapshots to ``outlet`` until the terminal one (or cancellation)."""
        loop = asyncio.get_running_loop()
        watcher = _Watcher(outlet, request_id, loop.create_future())
        process.watcher_added(1)
        try:
            snapshot = process.snapshot()
            try:
                self._push(watcher, snapshot, self._encoded_body(process, snapshot))  # the current one, at once
            except ProtocolError as exc:
                raise _unsendable(process, exc) from None
            if snapshot.lifecycle.terminal:
                return
            # The push above counts as a tick: the next comes at least a pace later.
            self._last_tick = time.monotonic()
            self._watchers.setdefault(process, []).append(watcher)
            self._arm(process, snapshot.version)
            if self._ticker is None or self._ticker.done():
                self._ticker = loop.create_task(self._tick_forever(), name="watch-fanout")
            await watcher.done
        finally:
            process.watcher_added(-1)
            watchers = self._watchers.get(process)
            if watchers is not None and watcher in watchers:
                watchers.remove(watcher)
                if not watchers:
                    del self._watchers[process]
            if process not in self._watchers:
                self._encoded.pop(process, None)
                self._disarm(process)
                if not self._watchers:
                    self._poke()  # the ticker ends when nobody watches

    def _arm(self, process: Process, seen: int) -> None:
        """Wake the ticker when ``process`` changes past version ``seen`` (once; a tick re-arms)."""
        if process in self._armed:
            return
        future = process.changed_future(seen)
        self._armed[process] = future
        future.add_done_callback(lambda done: self._on_change(process, done))

    def _disarm(self, process: Process) -> None:
        future = self._armed.pop(process, None)
        if future is not None:
            future.cancel()

    def _on_change(self, process: Process, future: asyncio.Future[None]) -> None:
        if self._armed.get(process) is future:
            del self._armed[process]
        if future.cancelled():
            return
        self._changed = True
        self._poke()

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _encoded_body(self, process: Process, snapshot: Snapshot) -> bytes:
        cached = self._encoded.get(process)
        if cached is not None and cached[0] == snapshot.version:
            return cached[1]
        body = self._encode(snapshot)
        self._encoded[process] = (snapshot.version, body)
        return body

    @property
    def cached(self) -> int:
        """Processes whose encoded snapshot is kept (at most the watched ones)."""
        return len(self._encoded)

    def _push(self, watcher: _Watcher, snapshot: Snapshot, body: bytes) -> None:
        watcher.outlet.write_now(self._frame(watcher.request_id, body))
        watcher.seen = snapshot.version
        self.pushes += 1

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while self._watchers:
            if not self._changed:
                self._wake = loop.create_future()
                try:
                    await self._wake  # a watched process changed, or the last watcher left
                finally:
                    self._wake = None
                continue
            delay = self._last_tick + self.pace() - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.tick()

    def pace(self) -> float:
        """Seconds between ticks: the configured interval, stretched so that all streams
        together get at most ``PUSH_BUDGET`` pushes a second (watching has a bounded cost)."""
        streams = sum(len(w) for w in self._watchers.values())
        return max(self._interval(), streams / PUSH_BUDGET)

    def tick(self) -> None:
        """One pass: the latest snapshot of each watched process to each watcher behind it."""
        self._last_tick = time.monotonic()
        self._changed = False
        for process, watchers in list(self._watchers.items()):
            snapshot = process.snapshot()
            try:
                self._push_latest(process, snapshot, watchers)
            except ProtocolError as exc:
                # Its streams end with the reason; the ticker, which serves every other stream
                # too, goes on.
                self._end(process, watchers, _unsendable(process, exc))
                continue
            if snapshot.lifecycle.terminal:
                self._end(process, watchers)
            else:
                self._arm(process, snapshot.version)

    def _push_latest(self, process: Process, snapshot: Snapshot, watchers: list[_Watcher]) -> None:
        terminal = snapshot.lifecycle.terminal
        body: bytes | None = None
        for watcher in watchers:
            if watcher.seen == snapshot.version:
                continue
            if not terminal and watcher.outlet.backlog() > BACKLOG_LIMIT:
                self.skipped += 1
                self._changed = True  # it gets this version, or a later one, at the next tick
                continue
            if body is None:
                body = self._encoded_body(process, snapshot)
            self._push(watcher, snapshot, body)

    def _end(self, process: Process, watchers: list[_Watcher], error: BaseException | None = None) -> None:
        del self._watchers[process]
        self._encoded.pop(process, None)
        self._disarm(process)
        for watcher in watchers:
            if not watcher.done.done():
                if error is None:
                    watcher.done.set_result(None)
                else:
                    watcher.done.set_exception(error)

    def end_watching(self, pid: str, error: BaseException) -> int:
        """End every stream watching ``pid`` with ``error`` (its process left this daemon: a
        cluster's member dropped it); how many."""
        for process, watchers in list(self._watchers.items()):
            if process.pid == pid:
                self._end(process, watchers, error)
                return len(watchers)
        return 0

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for process in list(self._armed):
            self._disarm(process)

    def __repr__(self) -> str:
        streams = sum(len(w) for w in self._watchers.values())
        return (
            f"<WatchFanout {len(self._watchers)} processes, {streams} streams, {self.pushes} pushes, "
            f"{len(self._encoded)} cached>"
        )


def _unsendable(process: Process, error: ProtocolError) -> ProtocolError:
    """What a watcher hears when ``process``'s snapshot cannot be sent (over the frame limit)."""
    return ProtocolError(f"{process.pid}'s snapshot does not fit a frame ({error}); Machine.view() can show less")
