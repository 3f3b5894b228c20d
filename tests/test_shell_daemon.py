"""Shell processes in a real daemon: declared in the configuration, surviving a SIGKILL of the
daemon (re-attached, never re-run, exit codes collected), and tailed with `statevisor logs`."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from processes.shell._proc import stat_fields
from supervisor import decode_record
from tests.test_daemon import ROOT, free_port, kill_if_running, start_daemon, wait_for

COMMANDS = 50


def write_config(directory: Path, commands: int = COMMANDS) -> tuple[Path, int]:
    port = free_port()
    lines = [
        "[daemon]",
        'store = "var/store.db"',
        'socket = "var/s.sock"',
        f'metrics = "127.0.0.1:{port}"',
        'log_dir = "var/log"',
        'run_dir = "var/runs"',
        'loop = "uvloop"',
        "",
    ]
    for index in range(commands):
        marker = directory / "markers" / f"{index}"
        script = (
            f"echo run >> {marker}; echo output of {index}; "
            f"while [ ! -e {directory / 'release'} ]; do sleep 0.05; done; exit {index % 4}"
        )
        lines += [
            "[[process]]",
            f'name = "job{index}"',
            'kind = "shell"',
            'restart = "temporary"',
            "[process.settings]",
            f"argv = ['sh', '-c', '{script}']",
            "success_codes = [0, 1]",
            "",
        ]
    config = directory / "statevisor.toml"
    config.write_text("\n".join(lines))
    (directory / "markers").mkdir()
    return config, port


def ended(store: Path) -> dict[str, object]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT name, record FROM processes WHERE ended IS NOT NULL").fetchall()
    return {decode_record(blob).name.rpartition("/")[2]: decode_record(blob) for _, blob in rows}


def test_commands_survive_a_daemon_sigkill_and_are_collected_exactly_once(tmp_path: Path) -> None:
    """50 commands run; the daemon is SIGKILLed; they keep running. The restarted daemon
    re-attaches to all 50 (none started again), and collects every exit code when they end."""
    config, port = write_config(tmp_path)
    markers = tmp_path / "markers"
    first = start_daemon(config, port)
    try:
        wait_for(lambda: len(list(markers.iterdir())) == COMMANDS, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        second = start_daemon(config, port)
    finally:
        kill_if_running(first)
    try:
        (tmp_path / "release").touch()
        wait_for(lambda: len(ended(tmp_path / "var" / "store.db")) == COMMANDS, timeout=60)
        records = ended(tmp_path / "var" / "store.db")
        for index in range(COMMANDS):
            record = records[f"job{index}"]
            assert "run\n" == (markers / f"{index}").read_text(), f"job{index} ran more than once"
            result = record.state["result"]  # type: ignore[attr-defined]
            assert index % 4 == result["exit_code"], f"job{index}"
            assert [f"output of {index}"] == result["stdout_tail"]
            expected = "finished" if index % 4 in (0, 1) else "failed"
            assert expected == str(record.lifecycle), f"job{index}"  # type: ignore[attr-defined]
        logs = subprocess.run(
            [sys.executable, "-m", "supervisor", "logs", "--socket", str(tmp_path / "var" / "s.sock"), "job7"],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert 0 == logs.returncode, logs.stderr
        assert "output of 7\n" == logs.stdout
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)


def ended_process(pid: int) -> bool:
    """``pid`` is gone, or a zombie (then reaped here: this test process, a child subreaper after
    other tests ran executors in it, may have inherited it from the killed daemon)."""
    fields = stat_fields(pid)
    if fields is None:
        return True
    if fields[0] != b"Z":
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def parents(needle: str) -> set[int]:
    """The parent pids of every process whose command line holds ``needle``."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if needle.encode() not in Path(f"/proc/{entry}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        parent = parent_of(int(entry))
        if parent is not None:
            found.add(parent)
    return found


def test_commands_that_end_while_the_daemon_and_the_monitor_are_dead_keep_their_exit_codes(tmp_path: Path) -> None:
    """The daemon and the run monitor are both SIGKILLed while 20 commands run, and the commands
    end before anything is restarted: the monitor's keeper (its parent) reaps them and records
    their exit status, so the restarted daemon collects every exit code (none lost, none re-run)."""
    commands = 20
    config, port = write_config(tmp_path, commands)
    markers = tmp_path / "markers"
    first = start_daemon(config, port)
    try:
        wait_for(lambda: len(list(markers.iterdir())) == commands, timeout=60)
        (monitor,) = parents(str(markers))  # the commands' parent
        keeper = parent_of(monitor)
        assert keeper is not None
        assert b"_monitor.py" in Path(f"/proc/{keeper}/cmdline").read_bytes(), "the monitor's parent is its keeper"
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        os.kill(monitor, signal.SIGKILL)
        (tmp_path / "release").touch()
        # The keeper exits once it has reaped its monitor and every command it inherited.
        wait_for(lambda: ended_process(keeper), timeout=60)
        second = start_daemon(config, port)
    finally:
        kill_if_running(first)
    try:
        wait_for(lambda: len(ended(tmp_path / "var" / "store.db")) == commands, timeout=60)
        records = ended(tmp_path / "var" / "store.db")
        for index in range(commands):
            result = records[f"job{index}"].state["result"]  # type: ignore[attr-defined]
            assert index % 4 == result["exit_code"], f"job{index}: {result}"
            assert "run\n" == (markers / f"{index}").read_text(), f"job{index} ran more than once"
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)
