"""Shell scenario: spawn-to-exit throughput of short commands through the whole runtime.

Ours: 2,000 ``/bin/true`` shell processes, 16 in flight, on a Node with its SQLite store (the
daemon's configuration), on the requested loop (uvloop by default): each is checkpointed,
started by the run monitor, watched, and its result made durable. The baseline:
bare ``asyncio.create_subprocess_exec`` with the same concurrency on the stdlib loop (the
faster raw path on this machine), in a child interpreter, alternating with ours.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from supervisor._core.actions import TrackedAction
from supervisor._supervision.node import Node

from ._harness import BenchOptions, BenchResult, median

_BASELINE = """
import asyncio, sys, time
async def main(total, concurrency):
    gate = asyncio.Semaphore(concurrency)
    async def one():
        async with gate:
            child = await asyncio.create_subprocess_exec("/bin/true", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            await child.wait()
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    print(total / (time.perf_counter() - started))
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def _baseline(total: int, concurrency: int) -> float:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _BASELINE, str(total), str(concurrency), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    return float(out)


async def _ours(directory: str, total: int, concurrency: int) -> float:
    from processes.shell import Shell, executors

    gc.collect()  # not the collector's work on the garbage an earlier run left behind
    host = Node(
        machines=[Shell(os.path.join(directory, "logs"))],
        executors=executors(os.path.join(directory, "runs")),
        store=os.path.join(directory, "store.db"),
        retention=3600.0,
    )
    await host.start()
    left = [total]
    failures = [0]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            handle = await host.spawn("shell", {"argv": ["/bin/true"]})
            snapshot = await handle.wait()
            failures[0] += snapshot.error is not None

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = total / (time.perf_counter() - started)
    await host.shutdown()
    if failures[0]:
        raise RuntimeError(f"{failures[0]} of {total} /bin/true runs failed")
    return rate


async def _spawning_path(directory: str, total: int, concurrency: int) -> float:
    """The same runs handed straight to the shell executor: the run monitor starts each command
    with its two log files and reports its end, but no process, transition or checkpoint is
    involved. This is the spawning path's own rate, so the ceiling of the whole."""
    from processes.shell import RUN, CommandSpec, ShellExecutor

    gc.collect()
    executor = ShellExecutor(Path(directory) / "runs")
    logs = Path(directory) / "logs"
    logs.mkdir()
    numbers = iter(range(total))

    async def worker() -> None:
        for n in numbers:
            payload = CommandSpec(argv=("/bin/true",), env={}).payload()
            payload["stdout"], payload["stderr"] = str(logs / f"r{n}.out.log"), str(logs / f"r{n}.err.log")
            await executor.execute(TrackedAction(f"r{n}", RUN, payload, f"r{n}"))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = total / (time.perf_counter() - started)
    await executor.close()
    return rate


async def shell(options: BenchOptions) -> BenchResult:
    total = options.n(2000, minimum=40)
    concurrency = 16
    ours: list[float] = []
    raw: list[float] = []
    spawning: list[float] = []
    # One directory for every repeat, deleted at the end: on an ext4 without a journal (this
    # machine's), creating a file costs ~0.7 ms of kernel time for a minute or more after
    # thousands were deleted (find_inode_bit checks each recently deleted inode; perf shows
    # recently_deleted). Deleting a repeat's 4,000 log files made the next one measure that.
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        for repeat in range(options.repeats):
            run = os.path.join(directory, str(repeat))
            os.mkdir(run)
            ours.append(await _ours(run, total, concurrency))
            raw.append(await _baseline(total, concurrency))
            path = os.path.join(run, "spawning-path")
            os.mkdir(path)
            spawning.append(await _spawning_path(path, total, concurrency))
    spawns, baseline = median(ours), median(raw)
    result = BenchResult(
        "shell",
        {
            "spawns_per_s": spawns,
            "baseline_per_s": baseline,
            "ratio": spawns / baseline,
            "spawning_path_per_s": median(spawning),
            "spawning_path_ratio": median(spawning) / baseline,
        },
    )
    result.lines = [
        f"{total} /bin/true runs, {concurrency} in flight, {options.repeats} repeats (medians)",
        f"ours: shell processes on a Node with its SQLite store, {options.loop} loop, via the run monitor",
        "baseline: asyncio.create_subprocess_exec on the stdlib loop, in a child interpreter",
        "each run creates its two log files; repeats' files are deleted only after the last one",
        "spawning path: the same runs handed straight to the shell executor and its run monitor (log files",
        "and all, no process, transition or checkpoint): the ceiling of ours, and its ratio to the baseline",
    ]
    return result
