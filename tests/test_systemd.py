"""systemd's notify protocol: READY once the daemon serves, WATCHDOG pings from its event loop,
STOPPING on the way out; nothing at all outside systemd; the variables not passed on."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.daemon.systemd import SystemdNotifier
from tests.test_daemon import ROOT, Daemon, daemon, kill_if_running

__all__ = ["daemon"]  # the fixture, used by name


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[socket.socket]:
    """A stand-in for systemd's end of the protocol: a datagram socket that receives."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(30)
    yield sock
    sock.close()


def test_the_variables_are_read_and_removed_and_a_watchdog_for_another_pid_is_ignored() -> None:
    """from_environment takes NOTIFY_SOCKET and the watchdog's interval out of the environment
    (commands the daemon starts must not notify in its name); a WATCHDOG_PID of another
    process means the watchdog is not ours; without NOTIFY_SOCKET nothing is sent."""
    environ = {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid()), "A": "1"}
    notifier = SystemdNotifier.from_environment(environ)
    assert ("/run/x.sock", 4.0) == (notifier.address, notifier.watchdog_seconds)
    assert {"A": "1"} == environ
    other = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_seconds is None
    outside = SystemdNotifier.from_environment({})
    outside.ready("fine")
    assert (None, 0) == (outside.address, outside.sent)


async def test_messages_reach_the_socket_and_the_watchdog_pings_at_half_its_interval(
    manager: socket.socket,
) -> None:
    """ready and stopping send one datagram each; keep_alive pings WATCHDOG=1 from the loop
    until cancelled; a socket that went away is reported once and never raises."""
    notifier = SystemdNotifier(manager.getsockname(), watchdog_seconds=0.1)
    notifier.ready("3 processes")
    assert b"READY=1\nSTATUS=3 processes" == manager.recv(256)
    pinging = asyncio.ensure_future(notifier.keep_alive())
    loop = asyncio.get_running_loop()
    try:
        pings = [await loop.run_in_executor(None, manager.recv, 256) for _ in range(3)]
    finally:
        pinging.cancel()
        await asyncio.gather(pinging, return_exceptions=True)
    assert [b"WATCHDOG=1"] * 3 == pings
    notifier.stopping()
    assert manager.recv(256).startswith(b"STOPPING=1")
    gone = SystemdNotifier(str(Path(manager.getsockname()).parent / "gone.sock"))
    gone.ready("x")
    gone.ready("y")
    assert 0 == gone.sent


def test_the_daemon_notifies_ready_pings_and_stopping_and_its_commands_do_not_see_the_socket(
    daemon: Daemon, manager: socket.socket, tmp_path: Path
) -> None:
    """Under Type=notify with WatchdogSec: READY=1 comes once the daemon serves its socket,
    WATCHDOG=1 follows, STOPPING=1 on SIGTERM; a shell command it starts has no NOTIFY_SOCKET."""
    seen = tmp_path / "env.txt"
    daemon.config.write_text(
        daemon.config.read_text().replace("[[process]]", 'log_dir = "var/log"\nrun_dir = "var/runs"\n\n[[process]]', 1)
        + '\n[[process]]\nname = "env"\nkind = "shell"\nrestart = "temporary"\n[process.settings]\n'
        + f"argv = ['sh', '-c', 'env > {seen}']\n"
    )
    environment = {**os.environ, "NOTIFY_SOCKET": manager.getsockname(), "WATCHDOG_USEC": "400000"}
    child = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(daemon.config)],
        cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        messages: list[bytes] = []
        while not any(m.startswith(b"READY=1") for m in messages):
            messages.append(manager.recv(256))
        assert (daemon.config.parent / "var" / "s.sock").exists()  # ready means serving
        assert b"WATCHDOG=1" == manager.recv(256)
        child.send_signal(signal.SIGTERM)
        while not messages[-1].startswith(b"STOPPING=1"):
            messages.append(manager.recv(256))
        assert 0 == child.wait(timeout=30)
    finally:
        kill_if_running(child)
    assert seen.exists()
    assert "NOTIFY_SOCKET" not in seen.read_text()
    assert "WATCHDOG_USEC" not in seen.read_text()
