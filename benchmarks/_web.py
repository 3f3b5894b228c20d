"""The web console: the process list's first page among 100,000 processes, live updates to 100
open pages, and what 100 open pages cost the daemon's transitions (issue: web console)."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

import aiohttp

from supervisor._supervision.node import Node
from supervisor.web import WebConsole

from ._control import _transition_rate
from ._core import _Counter
from ._harness import BenchOptions, BenchResult, median, percentile

# 100 pages in another OS process, as browsers are: each an event stream read to its end.
_PAGES = """
import asyncio, sys
import aiohttp

async def main(url, count):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        responses = [await session.get(url, timeout=aiohttp.ClientTimeout(total=None)) for _ in range(count)]
        for response in responses:
            await response.content.readuntil(b"\\n\\n")
        print("open", flush=True)

        async def read(response):
            while await response.content.read(65536):
                pass

        await asyncio.gather(*(read(r) for r in responses), return_exceptions=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def _page_ms(http: aiohttp.ClientSession, url: str, repeats: int) -> tuple[float, float]:
    """The median server time (its Server-Timing) and round trip of ``url``, after a warm-up."""
    server, trip = [], []
    for attempt in range(repeats + 2):
        started = time.perf_counter()
        async with http.get(url) as response:
            await response.read()
            elapsed = time.perf_counter() - started
            timing = response.headers["Server-Timing"]
        if attempt >= 2:  # the first renders compile the templates
            server.append(float(timing.partition("dur=")[2]))
            trip.append(elapsed * 1e3)
    return median(server), median(trip)


async def _list_page(processes: int, repeats: int) -> tuple[float, float]:
    node = Node(machines=[_Counter])
    await node.start()
    for _ in range(processes):
        await node.spawn(_Counter, {"n": 0})
    console = WebConsole(node, "127.0.0.1", 0, read="open")
    await console.start()
    try:
        async with aiohttp.ClientSession() as http:
            return await _page_ms(http, console.url + "/processes", repeats)
    finally:
        await console.close()
        await node.runtime.kill_all()


async def _open_pages(url: str, count: int) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PAGES, url, str(count), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    await child.stdout.readline()  # "open": every page has its stream and its first event
    return child


async def _latencies(console: WebConsole, handle: Any, samples: int) -> list[float]:
    """Seconds from a cast to its update's write to each page's socket, the casts spaced as a
    process people watch changes (one every 110 to 190 ms, past the pages' 100 ms pace)."""
    streams = console.streams()
    found: list[float] = []
    rng = random.Random(7)
    for _ in range(samples):
        await asyncio.sleep(rng.uniform(0.11, 0.19))
        writes = [s.writes for s in streams]
        started = time.perf_counter()
        await handle.cast(1)
        deadline = started + 5.0
        while any(s.writes == w for s, w in zip(streams, writes, strict=True)) and time.perf_counter() < deadline:  # noqa: ASYNC110 - the writes raise no event
            await asyncio.sleep(0.0005)
        found.extend(s.written_at - started for s in streams)
    return found


async def web(options: BenchOptions) -> BenchResult:
    processes = options.n(100_000, minimum=100)
    pages = options.n(100, minimum=5)
    repeats = max(3, options.repeats)
    metrics: dict[str, float] = {}
    many_server, many_trip = await _list_page(processes, repeats * 4)
    # The baseline: the same first page where the whole registry is that one page (50 rows); a
    # daemon of 10 fills a fifth of it, so it renders less, not faster.
    one_page, _ = await _list_page(50, repeats * 4)
    ten, _ = await _list_page(10, repeats * 4)
    metrics.update(
        list_page_ms=many_server, list_page_round_trip_ms=many_trip, baseline_list_page_ms=one_page,
        list_page_ratio=many_server / one_page, list_page_ms_10_processes=ten,
    )  # fmt: skip

    node = Node(machines=[_Counter])
    await node.start()
    watched = await node.spawn(_Counter, {"n": 0})
    alone = await node.spawn(_Counter, {"n": 0})
    console = WebConsole(node, "127.0.0.1", 0, read="open")
    await console.start()
    child = await _open_pages(f"{console.url}/process/events?pid={watched.pid}", pages)
    try:
        while len(console.streams()) < pages:  # noqa: ASYNC110 - the pages connect from another process
            await asyncio.sleep(0.01)
        latencies = await _latencies(console, watched, options.n(200, minimum=20))
        seconds = max(0.5, 1.0 * options.scale)
        rates_alone: list[float] = []
        rates_watched: list[float] = []
        for _ in range(max(3, 2 * options.repeats)):
            rates_alone.append(await _transition_rate(alone, seconds))
            rates_watched.append(await _transition_rate(watched, seconds))
        pushes = console.statistics().pushes
    finally:
        child.kill()
        await child.wait()
        await console.close()
        await node.runtime.kill_all()
    metrics.update(
        live_update_p50_ms=percentile(latencies, 0.5) * 1e3,
        live_update_p99_ms=percentile(latencies, 0.99) * 1e3,
        watched_ratio=median([w / a for w, a in zip(rates_watched, rates_alone, strict=True)]),
        transitions_per_s_watched=median(rates_watched),
        transitions_per_s_alone=median(rates_alone),
        pushes=float(pushes),
    )
    result = BenchResult("web", metrics)
    result.lines = [
        f"list_page_ms: the server's time (its Server-Timing) for the process list's first page (50 rows) among "
        f"{processes} live processes; baseline: the same page in a daemon of 50 (list_page_ms_10_processes: of 10)",
        f"live_update: from a cast to its update leaving for each of {pages} open pages of the process (event "
        "streams read by another OS process), casts 110-190 ms apart; a busier process gets one update per 100 ms",
        f"watched_ratio: median over pairs of windows of the transition rate of a busy process with {pages} open "
        "pages / an identical one with none, driven in turns",
    ]
    return result
