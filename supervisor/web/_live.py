"""Live parts of the console's pages: one server-sent event stream per page.

A page opens one stream (browsers keep at most six connections to a host, so a page that opened
one per part would starve the next tabs). Into it go, in order:

* the page's snapshots, from a :class:`~supervisor.control._fanout.WatchFanout` of the console's
  (the watch machinery the control API's remote watchers use): one ticker serves every open
  page, each version is rendered once however many pages show it, a page whose connection
  holds a backlog skips to a later version, and a change after a quiet spell goes out at once;
* a process page's log lines, read by a follower per log on the log-reader threads, which waits
  while the page's connection is behind (a log can be written faster than a browser takes it).

:class:`EventStream` is the outlet both write to; its own task writes what is queued to the
socket, so neither the fan-out's ticker nor a follower ever waits on a slow browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from .._files.logtail import follow_positions
from ._views import sse_event

PING_SECONDS = 15.0
"""Seconds between two comments on an idle stream: proxies keep it open, and a browser that went
away is found out."""

BACKLOG_LIMIT = 256 * 1024
"""Bytes queued for a page past which its log followers wait (the fan-out has its own limit)."""

LOG_BATCH = 200
"""Log lines sent in one event at most."""


class EventStream:
    """One page's server-sent event response.

    A push is written to the socket where it is made, with no task woken for it: the fan-out's
    ticker writes every page's update in one pass. That needs the response's HTTP/1.1 chunked
    framing done here (``chunk``: the length in hex, the bytes, CRLF), after aiohttp has sent the
    headers and a first chunk itself; aiohttp ends the body with the last chunk when the handler
    returns. ``write_now`` never waits (the fan-out skips a page whose ``backlog`` is over its
    limit); ``send`` waits while the backlog is over :data:`BACKLOG_LIMIT` (log followers).
    ``written_at`` is when the last write left (``time.perf_counter``, the benchmark's clock).
    """

    def __init__(self, response: web.StreamResponse, transport: asyncio.BaseTransport | None) -> None:
        self.response = response
        # uvloop's transports do not derive from asyncio's classes: what is needed is a write side.
        writable = transport is not None and hasattr(transport, "write") and hasattr(transport, "is_closing")
        self._transport: Any = transport if writable else None
        self.closed = False
        self._ended = asyncio.Event()
        self.writes = 0
        self.written_at = 0.0

    async def open(self) -> None:
        """Send the headers and a first comment through aiohttp, which flushes them both."""
        await self.response.write(b": statevisor\n\n")

    def write_now(self, frame: bytes) -> None:
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            self.close()
            return
        transport.write(b"%x\r\n%b\r\n" % (len(frame), frame))
        self.writes += 1
        self.written_at = time.perf_counter()

    def backlog(self) -> int:
        transport = self._transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def send(self, frame: bytes) -> None:
        """Write ``frame`` once the backlog is under the limit (a browser that is behind)."""
        while not self.closed and self.backlog() > BACKLOG_LIMIT:  # noqa: ASYNC110 - a socket buffer raises no event
            await asyncio.sleep(0.05)  # the socket's buffer drains without telling
        self.write_now(frame)

    def close(self) -> None:
        self.closed = True
        self._ended.set()

    async def run(self) -> None:
        """Keep the stream open (a comment every PING_SECONDS, which also finds a browser that
        went away) until it is closed."""
        while not self.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PING_SECONDS):
                    await self._ended.wait()
            self.write_now(b": ping\n\n")

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<EventStream {state}, {self.writes} writes, {self.backlog()} bytes queued>"


def log_event_id(offsets: dict[str, int]) -> str:
    """The event id that carries every followed log's offset (``stdout=120,stderr=0``): a browser
    that reconnects sends it back, and each log goes on after what it had."""
    return ",".join(f"{stream}={offset}" for stream, offset in sorted(offsets.items()))


def parse_offsets(text: str) -> dict[str, int]:
    """The offsets of a ``Last-Event-ID`` (or a page's own), leniently: nonsense is left out."""
    found = {}
    for part in text.split(","):
        stream, _, offset = part.partition("=")
        if stream and offset.isdigit():
            found[stream.strip()] = int(offset)
    return found


async def follow_log(stream: EventStream, name: str, path: Path, offsets: dict[str, int], start: int | None) -> None:
    """Send the log's new lines to the page as ``log-<name>`` events, from ``start`` (the offset
    after the lines the page shows already; None: from the end), in batches."""
    pending: list[str] = []
    lines: AsyncIterator[tuple[str, int]] = follow_positions(path, lines=0, start=start)
    queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue(maxsize=LOG_BATCH * 4)

    async def read() -> None:
        try:
            async for found in lines:
                await queue.put(found)
        finally:
            await queue.put(None)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while not stream.closed:
            item = await queue.get()
            if item is None:
                return
            pending = [item[0]]
            offset = item[1]
            while len(pending) < LOG_BATCH and not queue.empty():  # what came meanwhile goes together
                more = queue.get_nowait()
                if more is None:
                    break
                pending.append(more[0])
                offset = more[1]
            offsets[name] = offset
            text = "".join(html.escape(line) + "\n" for line in pending)
            await stream.send(sse_event(f"log-{name}", text, log_event_id(offsets)))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        with contextlib.suppress(Exception):
            await lines.aclose()  # type: ignore[attr-defined]
