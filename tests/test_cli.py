"""The command line over a running daemon: tables, --json, and exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.test_daemon import ROOT, Daemon, daemon, wait_for  # noqa: F401 - the fixture

__all__ = ["daemon"]


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--config", str(daemon.config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_ps_spawn_inspect_pause_resume_kill(daemon: Daemon) -> None:
    """ps lists the declared processes (table and JSON); spawn starts one from JSON state;
    inspect shows its state; pause/resume/kill change it; each exits 0."""
    daemon.start()
    table = cli(daemon, "ps")
    assert 0 == table.returncode, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["PID", "NAME", "KIND", "LIFECYCLE"]
    assert "root/fast" in table.stdout
    listed = json.loads(cli(daemon, "ps", "--json").stdout)
    assert {"root/fast", "root/after"} == {p["name"] for p in listed}

    spawned = cli(daemon, "spawn", "ticker", "--state", '{"interval": 60}', "--name", "adhoc")
    assert 0 == spawned.returncode, spawned.stderr
    pid = spawned.stdout.strip()
    shown = json.loads(cli(daemon, "inspect", "adhoc", "--json").stdout)
    assert (pid, 60, "waiting") == (shown["pid"], shown["state"]["interval"], shown["lifecycle"])
    assert 0 == cli(daemon, "pause", pid).returncode
    assert json.loads(cli(daemon, "inspect", pid, "--json").stdout)["paused"] is True
    assert 0 == cli(daemon, "resume", pid).returncode
    assert 0 == cli(daemon, "nudge", pid).returncode  # automatic mode: accepted, no effect
    assert 0 == cli(daemon, "kill", pid, "--reason", "test").returncode
    assert "adhoc" not in cli(daemon, "ps").stdout
    status = json.loads(cli(daemon, "status", "--json").stdout)
    assert 2 == status["processes"]


def test_watch_follows_a_process_to_its_end(daemon: Daemon) -> None:
    """watch prints snapshots until the process ends (here: killed from another command)."""
    daemon.start()
    pid = cli(daemon, "spawn", "ticker", "--state", '{"interval": 0.05}').stdout.strip()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "watch", pid, "--json", "--config", str(daemon.config)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    assert pid == first["pid"]
    assert 0 == cli(daemon, "kill", pid).returncode
    rest = [json.loads(line) for line in watcher.stdout]
    watcher.stdout.close()
    assert 0 == watcher.wait(timeout=30)
    assert "killed" == rest[-1]["lifecycle"]


def test_exit_codes(daemon: Daemon, tmp_path: Path) -> None:
    """4: no such process; 2: bad --state; 3: no daemon to reach."""
    daemon.start()
    missing = cli(daemon, "kill", "nobody")
    assert 4 == missing.returncode
    assert "no live or recently ended process" in missing.stderr
    assert 2 == cli(daemon, "spawn", "ticker", "--state", "{not json").returncode
    daemon.stop()
    gone = cli(daemon, "ps")
    assert 3 == gone.returncode
    assert "is the daemon running" in gone.stderr or "cannot reach" in gone.stderr
