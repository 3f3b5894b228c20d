"""Slurm scenario: batch jobs through the whole runtime against a real Slurm over real SSH.

Starts a throwaway single-node Slurm and sshd on loopback (root and Debian's slurm-wlm, munge,
openssh-server needed; see processes/batch/loopback.py). The baseline: a plain loop of
``sbatch`` over one asyncssh connection, one after another, as a script would do it. Ours: 500
batch processes on a Node with its SQLite store, each submitting one job. Jobs are submitted
held (``--hold``) so the measurement is of submission, not of the scheduler running them. Then
1,000 jobs are tracked for several poll intervals, counting SSH connections and status commands.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from supervisor._supervision.node import Node

from ._harness import BenchOptions, BenchResult, median


async def _baseline(cluster: Any, total: int) -> float:
    import asyncssh

    async with asyncssh.connect(
        "127.0.0.1",
        cluster.sshd.port,
        username="root",
        client_keys=[str(cluster.sshd.client_key)],
        known_hosts=str(cluster.sshd.known_hosts),
        config=(),
    ) as connection:
        started = time.perf_counter()
        for n in range(total):
            done = await connection.run(
                f"sbatch --parsable --hold --job-name=raw-{n} --output=/dev/null --chdir={cluster.work_dir}",
                input="#!/bin/sh\ntrue\n",
                check=True,
            )
            assert str(done.stdout).strip().isdigit()
        return total / (time.perf_counter() - started)


async def _submitted(handle: Any) -> None:
    """Return once the batch process's state carries its scheduler job id."""
    async for snapshot in handle.watch():
        if "job_id" in snapshot.state:
            return


async def slurm(options: BenchOptions) -> BenchResult:
    from processes.batch import BatchExecutor, BatchJob, executors, parse_hosts
    from tests.services.slurm import Cluster, missing_programs

    missing = missing_programs()
    if missing or os.geteuid() != 0:
        raise RuntimeError(f"bench slurm needs root and {', '.join(missing) or 'nothing else'}")
    total = options.n(500, minimum=20)
    tracked = options.n(1000, minimum=40)
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        cluster = Cluster(Path(directory) / "cluster")
        await asyncio.to_thread(cluster.start)
        try:
            await asyncio.to_thread(Path(cluster.work_dir).mkdir, parents=True, exist_ok=True)
            hosts = parse_hosts({"cluster": cluster.host_table(poll_interval=1.0)})
            ours: list[float] = []
            raw: list[float] = []
            polls_per: list[float] = []
            connections = 0
            for repeat in range(min(options.repeats, 3)):
                raw.append(await _baseline(cluster, total))
                await asyncio.to_thread(cluster.slurm.run, "scancel", "--user=root")
                made = executors(hosts, Path(directory) / f"state{repeat}")
                executor = made["batch.submit"]
                assert isinstance(executor, BatchExecutor)
                host = Node(
                    machines=[BatchJob(hosts)],
                    executors=made,
                    store=os.path.join(directory, f"store{repeat}.db"),
                    kill_grace=10.0,
                )
                await host.start()
                settings = {"host": "cluster", "argv": ["true"], "options": ["--hold"]}
                started = time.perf_counter()
                handles = [await host.spawn("batch", settings) for _ in range(total)]
                await asyncio.gather(*(_submitted(h) for h in handles))
                ours.append(total / (time.perf_counter() - started))
                handles += [await host.spawn("batch", settings) for _ in range(tracked - total)]
                await asyncio.gather(*(_submitted(h) for h in handles))
                poller = executor.poller("cluster")
                before = (poller.polls, executor.transport("cluster").commands["squeue"])
                await asyncio.sleep(5.5)  # about five poll intervals of tracking all of them
                polls = poller.polls - before[0]
                commands = executor.transport("cluster").commands["squeue"] - before[1]
                polls_per.append(commands / max(polls, 1))
                connections = max(connections, executor.transport("cluster").connections)
                await asyncio.gather(*(h.kill() for h in handles))
                await host.shutdown(timeout=30)
                await asyncio.to_thread(cluster.slurm.run, "scancel", "--user=root")
        finally:
            await asyncio.to_thread(cluster.stop)
    jobs, baseline = median(ours), median(raw)
    result = BenchResult(
        "slurm",
        {
            "jobs_per_s": jobs,
            "baseline_per_s": baseline,
            "ratio": jobs / baseline,
            "ssh_connections": float(connections),
            "status_commands_per_poll": median(polls_per),
        },
    )
    result.lines = [
        f"{total} held jobs submitted by {total} batch processes vs a sequential sbatch loop over one asyncssh "
        f"connection; then {tracked} jobs tracked for ~5 poll intervals (medians of {len(raw)})",
        "a throwaway single-node Slurm + sshd on loopback",
    ]
    return result
