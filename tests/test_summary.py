"""A host in counts (Node.summary, the client's summary, ``statevisor status``): processes by
kind and lifecycle, paused, queued inputs, ended since start, restarts, slots, quarantine."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from supervisor import Node, ProcessFailed, TransitionError
from supervisor._supervision.summary import KindCounts, NodeSummary, SlotCounts
from supervisor.cli.commands import _status_lines
from supervisor.control import Client, ControlServer
from tests.helpers import wait_until
from tests.machines import Counter, Slow, Worker
from tests.test_slots import Counting


async def busy_host(path: Path) -> tuple[Node, Counting, Slow]:
    """Three kinds: counters (one paused, one finished, one failed), workers of which one holds
    the only slot and two wait for it, and a slow one stuck mid-transition with inputs queued."""
    counting, slow = Counting(), Slow()
    host = Node(machines=[Counter, Worker, slow], executors={"work": counting}, slots={"worker": 1}, store=str(path))
    await host.start()
    counters = [await host.spawn(Counter, {"n": 0}) for _ in range(4)]
    for handle in counters:
        await handle.call("get")  # through its first transition: running
    await counters[0].pause()
    await counters[1].call("finish")
    with pytest.raises(ProcessFailed):
        await counters[2].call("fail")
    workers = [await host.spawn(Worker, {}) for _ in range(3)]
    for handle in workers:
        await handle.cast(("work", 1))
    await wait_until(lambda: host.runtime.slots.statistics()[0].queued == 2)
    stuck = await host.spawn(slow, {})
    await stuck.cast("slow")
    await slow.entered.wait()
    for _ in range(3):
        await stuck.cast("more")
    return host, counting, slow


async def test_the_summary_counts_live_processes_by_kind_and_what_ended_since_start(tmp_path: Path) -> None:
    """One pass gives: per kind, live processes by lifecycle, paused and queued inputs; how many
    ended (finished, failed, killed), how many transitions ran (the runtime's count, from the
    same pass) and how many raised; the slots in use and waited for; the store."""
    host, counting, slow = await busy_host(tmp_path / "s.db")
    try:
        with pytest.raises(TransitionError):
            await host.list(kind="counter", paused=False)[0].call("boom")  # rolled back, counted
        summary = host.summary()
        assert 1 == summary.transition_errors
        transitions = host.runtime.statistics().transitions  # its own pass over the processes
        assert transitions > 0
        assert transitions == summary.transitions
        assert KindCounts(created=0, running=2, waiting=0, paused=1, queued_inputs=0) == summary.kinds["counter"]
        assert KindCounts(created=0, running=0, waiting=3, paused=0, queued_inputs=0) == summary.kinds["worker"]
        assert (1, 3) == (summary.kinds["slow"].running, summary.kinds["slow"].queued_inputs)
        assert 6 == summary.live
        assert {"running": 3, "waiting": 3} == summary.by_lifecycle()
        assert {"finished": 1, "failed": 1, "killed": 0} == summary.ended
        assert {"worker": SlotCounts(capacity=1, used=1, queued=2)} == summary.slots
        assert (str(tmp_path / "s.db"), 0, 0) == (summary.store, summary.restarts, summary.quarantined)
        assert summary.started is not None
        assert "<NodeSummary 6 live in 3 kinds, 2 ended>" == repr(summary)
        assert summary == NodeSummary.from_fields(summary.to_fields())
    finally:
        counting.release.set()
        slow.gate.set()
        await host.shutdown(timeout=5)


async def test_the_client_gets_the_same_summary_in_one_small_answer(tmp_path: Path) -> None:
    """Over the control socket the summary arrives whole and equal to the host's own, however
    many processes there are (status used to fetch every snapshot and count them itself)."""
    host, counting, slow = await busy_host(tmp_path / "s.db")
    server = ControlServer(host, str(tmp_path / "c.sock"))
    await server.start()
    client = Client.connect(str(tmp_path / "c.sock"))
    await client.open()
    try:
        remote = await client.summary()
        local = host.summary()
        assert local.kinds == remote.kinds
        assert (local.ended, local.slots, local.store, local.version) == (
            remote.ended, remote.slots, remote.store, remote.version
        )  # fmt: skip
    finally:
        await client.close()
        await server.close()
        counting.release.set()
        slow.gate.set()
        await host.shutdown(timeout=5)


async def test_a_start_that_quarantined_records_says_so_in_the_summary(tmp_path: Path) -> None:
    """A checkpoint that cannot be revived is quarantined at start; the summary (and so status)
    counts it, so an operator sees it without reading the start's log."""
    path = tmp_path / "s.db"
    first = Node(machines=[Counter], store=str(path))
    await first.start()
    for _ in range(3):
        await (await first.spawn(Counter, {"n": 0})).call("get")
    await first.shutdown()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE processes SET record = x'c1' WHERE pid = (SELECT MIN(pid) FROM processes)")
    second = Node(machines=[Counter], store=str(path))
    await second.start()
    try:
        summary = second.summary()
        assert (1, 2) == (summary.quarantined, summary.live)
        assert any(line.startswith("quarantined at start: 1 ") for line in _status_lines(summary, "here", 0.0))
    finally:
        await second.shutdown()


async def test_a_failed_supervisor_is_in_the_summary_with_its_reason() -> None:
    """A root supervisor past its restart budget has stopped supervising: the summary names it
    and why (and so do status and the statevisor_supervisors_failed gauge), so an operator sees
    a daemon that no longer restarts anything without reading its log; older answers without
    the field still load."""
    from supervisor import Budget, Strategy, SupervisorState
    from tests.test_supervisor import crash, pid_of, restarted, spec, started

    host, clock = await started(Strategy.ONE_FOR_ONE, [spec("a")], budget=Budget(1, 60.0))
    try:
        assert {} == host.summary().failed_supervisors
        first = pid_of(host, "a")
        await crash(host, "a")
        clock.advance(1.0)
        await restarted(host, "a", first)
        await crash(host, "a", restarts=False)  # the second restart in 60 s: past the budget
        await wait_until(lambda: host.root.state is SupervisorState.FAILED)
        summary = host.summary()
        assert {"root": "restart budget exceeded (1 in 60 s)"} == summary.failed_supervisors
        assert NodeSummary.from_fields(json.loads(json.dumps(summary.to_fields()))) == summary
        fields = summary.to_fields()
        del fields["failed_supervisors"]
        assert {} == NodeSummary.from_fields(fields).failed_supervisors
        expected = "supervisor root FAILED: restart budget exceeded (1 in 60 s); what it supervised is not restarted"
        assert any(line.startswith(expected) for line in _status_lines(summary, "here", 0.0))
    finally:
        await host.shutdown()


def test_status_text_shows_the_daemon_then_a_row_per_kind() -> None:
    """statevisor status for a person: version, address and uptime; totals by lifecycle; a table
    with a row per kind (live, lifecycles, paused, queued inputs, slots); what ended since start."""
    summary = NodeSummary(
        version="9.9", started=1000.0,
        kinds={"shell": KindCounts(running=5, waiting=2, paused=1, queued_inputs=4), "ticker": KindCounts(created=1)},
        ended={"finished": 7, "failed": 1, "killed": 0}, restarts=3, given_up=1,
        slots={"shell": SlotCounts(capacity=8, used=5, queued=2)}, store="/var/s.db",
    )  # fmt: skip
    lines = _status_lines(summary, "unix:/run/s.sock", 1000.0 + 2 * 3600 + 5 * 60)
    assert "daemon: statevisor 9.9 at unix:/run/s.sock, up 2h 5m" == lines[0]
    assert "processes: 8 live (5 running, 2 waiting, 1 created), 1 paused" == lines[1]
    assert lines[2].split() == ["KIND", "LIVE", "LIFECYCLES", "PAUSED", "QUEUED", "SLOTS"]
    assert lines[3].split() == ["shell", "7", "5", "running,", "2", "waiting", "1", "4", "5/8,", "2", "waiting"]
    assert lines[4].split() == ["ticker", "1", "1", "created", "0", "0", "-"]
    assert "since start: 7 finished, 1 failed, 0 killed; 3 restarts, 1 children given up" == lines[5]
    assert "store: /var/s.db" == lines[-1]


async def test_status_of_a_daemon_from_before_summary_counts_a_listing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an upgrade of the package under a running daemon, status still answers: a daemon
    that does not know ``summary`` gets its processes counted from a listing, and status says
    the daemon is older."""
    from supervisor.cli.commands import _operate, target
    from supervisor.cli.main import build_parser
    from supervisor.control._ops import OPS

    monkeypatch.delitem(OPS, "summary")
    host = Node(machines=[Counter])
    await host.start()
    for _ in range(2):
        await (await host.spawn(Counter, {"n": 0})).call("get")
    socket = str(tmp_path / "c.sock")
    server = ControlServer(host, socket)
    await server.start()
    try:
        args = build_parser().parse_args(["status", "--json", "--socket", socket])
        assert 0 == await _operate(args, target(args))
    finally:
        await server.close()
        await host.shutdown()
    out, err = capsys.readouterr()
    assert (2, {"running": 2}) == (json.loads(out)["processes"], json.loads(out)["by_lifecycle"])
    assert "predates status counts" in err
