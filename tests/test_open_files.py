"""The open-files limit: the daemon raises its own soft limit to the hard one, warns when that
cannot cover its connections, and the commands it starts get the limit it was started with."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor._files import open_files
from supervisor.lowlevel import OpenFilesLimit, open_files_for_children, raise_open_files_limit
from tests.test_daemon import ROOT, free_port, kill_if_running, start_daemon, wait_for

_PROBE = """
import json, resource
from supervisor import open_files_for_children, raise_open_files_limit
first = raise_open_files_limit()
second = raise_open_files_limit()
print(json.dumps({
    "first": [first.before, first.after, first.hard, first.error],
    "second": [second.before, second.after],
    "now": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
    "children": open_files_for_children(),
}))
"""


def probe(soft: int, hard: int) -> dict[str, list[int] | int | None]:
    done = subprocess.run(
        ["prlimit", f"--nofile={soft}:{hard}", sys.executable, "-c", _PROBE],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    result: dict[str, list[int] | int | None] = json.loads(done.stdout)
    return result


def test_the_soft_limit_is_raised_to_the_hard_one_and_the_given_one_is_kept_for_children() -> None:
    """A program started with 256 of 4,096 runs with 4,096; its children are to get 256 back,
    also after a second call (which changes nothing and must not forget the first limit)."""
    result = probe(256, 4096)
    assert [256, 4096, 4096, None] == result["first"]
    assert [4096, 4096] == result["second"]
    assert [4096, 4096] == result["now"]
    assert 256 == result["children"]


def test_a_limit_already_at_the_hard_one_is_left_alone() -> None:
    """Nothing to raise: nothing changes, and children inherit the limit as it is (None)."""
    result = probe(4096, 4096)
    assert [4096, 4096, 4096, None] == result["first"]
    assert result["children"] is None


def test_a_refused_raise_keeps_the_limit_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sandbox that refuses setrlimit: the old limit stays, the error is reported, and children
    are not told to lower theirs."""

    def refuse(which: int, limits: tuple[int, int]) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 4096))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    limit = raise_open_files_limit()
    assert (256, 256, 4096) == (limit.before, limit.after, limit.hard)
    assert limit.error is not None
    assert "not permitted" in limit.error
    assert open_files_for_children() is None


def test_short_of_counts_the_daemons_own_descriptors() -> None:
    """A limit must cover the control connections plus the daemon's own descriptors."""
    assert OpenFilesLimit(1024, 1024, 1024).short_of(1024)
    assert not OpenFilesLimit(1024, 1024 + open_files.RESERVED, 1 << 20).short_of(1024)


def test_the_daemon_raises_its_limit_warns_when_short_and_gives_commands_the_old_one(tmp_path: Path) -> None:
    """A daemon started with 512 of 1,000 open files runs with 1,000, logs both, warns that
    1,000 cannot serve daemon.max_connections (1,024); a command it starts sees 512."""
    port = free_port()
    config = tmp_path / "statevisor.toml"
    config.write_text(
        f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{port}"\n'
        'log_dir = "var/log"\nrun_dir = "var/runs"\nlog_level = "info"\n\n'
        '[[process]]\nname = "limits"\nkind = "shell"\nrestart = "temporary"\n[process.settings]\n'
        "argv = ['sh', '-c', 'echo $(ulimit -Sn) $(ulimit -Hn)']\n"
    )
    daemon = start_daemon(config, port, stdout=subprocess.PIPE, wrapper=("prlimit", "--nofile=512:1000"))
    try:
        output = tmp_path / "var" / "log" / "root" / "limits.out.log"
        wait_for(lambda: output.exists() and output.read_text().endswith("\n"), timeout=60)
        assert "512 1000\n" == output.read_text()
        limits = Path(f"/proc/{daemon.pid}/limits").read_text()
        (line,) = [row for row in limits.splitlines() if row.startswith("Max open files")]
        assert ["1000", "1000"] == line.split()[3:5]
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=30)
    finally:
        kill_if_running(daemon)
    events = {entry["event"]: entry for entry in map(json.loads, err.splitlines()) if isinstance(entry, dict)}
    assert (512, 1000) == (events["open_files_limit_raised"]["before"], events["open_files_limit_raised"]["after"])
    assert (1000, 1024) == (events["open_files_limit_low"]["limit"], events["open_files_limit_low"]["max_connections"])
