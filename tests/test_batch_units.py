"""The batch kind's pure parts: scheduler parsers on documented outputs, the job-state model,
host and job settings validation, the job script, the simulated cluster, and ctx.pause."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from processes.batch import (
    LSF,
    PBS,
    SGE,
    BatchJob,
    JobState,
    SimulatedBatch,
    Slurm,
    advance,
    job_script,
    parse,
    parse_hosts,
)
from supervisor import Cast, Context, Control, ControlEvent, Input, Lifecycle, Machine, Node, SettingsError, Simulation
from tests.helpers import wait_until

DATA = Path(__file__).parent / "data" / "schedulers"


def test_slurm_status_parser_maps_states_and_holds() -> None:
    """squeue lines map onto the five states; a JobHeld reason is a hold; array elements skip."""
    jobs = Slurm().parse_status((DATA / "slurm_squeue.txt").read_text())
    assert {j: s.state for j, s in jobs.items()} == {
        "101": JobState.ACTIVE,
        "102": JobState.QUEUED,
        "103": JobState.COMPLETED,
        "104": JobState.CANCELED,
    }
    assert jobs["102"].held


def test_slurm_commands_set_their_output_format_explicitly() -> None:
    """Every status command names its format, so SQUEUE_FORMAT in a login shell cannot break it."""
    slurm = Slurm()
    assert any(a.startswith("--format=") for a in slurm.status(["1", "2"]))
    assert any(a.startswith("--format=") for a in slurm.find("sv-x"))
    assert any(a.startswith("--format=") for a in slurm.accounting(["1"]))
    assert slurm.parse_submit("42;cluster\n") == "42"
    with pytest.raises(ValueError, match="no job id"):
        slurm.parse_submit("sbatch: error: invalid partition\n")
    with pytest.raises(ValueError, match="unknown Slurm job state"):
        slurm.parse_status("1|EXPLODED|None\n")


def test_slurm_accounting_parser_reads_exit_codes() -> None:
    """sacct's JobID|State|ExitCode lines give the exit code; "CANCELLED by 0" is cancelled."""
    jobs = Slurm().parse_accounting("7|COMPLETED|0:0\n8|FAILED|3:0\n9|CANCELLED by 0|0:15\n")
    assert (jobs["7"].state, jobs["7"].exit_code) == (JobState.COMPLETED, 0)
    assert (jobs["8"].state, jobs["8"].exit_code) == (JobState.FAILED, 3)
    assert jobs["9"].state is JobState.CANCELED


def test_pbs_parser_reads_qstat_f_blocks() -> None:
    """qstat -f blocks (PBS Pro and Torque): states, holds, exit status, wrapped values."""
    jobs = PBS().parse_status((DATA / "pbs_qstat_f.txt").read_text())
    assert jobs["1234.pbs01"].state is JobState.ACTIVE
    assert jobs["1235.pbs01"].state is JobState.QUEUED
    assert jobs["1235.pbs01"].held
    assert (jobs["1236.pbs01"].state, jobs["1236.pbs01"].exit_code) == (JobState.COMPLETED, 0)
    assert (jobs["1237.pbs01"].state, jobs["1237.pbs01"].exit_code) == (JobState.FAILED, 2)
    assert PBS().parse_submit("1234.pbs01\n") == "1234.pbs01"


def test_pbs_parser_reads_slurm_torque_wrapper_output() -> None:
    """qstat -f as Slurm 22.05's Torque wrappers (slurm-wlm-torque) really print it, recorded on
    the loopback Slurm: attributes indented by a tab, not four spaces (a tab line is not taken for
    a wrapped value), no exit status (the job's status file gives it), cancelled jobs shown as C."""
    jobs = PBS().parse_status((DATA / "pbs_slurm-torque_22.05.8_qstat_f.txt").read_text())
    assert {job_id: status.state for job_id, status in jobs.items()} == {
        "1": JobState.COMPLETED,  # exited 3: only its status file says so
        "2": JobState.QUEUED,  # submitted held (qsub -h)
        "3": JobState.ACTIVE,
        "4": JobState.ACTIVE,
        "5": JobState.QUEUED,  # qhold
        "6": JobState.COMPLETED,  # qdel'd while running
    }
    assert all(status.exit_code is None for status in jobs.values())
    assert {status.native for status in jobs.values()} == {"C", "Q", "R"}


def test_lsf_parser_reads_bjobs_o_lines_and_skips_not_found() -> None:
    """bjobs -o "jobid stat exit_code" lines; "Job <N> is not found" mixed in is skipped."""
    jobs = LSF().parse_status((DATA / "lsf_bjobs.txt").read_text())
    assert {j: s.state for j, s in jobs.items()} == {
        "5501": JobState.ACTIVE,
        "5502": JobState.QUEUED,
        "5503": JobState.COMPLETED,
        "5504": JobState.FAILED,
        "5505": JobState.QUEUED,
    }
    assert jobs["5504"].exit_code == 3
    assert jobs["5505"].held
    assert LSF().parse_submit("Job <5501> is submitted to queue <normal>.\n") == "5501"
    assert LSF().unknown_jobs(255, "Job <5599> is not found\n")


def test_sge_parser_reads_qstat_xml_and_finds_by_name() -> None:
    """qstat -xml: running, held and error states; find picks the job by its full name."""
    text = (DATA / "sge_qstat.xml").read_text()
    jobs = SGE().parse_status(text)
    assert jobs["301"].state is JobState.ACTIVE
    assert jobs["302"].state is JobState.QUEUED
    assert jobs["302"].held
    assert jobs["303"].state is JobState.FAILED
    assert SGE().parse_find(text, "sv-111111111111") == ["302"]
    assert SGE().parse_submit("301\n") == "301"
    with pytest.raises(ValueError, match="no XML"):
        SGE().parse_status("error: commlib error")


def test_sge_parser_reads_what_a_real_grid_engine_printed() -> None:
    """qstat -xml as Son of Grid Engine 8.1.9 (Debian 12) really printed it, recorded from the
    loopback Grid Engine the SGE tests run (tests/test_batch_sge.py): running, held, error,
    waiting, and a running job being deleted (``dr``)."""
    jobs = SGE().parse_status((DATA / "sge_8.1.9_qstat.xml").read_text())
    assert {n: (j.state, j.held) for n, j in jobs.items()} == {
        "1": (JobState.ACTIVE, False),
        "2": (JobState.QUEUED, True),
        "3": (JobState.FAILED, False),
        "4": (JobState.QUEUED, False),
    }
    deleting = SGE().parse_status((DATA / "sge_8.1.9_qstat_deleting.xml").read_text())
    assert deleting["1"].state is JobState.CANCELED
    assert deleting["1"].native == "dr"
    assert SGE().parse_find((DATA / "sge_8.1.9_qstat.xml").read_text(), "sv-held") == ["2"]


def test_job_states_never_move_backwards() -> None:
    """A requeued job (PENDING after RUNNING) stays active; a final state is never left."""
    assert advance(JobState.ACTIVE, JobState.QUEUED) is JobState.ACTIVE
    assert advance(JobState.QUEUED, JobState.ACTIVE) is JobState.ACTIVE
    assert advance(JobState.ACTIVE, JobState.COMPLETED) is JobState.COMPLETED
    assert advance(JobState.COMPLETED, JobState.QUEUED) is JobState.COMPLETED
    assert advance(JobState.CANCELED, JobState.COMPLETED) is JobState.CANCELED


def test_host_tables_are_validated_with_the_key_named() -> None:
    """Unknown keys, wrong types, unknown schedulers, missing or cyclic jump hosts are refused
    with the host and key named."""
    good = {"address": "login.example.org", "user": "alice", "scheduler": "slurm"}
    assert parse_hosts({"a": good})["a"].port == 22
    cases = [
        ({"a": {**good, "colour": "red"}}, "host.a.colour"),
        ({"a": {**good, "port": "22"}}, "host.a.port"),
        ({"a": {**good, "scheduler": "torque2"}}, "host.a.scheduler"),
        ({"a": {"user": "alice"}}, "host.a.address"),
        ({"a": {**good, "jump": "b"}}, "host.a.jump"),
        ({"a": {**good, "jump": "b"}, "b": {**good, "jump": "a"}}, "host.a.jump"),
        ({"a": {**good, "poll_interval": 0}}, "host.a.poll_interval"),
    ]
    for tables, key in cases:
        with pytest.raises(SettingsError) as caught:
            parse_hosts(tables)  # type: ignore[arg-type]
        assert caught.value.key == key, (tables, caught.value)


def test_job_settings_are_validated_with_the_key_named() -> None:
    """A job needs a host and exactly one of argv and script; options are strings."""
    assert parse({"host": "h", "argv": ["true"]}).argv == ("true",)
    for settings, key in [
        ({"argv": ["true"]}, "host"),
        ({"host": "h"}, "argv"),
        ({"host": "h", "argv": ["x"], "script": "y"}, "argv"),
        ({"host": "h", "argv": "true"}, "argv"),
        ({"host": "h", "argv": ["x"], "options": "--mem=1G"}, "options"),
        ({"host": "h", "argv": ["x"], "stage_in": [["only-one"]]}, "stage_in[0]"),
        ({"host": "h", "argv": ["x"], "walltime": 5}, "walltime"),
    ]:
        with pytest.raises(SettingsError) as caught:
            BatchJob.check_settings(settings)  # type: ignore[arg-type]
        assert caught.value.key == key


def test_the_job_script_records_the_exit_status_and_quotes_arguments(tmp_path: Path) -> None:
    """The generated script runs argv verbatim (no re-splitting), in the work directory, and
    leaves the exit status in <name>.status; script text runs under its own #! line."""
    text = job_script(name="sv-x", comment="c", work_dir=str(tmp_path), argv=["sh", "-c", "echo 'a b' $0; exit 4"])
    done = subprocess.run(["sh"], input=text, capture_output=True, text=True, check=False)
    assert done.returncode == 4
    assert done.stdout.strip() == "a b sh"
    assert (tmp_path / "sv-x.status").read_text().strip() == "4"
    script = job_script(name="sv-y", comment="c", work_dir=str(tmp_path), script="#!/bin/sh\npwd\n")
    done = subprocess.run(["sh"], input=script, capture_output=True, text=True, check=False)
    assert done.stdout.strip() == str(tmp_path)
    assert (tmp_path / "sv-y.status").read_text().strip() == "0"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_batch_submits_each_job_once_across_crashes(seed: int) -> None:
    """In simulation, batch processes under repeated crashes: every job is submitted exactly
    once and every process ends as its job did; same seed, same trace."""
    from processes.batch import HostSpec

    hosts = {"cluster": HostSpec(name="cluster", address="sim")}

    def once() -> tuple[str, SimulatedBatch, dict[str, Lifecycle]]:
        cluster = SimulatedBatch(exit_codes={0: 3.0, 1: 1.0}, queue_time=(0.1, 3.0))
        sim = Simulation([BatchJob(hosts)], seed=seed, executors=cluster.executors)
        pids = [sim.spawn("batch", {"host": "cluster", "argv": ["job", str(n)]}) for n in range(20)]
        for _ in range(5):
            sim.run(40)
            sim.crash()
        sim.run_until_idle()
        return sim.trace_hash, cluster, {pid: sim.lifecycle(pid) for pid in pids}

    trace, cluster, ends = once()
    assert len(cluster.submissions) == 20
    assert set(cluster.submissions.values()) == {1}, "a job was submitted twice"
    assert set(ends.values()) <= {Lifecycle.FINISHED, Lifecycle.FAILED}
    assert Lifecycle.FAILED in ends.values()
    assert trace == once()[0]


class _SelfPausing(Machine[dict[str, Any]]):
    kind = "selfpausing"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast(message="stop"):
                ctx.pause("the host is gone")
            case Control(event=ControlEvent.RESUMED):
                state["resumed"] = state.get("resumed", 0) + 1


async def test_a_machine_can_pause_itself_with_a_reason_and_hears_of_the_resume() -> None:
    """ctx.pause(reason) pauses the process after the commit with that reason; resume lifts it
    and delivers Control(RESUMED), once; a plain pause/resume delivers nothing."""
    host = Node(machines=[_SelfPausing()])
    await host.start()
    try:
        handle = await host.spawn("selfpausing", {})
        await handle.cast("stop")
        await wait_until(lambda: handle.snapshot().paused)
        assert handle.snapshot().pause_reason == "the host is gone"
        await handle.resume()
        await wait_until(lambda: handle.snapshot().state.get("resumed") == 1)
        assert handle.snapshot().pause_reason is None
        await handle.pause()
        await handle.resume()
        before = handle.snapshot().version
        await handle.cast("noop")
        await wait_until(lambda: handle.snapshot().version > before)
        assert handle.snapshot().state["resumed"] == 1
    finally:
        await host.shutdown(timeout=5)


def test_owed_cancels_survive_a_restart_and_a_damaged_file_costs_only_itself(tmp_path: Path) -> None:
    """Owed cancels are written through to their file (a new executor reads them back, one entry
    per target however often it is owed); an unreadable file is logged and starts empty instead
    of stopping the executor."""
    from processes.batch._owed import OwedCancels

    path = tmp_path / "state" / "owed-cancels.json"
    owed = OwedCancels(path)
    owed.add("cluster", "17")
    owed.add("cluster", "17")
    owed.add("other", "late:sv-x:a1")
    assert OwedCancels(path) == {"cluster": ["17"], "other": ["late:sv-x:a1"]}
    path.write_text("{not json")
    assert OwedCancels(path) == {}


async def test_a_poller_that_crashes_fails_its_waits_and_keeps_serving_new_ones() -> None:
    """An unexpected error inside a poll (a bug, not an outage) fails the waits it was serving,
    so their processes hear of it instead of waiting forever; the poller goes on and serves a
    job watched afterwards."""
    from processes.batch import HostSpec
    from processes.batch._poller import HostPoller, JobReport

    poller = HostPoller(HostSpec(name="cluster", address="sim", poll_interval=0.01), None, None)  # type: ignore[arg-type]
    calls: list[int] = []
    moved = JobReport(JobState.ACTIVE, "RUNNING")

    async def poll() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise KeyError("a bug")
        for watch in list(poller._watches.values()):
            if not watch.future.done():
                watch.future.set_result(moved)

    poller.poll = poll  # type: ignore[method-assign]
    with pytest.raises(KeyError, match="a bug"):
        await asyncio.wait_for(poller.wait("1", "job-1", JobState.QUEUED), 5)
    assert moved is await asyncio.wait_for(poller.wait("2", "job-2", JobState.QUEUED), 5)
    await poller.close()
