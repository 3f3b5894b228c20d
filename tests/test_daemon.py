"""`statevisor daemon` end to end: a real process, its store, its metrics, its signals."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import decode_record

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def kill_if_running(child: subprocess.Popen[str]) -> None:
    """SIGKILL and reap ``child`` unless it has ended already (cleanup after a failed step)."""
    if child.poll() is None:
        child.kill()
        child.communicate()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def reachable(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True


def answers(path: Path) -> bool:
    """A daemon listens on the unix socket ``path`` (a dead one's socket file refuses)."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def start_daemon(
    config: Path,
    port: int,
    *,
    stdout: int = subprocess.DEVNULL,
    wrapper: tuple[str, ...] = (),
    metrics_answer: Callable[[int], bool] = reachable,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """`statevisor daemon` on ``config`` (its socket at var/s.sock), once it serves: its metrics
    answer (they are bound first; ``metrics_answer`` asks them) and so does its socket (made
    once its processes started). ``wrapper`` is a command line the daemon runs under
    (``prlimit ...``)."""
    child = subprocess.Popen(
        [*wrapper, sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
        cwd=ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    sock = config.parent / "var" / "s.sock"
    wait_for(lambda: (metrics_answer(port) and answers(sock)) or child.poll() is not None)
    assert child.poll() is None, child.communicate()[1]
    return child


def json_lines(err: str) -> list[dict[str, Any]]:
    """A daemon's stderr off a terminal, every line a JSON log event: a raw line (a library's
    warning printed as text, a traceback) fails here, naming it."""
    events = []
    for line in err.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"a line of the daemon's stderr is not a JSON log event: {line!r}") from None
        assert isinstance(event, dict), line
        events.append(event)
    return events


class Daemon:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.config = directory / "statevisor.toml"
        self.store = directory / "var" / "store.db"
        self.config.write_text(
            f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{self.port}"\n'
            'log_level = "info"\nloop = "asyncio"\n\n'
            '[[process]]\nname = "fast"\nkind = "ticker"\n[process.settings]\ninterval = 0.02\n\n'
            '[[process]]\nname = "after"\nkind = "ticker"\ndepends_on = ["fast"]\n'
        )
        self.child: subprocess.Popen[str] | None = None

    def start(self, metrics_answer: Callable[[int], bool] = reachable) -> None:
        self.child = start_daemon(self.config, self.port, stdout=subprocess.PIPE, metrics_answer=metrics_answer)

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, list[dict[str, Any]]]:
        assert self.child is not None
        self.child.send_signal(signum)
        _, err = self.child.communicate(timeout=30)
        if signum == signal.SIGKILL and not err.endswith("\n"):
            err = err.rpartition("\n")[0]  # killed while writing a line: only that line is cut
        return self.child.returncode, json_lines(err)

    def ticks(self) -> dict[str, int]:
        with sqlite3.connect(self.store) as db:
            rows = db.execute("SELECT name, record FROM processes WHERE ended IS NULL").fetchall()
        return {name: decode_record(blob).state["ticks"] for name, blob in rows}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    running = Daemon(tmp_path)
    yield running
    if running.child is not None and running.child.poll() is None:
        running.child.kill()
        running.child.communicate()


def test_daemon_runs_declared_processes_serves_metrics_and_stops_on_sigterm(daemon: Daemon) -> None:
    """The daemon starts the configured processes, its metrics move as they run, its store and
    state directory are its owner's alone (0600, 0700), and SIGTERM shuts it down cleanly
    (exit 0) with logs on stderr naming what happened, every line a JSON event, the warnings of
    the libraries it imports included."""
    daemon.start()
    first = scrape(daemon.port)["statevisor_transitions_total"]
    wait_for(lambda: scrape(daemon.port)["statevisor_transitions_total"] > first + 5)
    metrics = scrape(daemon.port)
    assert 2 == metrics['statevisor_processes{kind="ticker",lifecycle="waiting"}']
    assert metrics["statevisor_checkpoint_records_total"] > 0
    assert "process_resident_memory_bytes" in metrics
    assert 0 == metrics["statevisor_loop_stalls_total"]  # the loop watchdog runs, and saw no stall
    assert 0 == metrics["statevisor_log_lines_dropped_total"]
    files = {path.name: path.stat().st_mode & 0o777 for path in daemon.store.parent.iterdir()}
    assert {"store.db": 0o600, "store.db-wal": 0o600, "store.db-shm": 0o600, "store.db.lock": 0o600} == {
        name: mode for name, mode in files.items() if name.startswith("store.db")
    }
    assert 0o700 == daemon.store.parent.stat().st_mode & 0o777
    status, logs = daemon.stop()
    assert 0 == status
    events = [line["event"] for line in logs]
    assert ["recovered", "daemon_started", "daemon_stopping", "daemon_stopped"] == [
        e for e in events if e in ("recovered", "daemon_started", "daemon_stopping", "daemon_stopped")
    ]
    assert all(isinstance(line.get("timestamp"), str) for line in logs)
    # Whatever warnings the kinds' libraries print when imported here (asyncssh's about
    # cryptography's DSA, with the locked versions) reach the log as JSON events, not raw text.
    load_kinds = "from supervisor.daemon.plugins import load_catalog; load_catalog({}, {}, lambda table, name: '')"
    raw = subprocess.run([sys.executable, "-c", load_kinds], capture_output=True, text=True, check=True)
    printed = sorted({line.split(": ")[1] for line in raw.stderr.splitlines() if "Warning: " in line})
    logged = sorted({line["category"].rpartition(".")[2] for line in logs if line["event"] == "python_warning"})
    assert printed == logged


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_processes_survive_a_restart_and_keep_counting(daemon: Daemon, how: int) -> None:
    """After a graceful stop or a SIGKILL, the next start revives the same processes (no new
    ones) and they go on from their checkpointed state."""
    daemon.start()
    wait_for(lambda: daemon.store.exists() and daemon.ticks().get("root/fast", 0) >= 5)
    daemon.stop(how)
    before = daemon.ticks()
    daemon.start()
    wait_for(lambda: daemon.ticks()["root/fast"] > before["root/fast"] + 3)
    assert {"root/fast", "root/after"} == set(daemon.ticks())
    status, logs = daemon.stop()
    assert 0 == status
    recovered = [line for line in logs if line["event"] == "recovered"]
    assert 2 == recovered[0]["revived"]


def live_pids(store: Path) -> dict[str, str]:
    with sqlite3.connect(store) as db:
        return dict(db.execute("SELECT name, pid FROM processes WHERE ended IS NULL").fetchall())


def test_sighup_applies_the_difference_and_leaves_the_rest_alone(daemon: Daemon) -> None:
    """SIGHUP: a new process starts, a removed one stops, a changed one restarts (new pid), an
    unchanged one keeps its pid; then an invalid file is refused and the daemon runs on."""
    daemon.config.write_text(daemon.config.read_text() + '\n[[process]]\nname = "steady"\nkind = "ticker"\n')
    daemon.start()
    wait_for(lambda: daemon.store.exists() and len(live_pids(daemon.store)) == 3)
    before = live_pids(daemon.store)
    text = daemon.config.read_text()
    text = text.replace('[[process]]\nname = "after"\nkind = "ticker"\ndepends_on = ["fast"]\n', "")
    text = text.replace("interval = 0.02", "interval = 0.03")
    daemon.config.write_text(text + '\n[[process]]\nname = "fresh"\nkind = "ticker"\n')
    assert daemon.child is not None
    daemon.child.send_signal(signal.SIGHUP)
    wait_for(lambda: {"root/fast", "root/steady", "root/fresh"} == set(live_pids(daemon.store)))
    after = live_pids(daemon.store)
    assert before["root/steady"] == after["root/steady"]
    assert before["root/fast"] != after["root/fast"]
    daemon.config.write_text("[daemon\nbroken")
    daemon.child.send_signal(signal.SIGHUP)
    daemon.child.send_signal(signal.SIGUSR1)
    wait_for(lambda: reachable(daemon.port))
    status, logs = daemon.stop()
    assert 0 == status
    events = [line["event"] for line in logs]
    assert "reloaded" in events
    assert "reload_refused" in events
    reloaded = next(line for line in logs if line["event"] == "reloaded")
    assert (["fresh"], ["after"], ["fast"], 1) == (
        reloaded["added"], reloaded["removed"], reloaded["changed"], reloaded["unchanged"]
    )  # fmt: skip
    stacks = [line for line in logs if line["event"] == "task_stack"]
    assert any("statevisor:" in str(line["task"]) for line in stacks)


def test_the_daemon_serves_its_control_socket_owner_only(daemon: Daemon) -> None:
    """The daemon's control socket is mode 0600, and a client drives a process through it."""
    import asyncio
    import os
    import stat

    from supervisor.control import Client

    daemon.start()
    socket_path = daemon.config.parent / "var" / "s.sock"
    wait_for(socket_path.exists)
    assert 0o600 == stat.S_IMODE(os.stat(socket_path).st_mode)

    async def drive() -> int:
        async with Client.connect(str(socket_path)) as client:
            fast = await client.get("root/fast")
            return int(await fast.call("ticks", timeout=10))

    assert asyncio.run(drive()) >= 0
    status, _ = daemon.stop()
    assert 0 == status
    assert not socket_path.exists()


def test_a_watch_survives_kill_9_of_the_daemon(daemon: Daemon) -> None:
    """Kill -9 the daemon while a client watches: the client sees the disconnect, reconnects
    when the daemon is back, and the same watch goes on with newer versions."""
    import asyncio
    import threading

    from supervisor.control import Client

    daemon.start()
    socket_path = str(daemon.config.parent / "var" / "s.sock")
    wait_for(lambda: Path(socket_path).exists())
    versions: list[int] = []
    first_batch = threading.Event()
    resumed = threading.Event()
    restart_index: list[int] = []

    async def watch() -> None:
        async with Client.connect(socket_path, reconnect_timeout=60) as client:
            handle = await client.get("root/fast")
            async for snapshot in handle.watch():
                versions.append(snapshot.version)
                if len(versions) >= 5:
                    first_batch.set()
                if restart_index and len(versions) >= restart_index[0] + 5:
                    resumed.set()
                    return

    watcher = threading.Thread(target=lambda: asyncio.run(watch()), daemon=True)
    watcher.start()
    assert first_batch.wait(30)
    daemon.stop(signal.SIGKILL)
    restart_index.append(len(versions))
    daemon.start()
    assert resumed.wait(60), f"the watch did not resume: {versions[-10:]}"
    watcher.join(10)
    after = versions[restart_index[0] :]
    assert after == sorted(after)
    assert max(after) > 0


def test_tcp_control_needs_the_token_and_a_private_token_file(daemon: Daemon) -> None:
    """With daemon.tcp set, a client with the token from token_file is served over TCP and a
    wrong token is refused; a token file others can read stops the daemon from starting."""
    import asyncio
    import os

    from supervisor.control import Client, ProtocolError

    token_file = daemon.config.parent / "token"
    token_file.write_text("a-long-enough-secret-token\n")
    os.chmod(token_file, 0o644)
    port = free_port()
    daemon.config.write_text(
        daemon.config.read_text().replace("[daemon]\n", f'[daemon]\ntcp = "127.0.0.1:{port}"\ntoken_file = "token"\n')
    )
    refused = subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(daemon.config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 2 == refused.returncode
    assert "owner only" in refused.stderr
    assert "a-long-enough-secret-token" not in refused.stderr + refused.stdout
    os.chmod(token_file, 0o600)
    daemon.start()

    async def over_tcp(token: str) -> int:
        async with Client.connect_tcp("127.0.0.1", port, token=token) as client:
            return len(await client.list())

    assert 2 == asyncio.run(over_tcp("a-long-enough-secret-token"))
    with pytest.raises(ProtocolError, match="valid token is required"):
        asyncio.run(over_tcp("wrong"))
    status, logs = daemon.stop()
    assert 0 == status
    assert "a-long-enough-secret-token" not in json.dumps(logs)


def test_a_declared_process_past_its_own_budget_is_given_up_and_the_daemon_goes_on(daemon: Daemon) -> None:
    """A declared command that keeps failing, with its own backoff and budget from the config
    (max_restarts = 1), is restarted once and then given up: the metrics count one restart and
    one given-up process, the other declared processes keep running, the daemon stays up and
    logs `child_given_up` naming the process."""
    daemon.config.write_text(
        daemon.config.read_text()
        + '\n[[process]]\nname = "flaky"\nkind = "shell"\nmax_restarts = 1\nperiod = 60\n'
        + "backoff = { initial = 0.05, jitter = 0 }\n"
        + '[process.settings]\nargv = ["/bin/false"]\n'
    )
    daemon.start()
    wait_for(lambda: scrape(daemon.port)["statevisor_children_given_up"] == 1)
    metrics = scrape(daemon.port)
    assert 1 == metrics["statevisor_restarts_total"]
    assert 2 == metrics['statevisor_processes{kind="ticker",lifecycle="waiting"}']
    first = metrics["statevisor_transitions_total"]
    wait_for(lambda: scrape(daemon.port)["statevisor_transitions_total"] > first + 3)  # the tickers go on
    status, logs = daemon.stop()
    assert 0 == status
    given_up = [line for line in logs if line["event"] == "child_given_up"]
    assert ["flaky"] == [line["child"] for line in given_up]
    assert (1, "exited with code 1", "1 restart in 60 s") == (
        given_up[0]["exit_code"], given_up[0]["error"], given_up[0]["budget"]
    )  # fmt: skip
    (restarting,) = [line for line in logs if line["event"] == "child_restarting"]
    assert ("flaky", 1, "exited with code 1", "1 of 1 restart in 60 s") == (
        restarting["child"], restarting["exit_code"], restarting["error"], restarting["budget"]
    )  # fmt: skip


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    """Run a daemon that is expected to refuse to start (it must exit on its own)."""
    return subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_taken_metrics_port_stops_the_start_before_any_process_runs(tmp_path: Path) -> None:
    """A daemon whose metrics address is in use exits 1 saying which address and key, before
    it starts any process (the store holds none) and without leaving its socket behind."""
    daemon = Daemon(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", daemon.port))
        taken.listen()
        refused = run_daemon(daemon.config)
    assert 1 == refused.returncode
    assert f"metrics on 127.0.0.1:{daemon.port} (daemon.metrics): Address already in use" in refused.stderr
    assert "Traceback" not in refused.stderr
    if daemon.store.exists():
        with sqlite3.connect(daemon.store) as db:
            assert [] == db.execute("SELECT name FROM processes").fetchall()
    assert not (tmp_path / "var" / "s.sock").exists()


def test_a_second_daemon_is_refused_and_the_first_goes_on(daemon: Daemon, tmp_path: Path) -> None:
    """A second daemon on the same store exits 1 naming the store and the first daemon's pid;
    one with its own store but the same socket exits 1 saying another daemon serves it, after
    stopping what it had started; a regular file where the socket goes is refused, not deleted.
    The first daemon serves on throughout."""
    daemon.start()
    assert daemon.child is not None
    same = tmp_path / "same.toml"
    same.write_text(daemon.config.read_text().replace(f":{daemon.port}", f":{free_port()}"))
    refused = run_daemon(same)
    assert 1 == refused.returncode
    assert f"in use by another statevisor (pid {daemon.child.pid})" in refused.stderr
    other = tmp_path / "other.toml"
    other.write_text(same.read_text().replace("var/store.db", "var/other.db"))
    refused = run_daemon(other)
    assert 1 == refused.returncode
    assert f"control socket {tmp_path / 'var' / 's.sock'}: another daemon is serving it" in refused.stderr
    with sqlite3.connect(tmp_path / "var" / "other.db") as db:  # it started, then stopped cleanly
        assert {"fast", "after"} <= {name.rpartition("/")[2] for (name,) in db.execute("SELECT name FROM processes")}
    ticks = daemon.ticks()
    wait_for(lambda: daemon.ticks()["root/fast"] > ticks["root/fast"])
    blocker = tmp_path / "blocked.sock"
    blocker.write_text("not a socket")
    blocked = tmp_path / "blocked.toml"
    blocked.write_text(other.read_text().replace("var/s.sock", "blocked.sock").replace("var/other.db", "var/b.db"))
    refused = run_daemon(blocked)
    assert 1 == refused.returncode
    assert f"control socket {blocker}: a file that is not a socket is in the way" in refused.stderr
    assert "not a socket" == blocker.read_text()
    assert 0 == daemon.stop()[0]
