"""Batch jobs in a real daemon against the real loopback Slurm: hosts declared in the
configuration, and a SIGKILL of the daemon in the middle of submitting (every job runs and
completes exactly once, counted by job name in Slurm's own records and by the jobs' outputs)."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest

from supervisor import ProcessRecord, decode_record
from tests.hpc import Cluster
from tests.test_daemon import free_port, kill_if_running, start_daemon, wait_for

JOBS = 40


def write_config(directory: Path, cluster: Cluster) -> tuple[Path, int]:
    port = free_port()
    host = cluster.host_table(poll_interval=0.5)
    lines = [
        "[daemon]",
        'store = "var/store.db"',
        'socket = "var/s.sock"',
        f'metrics = "127.0.0.1:{port}"',
        'log_dir = "var/log"',
        'run_dir = "var/runs"',
        "",
        "[host.cluster]",
        *(f"{key} = {value!r}".replace("True", "true").replace("False", "false") for key, value in host.items()),
        "",
    ]
    markers = directory / "markers"
    for index in range(JOBS):
        # Each run appends to its marker; the job then waits for the release file, so the
        # daemon is killed while jobs are queued, running and still being submitted.
        script = f"echo run >> {markers / str(index)}; while [ ! -e {directory / 'release'} ]; do sleep 0.1; done"
        lines += [
            "[[process]]",
            f'name = "job{index}"',
            'kind = "batch"',
            'restart = "temporary"',
            "[process.settings]",
            'host = "cluster"',
            f"argv = ['sh', '-c', '{script}']",
            "",
        ]
    config = directory / "statevisor.toml"
    config.write_text("\n".join(lines))
    markers.mkdir()
    return config, port


def ended(store: Path) -> dict[str, ProcessRecord]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT record FROM processes WHERE ended IS NOT NULL").fetchall()
    return {decode_record(blob).name.rpartition("/")[2]: decode_record(blob) for (blob,) in rows}


def names_in_slurm(cluster: Cluster) -> list[str]:
    return [name for _, _, name in cluster.slurm.jobs() if name.startswith("sv-")]


@pytest.mark.uvloop_only
def test_daemon_sigkill_mid_submission_runs_every_job_exactly_once(tmp_path: Path, cluster: Cluster) -> None:
    """40 batch processes from the config; the daemon is SIGKILLed once some (not all) jobs are
    in Slurm. After a restart every job is in Slurm exactly once (by name), ran exactly once
    (by its output), and every process finishes with exit code 0."""
    cluster.slurm.run("scancel", "--user=root")
    before = set(names_in_slurm(cluster))
    config, port = write_config(tmp_path, cluster)
    first = start_daemon(config, port)
    try:
        wait_for(lambda: len(set(names_in_slurm(cluster)) - before) >= 5, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        submitted_before_kill = len(set(names_in_slurm(cluster)) - before)
        second = start_daemon(config, port)
    finally:
        kill_if_running(first)
    try:
        markers = tmp_path / "markers"
        wait_for(lambda: len(list(markers.iterdir())) == JOBS, timeout=120)
        (tmp_path / "release").touch()
        store = tmp_path / "var" / "store.db"
        wait_for(lambda: len(ended(store)) == JOBS, timeout=120)
        records = ended(store)
        ours = [name for name in names_in_slurm(cluster) if name not in before]
        assert len(ours) == JOBS, f"{len(ours)} jobs in Slurm for {JOBS} processes"
        assert len(set(ours)) == JOBS, "a job name was submitted twice"
        for index in range(JOBS):
            record = records[f"job{index}"]
            assert "run\n" == (markers / str(index)).read_text(), f"job{index} ran more than once"
            assert "finished" == str(record.lifecycle), f"job{index}: {record.error}"
            assert 0 == record.state["result"]["exit_code"], f"job{index}"
        # The kill must have landed mid-run for this test to mean anything.
        assert 0 < submitted_before_kill < JOBS, f"{submitted_before_kill} of {JOBS} submitted at the kill"
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
