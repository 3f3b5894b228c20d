"""The batch kind against a real Slurm reached over a real sshd on loopback (tests/hpc.py):
submission, batched polling, cancel, hold, host keys, unreachable hosts, outages and restarts."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from processes.batch import BatchExecutor
from supervisor import Lifecycle, Node
from tests.helpers import wait_until
from tests.hpc import Cluster, batch_host, spawn_job

pytestmark = pytest.mark.uvloop_only


def make_host(cluster: Cluster, tmp_path: Path, **overrides: Any) -> tuple[Node, BatchExecutor]:
    return batch_host({"cluster": cluster.host_table(**overrides)}, tmp_path)


@pytest.fixture
async def slurm_host(cluster: Cluster, tmp_path: Path) -> AsyncIterator[tuple[Node, BatchExecutor]]:
    host, executor = make_host(cluster, tmp_path)
    await host.start()
    yield host, executor
    await host.shutdown(timeout=10)


async def test_a_job_runs_to_completion_with_its_exit_code(
    slurm_host: tuple[Node, BatchExecutor], cluster: Cluster
) -> None:
    """A job submitted over SSH finishes its process with the job id, state and exit code;
    its output is in the work directory."""
    host, executor = slurm_host
    handle = await spawn_job(host, ["sh", "-c", "echo hello; exit 0"])
    done = await handle.wait(timeout=60)
    assert done.lifecycle is Lifecycle.FINISHED
    assert done.result["state"] == "completed"
    assert done.result["exit_code"] == 0
    out = Path(cluster.work_dir) / f"{handle.snapshot().state['job_name']}.out"
    assert out.read_text().strip() == "hello"
    assert executor.transport("cluster").connections == 1


async def test_a_failing_job_fails_its_process_with_the_exit_code(slurm_host: tuple[Node, BatchExecutor]) -> None:
    """Exit code 3 (read from the status file once squeue forgets the job) fails the process."""
    host, _ = slurm_host
    handle = await spawn_job(host, ["sh", "-c", "exit 3"])
    done = await handle.wait(timeout=60)
    assert done.lifecycle is Lifecycle.FAILED
    assert "exit code 3" in (done.error or "")
    assert done.state["job_state"] == "failed"


async def test_a_script_with_its_own_interpreter_runs(slurm_host: tuple[Node, BatchExecutor], cluster: Cluster) -> None:
    """``script`` text with a #! line runs under that interpreter, in the work directory."""
    host, _ = slurm_host
    handle = await host.spawn(
        "batch", {"host": "cluster", "script": "#!/usr/bin/env python3\nimport os\nprint(os.getcwd())\n"}
    )
    done = await handle.wait(timeout=60)
    assert done.lifecycle is Lifecycle.FINISHED, done.error
    out = Path(cluster.work_dir) / f"{done.state['job_name']}.out"
    assert out.read_text().strip() == cluster.work_dir


async def test_200_jobs_share_one_connection_and_one_status_command_per_poll(
    slurm_host: tuple[Node, BatchExecutor], cluster: Cluster
) -> None:
    """200 processes submit 200 jobs over one SSH connection; every poll is one squeue for all
    tracked jobs; every job runs exactly once (counted by name in Slurm's records)."""
    host, executor = slurm_host
    handles = [await spawn_job(host, ["true"]) for _ in range(200)]
    results = await asyncio.gather(*(h.wait(timeout=110) for h in handles))
    assert all(r.lifecycle is Lifecycle.FINISHED for r in results), [r.error for r in results if r.error][:3]
    transport = executor.transport("cluster")
    assert transport.connections == 1
    poller = executor.poller("cluster")
    assert transport.commands["squeue"] == poller.status_commands - (1 if transport.commands["sacct"] else 0)
    assert transport.commands["squeue"] <= poller.polls
    names = {r.state["job_name"] for r in results}
    counted = [name for _, _, name in cluster.slurm.jobs() if name in names]
    assert sorted(counted) == sorted(names)  # each exactly once


async def test_killing_50_processes_cancels_their_jobs(
    slurm_host: tuple[Node, BatchExecutor], cluster: Cluster
) -> None:
    """Kill cancels each process's job in Slurm (scancel), whether it is pending or running."""
    host, _ = slurm_host
    handles = [await spawn_job(host, ["sleep", "300"]) for _ in range(50)]
    await wait_until(lambda: all("job_id" in h.snapshot().state for h in handles), timeout=60)
    await asyncio.gather(*(h.kill() for h in handles))
    ids = {h.snapshot().state["job_id"] for h in handles}

    def all_cancelled() -> bool:
        states = {job_id: state for job_id, state, _ in cluster.slurm.jobs()}
        return all(states.get(job_id) == "CANCELLED" for job_id in ids)

    await wait_until(all_cancelled, timeout=30)


async def test_pause_holds_a_pending_job_and_resume_releases_it(
    slurm_host: tuple[Node, BatchExecutor], cluster: Cluster
) -> None:
    """Pausing a process whose job is pending holds the job (JobHeldUser); resuming releases it."""
    host, _ = slurm_host
    handle = await spawn_job(host, ["true"], options=["--begin=now+600"])
    await wait_until(lambda: handle.snapshot().phase == "queued", timeout=60)
    job_id = handle.snapshot().state["job_id"]

    def reason() -> str:
        return cluster.slurm.run("squeue", "-h", "-j", job_id, "-o", "%r").stdout.strip()

    await handle.pause()
    await wait_until(lambda: reason() == "JobHeldUser", timeout=20)
    await handle.resume()
    await wait_until(lambda: not reason().startswith("JobHeld"), timeout=20)
    await handle.kill()


async def test_a_wrong_host_key_is_refused_with_a_clear_reason(cluster: Cluster, tmp_path: Path) -> None:
    """A host key that known_hosts does not hold: no connection, no job; the process pauses
    and says why (known_hosts named), and is not retried in a loop."""
    host, executor = make_host(cluster, tmp_path, known_hosts=str(cluster.sshd.wrong_known_hosts()))
    await host.start()
    try:
        handle = await spawn_job(host, ["true"])
        await wait_until(lambda: handle.snapshot().paused, timeout=30)
        reason = handle.snapshot().pause_reason or ""
        assert "known_hosts" in reason, reason
        assert "not the one known" in reason, reason
        assert executor.transport("cluster").connections == 0
        assert executor.transport("cluster").attempts == 1
        assert executor.submitted == 0
    finally:
        await host.shutdown(timeout=10)


async def test_a_host_that_does_not_answer_is_bounded_and_attempts_do_not_pile_up(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A host that accepts TCP but never speaks SSH: 30 processes share each connection attempt
    (a handful in all, not one per process), pause with the reason once the retry budget is
    spent, and kill them all is bounded."""
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    host, executor = make_host(
        cluster, tmp_path, port=port, connect_timeout=0.5, connect_interval=0.2, backoff_max=0.5, retries=2
    )
    await host.start()
    try:
        handles = [await spawn_job(host, ["true"]) for _ in range(30)]
        await wait_until(lambda: all(h.snapshot().paused for h in handles), timeout=60)
        assert "cannot connect" in (handles[0].snapshot().pause_reason or "")
        transport = executor.transport("cluster")
        # Shared and spaced: fewer attempts than processes (each has a budget of 3), however
        # many processes wait on the host.
        assert transport.attempts < len(handles), transport.attempts
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(h.kill() for h in handles))
        assert loop.time() - started < 15
    finally:
        await host.shutdown(timeout=10)
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_jobs_survive_a_30_second_sshd_outage(cluster: Cluster, tmp_path: Path) -> None:
    """sshd stops for 30 s while 20 jobs are tracked: no process fails or pauses; all complete
    once it is back, over a new connection."""
    host, executor = make_host(cluster, tmp_path, retries=30, backoff_max=2.0)
    await host.start()
    try:
        handles = [await spawn_job(host, ["sleep", "5"]) for _ in range(20)]
        await wait_until(lambda: all("job_id" in h.snapshot().state for h in handles), timeout=60)
        cluster.sshd.stop()
        try:
            await asyncio.sleep(30)  # the outage itself: its length is the point of the test
            troubled = [h.state for h in handles if h.snapshot().done or h.snapshot().paused]
            assert not troubled, troubled[:2]
        finally:
            cluster.sshd.start()
        results = await asyncio.gather(*(h.wait(timeout=90) for h in handles))
        assert all(r.lifecycle is Lifecycle.FINISHED for r in results), [r.error for r in results]
        assert executor.transport("cluster").connections >= 2
        assert executor.submitted == 20
    finally:
        await host.shutdown(timeout=10)


async def test_a_frozen_sshd_mid_submission_submits_every_job_exactly_once(cluster: Cluster, tmp_path: Path) -> None:
    """sshd and every session it serves are frozen (SIGSTOP, as a host stuck in I/O) for 12 s
    while 20 jobs are being submitted, then thawed: the frozen submissions complete late, after
    the daemon gave up on their connection (keepalives) and reconnected. Every process
    finishes and every job is in Slurm exactly once by name: a submission that landed late is
    found, never made again."""
    host, executor = make_host(cluster, tmp_path)
    await host.start()
    try:
        handles = [await spawn_job(host, ["sleep", "1"]) for _ in range(20)]
        await wait_until(lambda: executor.submitted >= 3, timeout=60)
        frozen = cluster.sshd.freeze()
        try:
            await asyncio.sleep(12)  # the freeze itself: longer than keepalives take to notice
        finally:
            cluster.sshd.thaw(frozen)
        results = await asyncio.gather(*(h.wait(timeout=120) for h in handles))
        assert all(r.lifecycle is Lifecycle.FINISHED for r in results), [r.error for r in results]
        names = Counter(name for _, _, name in cluster.slurm.jobs())
        ours = [h.snapshot().state["job_name"] for h in handles]
        assert {name: 1 for name in ours} == {name: names[name] for name in ours}
        assert 20 == executor.submitted + executor.found_existing
        assert executor.transport("cluster").connections >= 2
    finally:
        await host.shutdown(timeout=10)


async def test_jobs_survive_a_slurmctld_restart(slurm_host: tuple[Node, BatchExecutor], cluster: Cluster) -> None:
    """slurmctld restarts while jobs are tracked: the failed polls are retried and every job
    completes; none is submitted twice."""
    host, executor = slurm_host
    handles = [await spawn_job(host, ["sleep", "3"]) for _ in range(20)]
    await wait_until(lambda: all("job_id" in h.snapshot().state for h in handles), timeout=60)
    cluster.slurm.stop_controller()
    await wait_until(lambda: executor.poller("cluster").failures > 0, timeout=30)
    cluster.slurm.start_controller()
    results = await asyncio.gather(*(h.wait(timeout=90) for h in handles))
    assert all(r.lifecycle is Lifecycle.FINISHED for r in results), [r.error for r in results]
    assert executor.submitted == 20


async def test_files_are_staged_up_and_down_with_their_checksums(
    slurm_host: tuple[Node, BatchExecutor], tmp_path: Path
) -> None:
    """stage_in uploads before submission, stage_out downloads after the end (SFTP, size and
    SHA-256 checked); the job sees and writes the files in its work directory."""
    host, _ = slurm_host
    source = tmp_path / "input.bin"
    source.write_bytes(bytes(range(256)) * 4000)
    back = tmp_path / "output.bin"
    handle = await host.spawn(
        "batch",
        {
            "host": "cluster",
            "argv": ["sh", "-c", "cat staged-input.bin staged-input.bin > staged-output.bin"],
            "stage_in": [[str(source), "staged-input.bin"]],
            "stage_out": [["staged-output.bin", str(back)]],
        },
    )
    done = await handle.wait(timeout=60)
    assert done.lifecycle is Lifecycle.FINISHED, done.error
    assert back.read_bytes() == source.read_bytes() * 2


async def test_a_cancel_during_an_in_flight_submit_cancels_the_job_that_lands_after_it(
    slurm_host: tuple[Node, BatchExecutor], cluster: Cluster
) -> None:
    """A kill that comes while sbatch is in flight (the submit's journal entry exists, no job
    id yet, and Slurm does not know the name yet) keeps looking for that name: the job sbatch
    then creates is cancelled, and the watch is dropped once it has been."""
    from processes.batch._executor import SUBMIT
    from processes.batch._schedulers import job_name
    from supervisor import TrackedAction

    _, executor = slurm_host
    action_id = "late-pid:submit:1"
    name = job_name(action_id)
    action = TrackedAction(action_id, SUBMIT, {"host": "cluster", "name": name}, "late-pid")
    journal = executor.submits.journal_path(action_id)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text("")  # what _submit leaves just before it runs sbatch
    await executor.cancel(action)
    assert [t for t in executor.owed.get("cluster", []) if t.startswith(f"late:{name}:")]
    landed = cluster.slurm.run("sbatch", "--parsable", f"--job-name={name}", "--output=/dev/null", "--wrap=sleep 300")
    assert 0 == landed.returncode, landed.stderr
    job_id = landed.stdout.strip().split(";")[0]

    def cancelled() -> bool:
        states = {found: state for found, state, _ in cluster.slurm.jobs()}
        return states.get(job_id) == "CANCELLED" and "cluster" not in executor.owed

    await wait_until(cancelled, timeout=30)
