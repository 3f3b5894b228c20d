"""Runtime-core scenarios: transitions, spawn, control (issue: runtime core)."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from supervisor._core.handle import Handle
from supervisor._core.inputs import Call, Cast, Input
from supervisor._core.lifecycle import DriveMode
from supervisor._core.machine import Context, Machine
from supervisor._core.runtime import Runtime

from ._harness import BenchOptions, BenchResult, median, percentile


class _Counter(Machine[dict[str, Any]]):
    """The trivial counter: a cast adds one, a call replies the count."""

    kind = "bench-counter"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        if type(input) is Cast:
            state["n"] += 1
        elif type(input) is Call:
            if input.message == "add":
                state["n"] += 1
            ctx.reply(input, state["n"])


class _BigCounter(Machine[dict[str, Any]]):
    """10,000 entries of state; each cast changes one of them."""

    kind = "bench-big"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        if type(input) is Cast:
            entries = state["entries"]
            key = f"k{input.message % 10_000}"
            entries[key] = entries[key] + 1
        elif type(input) is Call:
            ctx.reply(input, len(state["entries"]))


class _Trivial(Machine[dict[str, Any]]):
    """Finishes on its first input."""

    kind = "bench-trivial"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        ctx.finish()


class _Idle(Machine[dict[str, Any]]):
    """Never finishes by itself."""

    kind = "bench-idle"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        return None


async def _cast_rate(handle: Handle, n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        await handle.cast(i)
    await handle.call("sync")
    return n / (time.perf_counter() - started)


async def _call_rate(handle: Handle, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await handle.call("get")
    return n / (time.perf_counter() - started)


async def _queue_ping_pong(n: int) -> float:
    requests: asyncio.Queue[int | None] = asyncio.Queue()
    replies: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        while (item := await requests.get()) is not None:
            replies.put_nowait(item)

    task = asyncio.get_running_loop().create_task(echo())
    started = time.perf_counter()
    for i in range(n):
        requests.put_nowait(i)
        await replies.get()
    elapsed = time.perf_counter() - started
    requests.put_nowait(None)
    await task
    return n / elapsed


async def transitions(options: BenchOptions) -> BenchResult:
    n = options.n(200_000)
    runtime = Runtime()
    counter = runtime.spawn(_Counter, {"n": 0})
    big = runtime.spawn(_BigCounter, {"entries": {f"k{i}": 0 for i in range(10_000)}})
    calls = runtime.spawn(_Counter, {"n": 0})
    rates, large, call_rates, baselines = [], [], [], []
    for _ in range(options.repeats):
        baselines.append(await _queue_ping_pong(n // 2))
        rates.append(await _cast_rate(counter, n))
        large.append(await _cast_rate(big, n // 4))
        call_rates.append(await _call_rate(calls, n // 4))
    await runtime.kill_all()
    result = BenchResult(
        "transitions",
        {
            "transitions_per_s": median(rates),
            "baseline_per_s": median(baselines),
            "ratio": median(rates) / median(baselines),
            "large_state_transitions_per_s": median(large),
            "call_round_trips_per_s": median(call_rates),
            "call_ratio": median(call_rates) / median(baselines),
        },
    )
    result.lines = [
        "transitions: a counter process driven by casts (the mailbox batches them)",
        "baseline: raw asyncio.Queue ping-pong between two tasks (round trips/s)",
        "call_round_trips_per_s: call() ping-pong, the like-for-like comparison with the baseline",
        "large_state: 10,000-entry state, each transition changes one entry",
    ]
    return result


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


class _DoneCounter:
    """A runtime observer that resolves a future when ``target`` processes have ended."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def transition_error(self, process: Any) -> None:
        return None

    def action_done(self, process: Any, action: Any, seconds: float, ok: bool) -> None:
        return None

    def terminated(self, process: Any) -> None:
        self.count += 1
        if self.count == self.target and not self.future.done():
            self.future.set_result(None)


async def _spawn_rate(n: int) -> float:
    runtime = Runtime()
    done = _DoneCounter(n)
    runtime.observers.append(done)
    machine = _Trivial()
    started = time.perf_counter()
    for _ in range(n):
        runtime.spawn(machine)
    await done.future
    return n / (time.perf_counter() - started)


async def _bare_task_rate(n: int) -> float:
    async def trivial() -> None:
        return None

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    await asyncio.gather(*(loop.create_task(trivial()) for _ in range(n)))
    return n / (time.perf_counter() - started)


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def _idle_bytes(n: int) -> float:
    runtime = Runtime()
    machine = _Idle()
    gc.collect()
    before = _rss_bytes()
    for _ in range(n):
        runtime.spawn(machine)
    await _settle()
    gc.collect()
    after = _rss_bytes()
    await runtime.kill_all()
    return (after - before) / n


async def _bare_idle_bytes(n: int) -> float:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def parked() -> None:
        await gate

    gc.collect()
    before = _rss_bytes()
    tasks = [loop.create_task(parked()) for _ in range(n)]
    await _settle()
    gc.collect()
    after = _rss_bytes()
    gate.set_result(None)
    await asyncio.gather(*tasks)
    return (after - before) / n


async def spawn(options: BenchOptions) -> BenchResult:
    n = options.n(10_000, minimum=100)
    rates, baselines, idle, bare_idle = [], [], [], []
    for _ in range(options.repeats):
        baselines.append(await _bare_task_rate(n))
        rates.append(await _spawn_rate(n))
    # Memory first-touch effects shrink with repetition; take the median of a few.
    for _ in range(max(1, options.repeats // 2)):
        bare_idle.append(await _bare_idle_bytes(n))
        idle.append(await _idle_bytes(n))
    result = BenchResult(
        "spawn",
        {
            "processes_per_s": median(rates),
            "baseline_per_s": median(baselines),
            "ratio": median(rates) / median(baselines),
            "bytes_per_idle_process": median(idle),
            "baseline_bytes_per_idle_task": median(bare_idle),
        },
    )
    result.lines = [
        f"{n} trivial processes spawned, each finishing on its first input; all awaited",
        "baseline: bare asyncio tasks of an empty coroutine, created and gathered",
        "bytes_per_idle_process: RSS growth per live idle process (vs a bare parked task)",
    ]
    return result


async def _nudge_latencies(n: int) -> list[float]:
    runtime = Runtime(nudge_buffer=4, mailbox_size=n + 8)
    handle = runtime.spawn(_Counter, {"n": 0}, mode=DriveMode.STEP)
    for i in range(n + 1):
        await handle.cast(i)
    loop = asyncio.get_running_loop()
    target = [0]
    arrived: list[asyncio.Future[float]] = [loop.create_future()]

    async def watcher() -> None:
        async for snapshot in handle.watch():
            if snapshot.version >= target[0] and not arrived[0].done():
                arrived[0].set_result(time.perf_counter())

    watching = loop.create_task(watcher())
    await handle.nudge()  # the Started input
    await arrived[0]
    latencies = []
    for _ in range(n):
        target[0] = handle.snapshot().version + 1
        arrived[0] = loop.create_future()
        started = time.perf_counter()
        await handle.nudge()
        observed = await arrived[0]
        latencies.append(observed - started)
    await handle.kill()
    await watching
    return latencies


async def _bare_hops(n: int) -> list[float]:
    """nudge -> worker task -> watcher task -> driver, with bare futures."""
    loop = asyncio.get_running_loop()
    work: list[asyncio.Future[None]] = [loop.create_future()]
    seen: list[asyncio.Future[None]] = [loop.create_future()]
    arrived: list[asyncio.Future[float]] = [loop.create_future()]

    async def worker() -> None:
        for _ in range(n):
            await work[0]
            work[0] = loop.create_future()
            seen[0].set_result(None)

    async def watcher() -> None:
        for _ in range(n):
            await seen[0]
            seen[0] = loop.create_future()
            arrived[0].set_result(time.perf_counter())

    tasks = [loop.create_task(worker()), loop.create_task(watcher())]
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        work[0].set_result(None)
        observed = await arrived[0]
        arrived[0] = loop.create_future()
        latencies.append(observed - started)
    await asyncio.gather(*tasks)
    return latencies


async def control(options: BenchOptions) -> BenchResult:
    n = options.n(5_000, minimum=50)
    ours, bare = [], []
    for _ in range(options.repeats):
        bare.extend(await _bare_hops(n))
        ours.extend(await _nudge_latencies(n))
    p50, p99 = percentile(ours, 0.5) * 1e6, percentile(ours, 0.99) * 1e6
    b50, b99 = percentile(bare, 0.5) * 1e6, percentile(bare, 0.99) * 1e6
    result = BenchResult(
        "control",
        {"p50_us": p50, "p99_us": p99, "baseline_p50_us": b50, "baseline_p99_us": b99, "ratio": b50 / p50},
    )
    result.lines = [
        "nudge -> one step-mode transition -> watch() observes the new version (latency)",
        "baseline: the same three hops with bare futures between three tasks",
    ]
    return result
