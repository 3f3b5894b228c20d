"""`statevisor bench`: every scenario runs and prints the documented JSON (tiny scale).

These tests pin the output contract, not the figures: timing belongs to the benchmarks.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

METRICS = {
    "transitions": {"transitions_per_s", "baseline_per_s", "ratio", "large_state_transitions_per_s"},
    "spawn": {"processes_per_s", "bytes_per_idle_process"},
    "control": {"p50_us", "p99_us"},
    "checkpoint": {
        "durable_transitions_per_s",
        "baseline_per_s",
        "ratio",
        "unwritten_transitions_per_s",
        "unwritten_ratio",
        "no_runtime_transitions_per_s",
        "no_runtime_ratio",
    },
    "recovery": {"restore_seconds", "shutdown_seconds"},
    "sim": {"ledger_transitions_per_s", "booking_transitions_per_s", "ledger_ratio", "booking_ratio"},
    "rpc": {"calls_per_s", "p99_ms", "ratio"},
    "watch-fanout": {"ratio"},
    "shell": {"spawns_per_s", "baseline_per_s", "ratio", "spawning_path_per_s", "spawning_path_ratio"},
    "slurm": {"jobs_per_s", "baseline_per_s", "ratio", "ssh_connections", "status_commands_per_poll"},
    "cloud": {
        "pods_per_s",
        "baseline_per_s",
        "ratio",
        "watch_connections",
        "status_requests_per_pod",
        "requests_per_pod",
    },
    "logapply": {
        "entries_per_s",
        "baseline_per_s",
        "ratio",
        "unwritten_entries_per_s",
        "unwritten_ratio",
        "jetstream_entries_per_s",
        "jetstream_ratio",
        "recovery_seconds",
        "recovery_replay_seconds",
    },
    "web": {"list_page_ms", "baseline_list_page_ms", "list_page_ratio", "live_update_p99_ms", "watched_ratio"},
    "cluster": {
        "durable_transitions_per_s",
        "baseline_per_s",
        "ratio",
        "failover_seconds",
        "remote_call_p99_ms",
        "lost",
        "duplicated",
    },
    "protocol": {"steps_per_s", "baseline_per_s", "ratio", "image_seconds"},
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.parametrize("scenario", sorted(METRICS))
def test_bench_json_has_the_documented_metrics(scenario: str) -> None:
    """`bench <scenario> --json` prints one object with scenario, the issue's metric names
    (finite numbers; rates positive) and the environment."""
    done = run_cli("bench", scenario, "--json", "--scale", "0.01", "--repeats", "1")
    assert 0 == done.returncode, done.stderr
    report = json.loads(done.stdout)
    assert scenario == report["scenario"]
    assert METRICS[scenario] <= set(report["metrics"])
    metrics = report["metrics"]
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    assert all(v > 0 for k, v in metrics.items() if k.endswith("_per_s"))
    assert {"python", "loop", "cpus"} <= set(report["environment"])


def test_bench_text_output_names_the_baseline() -> None:
    """Without --json the report is text for people, and names its baseline."""
    done = run_cli("bench", "transitions", "--scale", "0.01", "--repeats", "1", "--loop", "asyncio")
    assert 0 == done.returncode, done.stderr
    assert "baseline" in done.stdout
    assert "ratio =" in done.stdout


def test_bench_unknown_scenario_is_a_usage_error() -> None:
    """An unknown scenario exits 2 and lists the known ones."""
    done = run_cli("bench", "nonsense")
    assert 2 == done.returncode
    assert "transitions" in done.stderr


def test_bench_help_lists_every_scenario() -> None:
    """`statevisor bench --help` names every scenario the harness runs (it once listed 8 of 11)."""
    from benchmarks import SCENARIOS

    done = run_cli("bench", "--help")
    assert 0 == done.returncode
    listed = " ".join(done.stdout.split())
    assert [name for name in SCENARIOS if name not in listed] == []


def test_every_scenario_has_its_metrics_pinned() -> None:
    """Each scenario the harness runs has its JSON contract checked above (shell and slurm
    once had none)."""
    from benchmarks import SCENARIOS

    assert sorted(SCENARIOS) == sorted(METRICS)
