"""Control-API scenarios: rpc round trips and watch fan-out (issue: daemon)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from supervisor._supervision.node import Node
from supervisor.control import Client, ControlServer
from supervisor.control._protocol import encode, read_frame

from ._core import _Counter
from ._harness import BenchOptions, BenchResult, median, percentile


async def _echo_server(path: str) -> asyncio.AbstractServer:
    """The baseline: a bare asyncio unix-socket server with the same framing, echoing results."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (message := await read_frame(reader)) is not None:
                writer.write(encode({"id": message.get("id"), "ok": True, "result": 0}))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(serve, path=path)


async def _bare_calls(path: str, clients: int, calls: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def one() -> None:
        reader, writer = await asyncio.open_unix_connection(path)
        for request in range(calls):
            started = time.perf_counter()
            writer.write(encode({"id": request, "op": "call", "args": {"pid": "x", "message": "get"}}))
            await writer.drain()
            await read_frame(reader)
            latencies.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return clients * calls / (time.perf_counter() - started), latencies


async def _our_calls(path: str, pid: str, clients: int, calls: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def one() -> None:
        async with Client.connect(path) as client:
            handle = await client.get(pid)
            for _ in range(calls):
                started = time.perf_counter()
                await handle.call("get")
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(clients)))
    return clients * calls / (time.perf_counter() - started), latencies


async def rpc(options: BenchOptions) -> BenchResult:
    calls = options.n(1000, minimum=20)
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        host = Node(machines=[_Counter])
        await host.start()
        handle = await host.spawn(_Counter, {"n": 0})
        ours = ControlServer(host, os.path.join(directory, "ours.sock"))
        await ours.start()
        bare = await _echo_server(os.path.join(directory, "bare.sock"))
        for clients in (1, 16):
            rates, lat, base_rates = [], [], []
            for _ in range(options.repeats):
                base_rates.append((await _bare_calls(os.path.join(directory, "bare.sock"), clients, calls))[0])
                rate, latencies = await _our_calls(ours.path, handle.pid, clients, calls)
                rates.append(rate)
                lat.extend(latencies)
            suffix = "" if clients == 16 else "_1_client"
            metrics[f"calls_per_s{suffix}"] = median(rates)
            metrics[f"p50_ms{suffix}"] = percentile(lat, 0.5) * 1e3
            metrics[f"p99_ms{suffix}"] = percentile(lat, 0.99) * 1e3
            metrics[f"baseline_per_s{suffix}"] = median(base_rates)
            metrics[f"ratio{suffix}"] = median(rates) / median(base_rates)
        bare.close()
        await ours.close()
        await host.runtime.kill_all()
    result = BenchResult("rpc", metrics)
    result.lines = [
        f"call() round trips over the unix socket, {calls} per client, 1 and 16 clients (unsuffixed: 16)",
        "baseline: a bare asyncio unix-socket server with the same framing answering every frame",
    ]
    return result


async def _transition_rate(handle: Any, seconds: float) -> float:
    start: int = handle.statistics().transitions
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for i in range(200):
            await handle.cast(i)
        await asyncio.sleep(0)
    await handle.call("sync")
    end: int = handle.statistics().transitions
    return (end - start) / (time.perf_counter() - started)


_WATCHERS = """
import asyncio, sys
import uvloop
from supervisor.control import Client

async def main(path, pid, count):
    clients = [Client.connect(path) for _ in range(count)]
    for client in clients:
        await client.open()
    received = [0]

    async def watch(client):
        remote = await client.get(pid)
        async for _ in remote.watch():
            received[0] += 1

    tasks = [asyncio.ensure_future(watch(c)) for c in clients]
    print("watching", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    print(received[0], flush=True)

uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def watch_fanout(options: BenchOptions) -> BenchResult:
    """The watchers run in another OS process, as remote watchers do.

    Two identical busy processes in one daemon; the 1,000 watchers watch one of them for the
    whole run. Windows driving the watched one alternate with windows driving the unwatched one
    (whose watchers then have nothing new to get), and the ratio is the median over those pairs:
    this machine's speed drifts by tens of percent over a minute, which a measurement of all
    "alone" windows before all "watched" ones took for the cost of watching.
    """
    import sys

    watchers = options.n(1000, minimum=20)
    seconds = max(0.5, 1.0 * options.scale)
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        host = Node(machines=[_Counter])
        await host.start()
        watched_handle = await host.spawn(_Counter, {"n": 0})
        alone_handle = await host.spawn(_Counter, {"n": 0})
        server = ControlServer(host, os.path.join(directory, "c.sock"))
        await server.start()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WATCHERS, server.path, watched_handle.pid, str(watchers),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert child.stdout is not None
        await child.stdout.readline()  # "watching": every watcher is connected
        while server.connections < watchers:  # noqa: ASYNC110 - connections arrive from another process
            await asyncio.sleep(0.01)
        alone: list[float] = []
        watched: list[float] = []
        for _ in range(max(3, 2 * options.repeats)):
            alone.append(await _transition_rate(alone_handle, seconds))
            watched.append(await _transition_rate(watched_handle, seconds))
        await watched_handle.kill()
        delivered = int((await child.stdout.readline()) or 0)
        await child.wait()
        await alone_handle.kill()
        await server.close()
    result = BenchResult(
        "watch-fanout",
        {"ratio": median([w / a for w, a in zip(watched, alone, strict=True)]),
         "transitions_per_s_watched": median(watched), "transitions_per_s_alone": median(alone),
         "snapshots_delivered": float(delivered)},
    )  # fmt: skip
    result.lines = [
        f"two busy processes driven by casts in turns, one of them with {watchers} remote watchers in another "
        "OS process",
        f"ratio: median over {len(watched)} pairs of windows of the watched one's transition rate / the unwatched "
        "one's; remote watch streams are paced (50 ms, stretched to at most 10,000 pushes/s in all)",
    ]
    return result
