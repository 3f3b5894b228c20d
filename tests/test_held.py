"""Processes spawned held (``start=False``): they exist, wait for ``start()``, and stay held
across a restart; pause and kill work on them; in process, remotely and from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import Lifecycle, Node, ProcessKilled
from supervisor._core.process import HELD
from supervisor.control import Client, ControlServer
from tests.helpers import wait_for_snapshot
from tests.machines import Counter
from tests.test_cli import cli
from tests.test_daemon import ROOT, Daemon, daemon

__all__ = ["daemon"]


async def test_a_held_process_waits_for_start_and_says_so(tmp_path: Path) -> None:
    """spawn(start=False) checkpoints the process and lists it, created and waiting on its
    start; it handles nothing (a cast waits) until start(), which is idempotent."""
    node = Node(machines=[Counter], store=str(tmp_path / "s.db"))
    await node.start()
    try:
        handle = await node.spawn(Counter, {"n": 0}, name="later", start=False)
        await handle.cast(5)
        snapshot = handle.snapshot()
        assert (Lifecycle.CREATED, (HELD,), 0, 0) == (
            snapshot.lifecycle, snapshot.waiting_on, snapshot.version, snapshot.state["n"]
        )  # fmt: skip
        assert [handle.pid] == [h.pid for h in node.list(lifecycle=Lifecycle.CREATED)]
        await handle.start()
        await handle.start()  # started already: nothing
        assert 5 == await handle.call("get")
        await handle.kill()
    finally:
        await node.shutdown()


async def test_a_held_process_stays_held_across_a_restart_and_a_started_one_does_not(tmp_path: Path) -> None:
    """A restart brings a held process back held (it was never started, so it is not started
    now); once started, its start is durable: the next restart revives it running."""
    db = str(tmp_path / "s.db")
    node = Node(machines=[Counter], store=db)
    await node.start()
    held = await node.spawn(Counter, {"n": 1}, name="held", start=False)
    pid = held.pid
    await node.shutdown()

    node = Node(machines=[Counter], store=db)
    await node.start()
    revived = node.get(pid)
    assert (Lifecycle.CREATED, (HELD,)) == (revived.snapshot().lifecycle, revived.snapshot().waiting_on)
    await revived.start()
    await node.shutdown()

    node = Node(machines=[Counter], store=db)
    await node.start()
    try:
        again = node.get(pid)
        assert 1 == await again.call("get")
        assert HELD not in again.snapshot().waiting_on
        await again.kill()
    finally:
        await node.shutdown()


async def test_pause_and_kill_work_on_a_held_process(tmp_path: Path) -> None:
    """A held process can be paused (it then starts paused: nothing is handled until it is
    resumed) and killed (it ends killed, never having run)."""
    node = Node(machines=[Counter], store=str(tmp_path / "s.db"))
    await node.start()
    try:
        paused = await node.spawn(Counter, {"n": 0}, start=False)
        await paused.pause()
        await paused.cast(3)
        await paused.start()
        snapshot = paused.snapshot()
        assert (True, 0) == (snapshot.paused, snapshot.state["n"])
        await paused.resume()
        await wait_for_snapshot(paused, lambda s: s.state["n"] == 3)
        doomed = await node.spawn(Counter, {"n": 0}, start=False)
        final = await doomed.kill("never wanted")
        assert (Lifecycle.KILLED, 0) == (final.lifecycle, (await doomed.statistics()).transitions)
        with pytest.raises(ProcessKilled):
            await doomed.start()
        await paused.kill()
    finally:
        await node.shutdown()


async def test_a_remote_handle_spawns_held_and_starts(tmp_path: Path) -> None:
    """Over the control API, spawn(start=False) and RemoteHandle.start() behave as in process."""
    node = Node(machines=[Counter], store=str(tmp_path / "s.db"))
    await node.start()
    server = ControlServer(node, str(tmp_path / "c.sock"))
    await server.start()
    try:
        async with Client.connect(str(tmp_path / "c.sock")) as client:
            handle = await client.spawn("counter", {"n": 2}, name="remote", start=False)
            assert (HELD,) == (await handle.snapshot()).waiting_on
            await handle.start()
            assert 2 == await handle.call("get")
            await handle.kill()
    finally:
        await server.close()
        await node.shutdown()


def test_spawn_held_and_start_from_the_command_line(daemon: Daemon) -> None:
    """`statevisor spawn KIND --held` spawns it held (ps says what it waits on); `statevisor
    start` starts it; both exit 0."""
    daemon.start()
    spawned = cli(daemon, "spawn", "ticker", "--state", '{"interval": 60}', "--name", "late", "--held")
    assert 0 == spawned.returncode, spawned.stderr
    [listed] = [p for p in json.loads(cli(daemon, "ps", "--json").stdout) if p["name"] == "late"]
    assert ("created", [HELD]) == (listed["lifecycle"], listed["waiting_on"])
    assert 0 == cli(daemon, "start", "late").returncode
    ticks = subprocess.run(
        [sys.executable, "-m", "supervisor", "call", "late", "ticks", "--config", str(daemon.config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (0, "0") == (ticks.returncode, ticks.stdout.strip())
