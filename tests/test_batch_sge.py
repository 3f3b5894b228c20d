"""The batch kind's SGE adapter against a real Grid Engine (Son of Grid Engine 8.1 from Debian,
one host, its own cell and ports; processes/batch/loopback_sge.py) reached over the loopback
sshd: submission, status from qstat -xml, exit codes from the status file, hold/release and
cancel. PBS and LSF cannot run here; SGE can, so its parser is tested on what it really prints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from processes.batch import BatchExecutor
from supervisor import Lifecycle, Node
from tests.helpers import wait_until
from tests.hpc import Cluster, batch_host, spawn_job
from tests.services.sge import GridEngine

pytestmark = pytest.mark.uvloop_only


@pytest.fixture
async def sge_host(
    cluster: Cluster, grid_engine: GridEngine, tmp_path: Path
) -> AsyncIterator[tuple[Node, BatchExecutor]]:
    # The cell's SGE_ROOT/SGE_CELL/ports reach qsub and qstat the way a site's would: the
    # host's env, set on the remote side of every command.
    table = cluster.host_table(scheduler="sge", env=grid_engine.env, poll_interval=0.5)
    host, executor = batch_host({"grid": table}, tmp_path)
    await host.start()
    yield host, executor
    await host.shutdown(timeout=10)


async def test_an_sge_job_runs_to_completion_with_its_exit_code(
    sge_host: tuple[Node, BatchExecutor], cluster: Cluster
) -> None:
    """qsub -terse gives the job number; qstat -xml follows it; once it leaves qstat the status
    file gives exit code 0 and the output is in the work directory."""
    host, executor = sge_host
    handle = await spawn_job(host, ["sh", "-c", "echo hello from sge"], on="grid")
    done = await handle.wait(timeout=90)
    assert done.lifecycle is Lifecycle.FINISHED, done
    assert done.result["state"] == "completed"
    assert done.result["exit_code"] == 0
    out = Path(cluster.work_dir) / f"{handle.snapshot().state['job_name']}.out"
    assert out.read_text().strip() == "hello from sge"
    assert executor.transport("grid").commands["qsub"] == 1


async def test_an_sge_job_that_exits_3_fails_its_process(sge_host: tuple[Node, BatchExecutor]) -> None:
    """A non-zero exit (qstat does not say it; the status file does) fails the process with it."""
    host, _ = sge_host
    handle = await spawn_job(host, ["sh", "-c", "exit 3"], on="grid")
    done = await handle.wait(timeout=90)
    assert done.lifecycle is Lifecycle.FAILED, done
    assert "3" in str(done.error)


async def test_pause_holds_a_pending_sge_job_and_resume_releases_it(
    sge_host: tuple[Node, BatchExecutor], grid_engine: GridEngine
) -> None:
    """A job that may not start for ten minutes (qsub -a) is pending; pausing its process puts
    a user hold on it (qstat state hqw), resuming takes the hold off (qw again)."""
    host, _ = sge_host
    from datetime import datetime, timedelta

    later = (datetime.now() + timedelta(minutes=10)).strftime("%Y%m%d%H%M")
    handle = await spawn_job(host, ["true"], on="grid", options=["-a", later])
    await wait_until(lambda: handle.snapshot().phase == "queued", timeout=60)
    job_id = handle.snapshot().state["job_id"]

    def state() -> str:
        return {number: native for number, native, _ in grid_engine.jobs()}.get(job_id, "")

    await handle.pause()
    await wait_until(lambda: "h" in state(), timeout=20)
    await handle.resume()
    await wait_until(lambda: state() != "" and "h" not in state(), timeout=20)
    await handle.kill()
    await wait_until(lambda: state() == "", timeout=30)


async def test_killing_processes_deletes_their_sge_jobs(
    sge_host: tuple[Node, BatchExecutor], grid_engine: GridEngine
) -> None:
    """Five running sleep jobs: killing their processes qdel's them, and Grid Engine lists none
    of them afterwards."""
    host, _ = sge_host
    handles = [await spawn_job(host, ["sleep", "300"], on="grid") for _ in range(5)]
    await wait_until(lambda: all(h.snapshot().phase == "active" for h in handles), timeout=90)
    ids = {h.snapshot().state["job_id"] for h in handles}
    for handle in handles:
        await handle.kill()
    await wait_until(lambda: not ids & {number for number, _, _ in grid_engine.jobs()}, timeout=60)
