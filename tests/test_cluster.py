"""A cluster of real daemons on the real 3-node NATS cluster: failover after a SIGKILL under
1,000 processes, a member paused past its lease, a NATS server killed and restarted, a rolling
restart, handles through any daemon following a process that moves, bound processes shown
unreachable, and the cluster in ``ps`` and ``status``.

Every process is a ``stepper`` (tests/cluster_kit.py): each step is a tracked effect applied to
a ledger the daemons share, keyed by the effect and recording the action id that applied it.
"Nothing lost" is every expected effect in the ledger; "nothing done twice" is no effect
applied under two action ids (a re-issued action keeps its id and lands once)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import ProcessFinished, Snapshot, Unavailable
from supervisor.cluster import ClusterSettings
from supervisor.control import Client, RemoteHandle
from tests.cluster_daemons import ROOT, DaemonCluster
from tests.services.nats import NatsCluster

pytestmark = pytest.mark.timeout(420)


@pytest.fixture
def members(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[DaemonCluster]:
    cluster = DaemonCluster(tmp_path, nats_cluster, lease=3.0)
    try:
        yield cluster
    finally:
        cluster.close()


async def until(what: str, check: Any, timeout: float, every: float = 0.2, explain: Any = None) -> float:
    """Poll the coroutine function ``check`` until it is true; the seconds it took. On a
    timeout, ``explain()`` (a coroutine function) says more in the failure."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        try:
            last = await check()
        except (Unavailable, ConnectionError, OSError) as exc:
            last = exc
        if last is True:
            return time.monotonic() - started
        await asyncio.sleep(every)
    more = await explain() if explain is not None else ""
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r}) {more}")


async def listing(client: Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await client.collect("list", chunked=True)
    return found


async def spawn_many(client: Client, count: int, steps: int, pause: float) -> list[str]:
    """``count`` steppers, spawned through ``client``'s daemon (placed across the cluster)."""
    state = {"steps": steps, "pause": pause, "done": 0}
    handles: list[RemoteHandle] = []
    for start in range(0, count, 100):
        batch = [client.spawn("stepper", state) for _ in range(min(100, count - start))]
        handles.extend(await asyncio.gather(*batch))
    return [handle.pid for handle in handles]


def effects_per_process(cluster: DaemonCluster) -> Counter[str]:
    return Counter(pid for pid, _ in cluster.effects())


@pytest.fixture
async def client_a(members: DaemonCluster) -> AsyncIterator[Client]:
    members.start_all()
    async with members.client("a") as client:
        yield client


async def test_a_member_killed_under_1000_processes_is_taken_over_with_nothing_lost_or_done_twice(
    members: DaemonCluster, client_a: Client
) -> None:
    """1,000 processes with tracked effects spread over three members; one is SIGKILLed: every
    process it owned continues on a survivor within 10 s (lease 3 s), all 1,000 finish, and
    the ledger holds every effect exactly once, none applied under a second action id."""
    steps = 8
    pids = await spawn_many(client_a, 1000, steps=steps, pause=0.5)
    owners = {row["pid"]: row["owner"] for row in await listing(client_a)}
    on_b = [pid for pid in pids if owners.get(pid) == "b"]
    assert 200 < len(on_b) < 500, Counter(owners.values())  # placed across all three
    await until("effects applied on b", lambda: _progressed(members, on_b), 60)
    members.kill("b")
    killed = time.monotonic()

    async def all_taken() -> bool:
        rows = {row["pid"]: row for row in await listing(client_a)}
        moved = [rows[pid] for pid in on_b if pid in rows]
        return all(row["owner"] in ("a", "c") and row["reachable"] for row in moved)

    await until("b's processes running on survivors", all_taken, 10.0)
    took = time.monotonic() - killed
    await until("every process finished", lambda: _finished(members, pids, steps), 240, every=1.0)
    assert [] == members.duplicates()
    assert {pid: steps for pid in pids} == dict(effects_per_process(members))
    taken = sum(e.get("taken", 0) for n in ("a", "c") for e in members.events(n) if e.get("event") == "failover")
    assert len([p for p in on_b if p in owners]) >= taken > 0
    print(f"failover of {len(on_b)} processes took {took:.2f} s")


async def _progressed(members: DaemonCluster, pids: list[str]) -> bool:
    applied = effects_per_process(members)
    return sum(1 for pid in pids if applied[pid] >= 1) >= len(pids) // 2


async def _finished(members: DaemonCluster, pids: list[str], steps: int) -> bool:
    applied = effects_per_process(members)
    return all(applied[pid] >= steps for pid in pids)


async def test_a_member_paused_past_its_lease_stops_its_copies_and_rejoins(
    members: DaemonCluster, client_a: Client
) -> None:
    """SIGSTOP of member b for twice its lease: the survivors take its processes; on SIGCONT, b
    finds its lease lost, stops every copy it ran (its writes are refused) and joins again as
    a fresh member, with nothing lost and nothing done twice."""
    steps = 6
    pids = await spawn_many(client_a, 150, steps=steps, pause=0.5)
    owners = {row["pid"]: row["owner"] for row in await listing(client_a)}
    on_b = [pid for pid in pids if owners.get(pid) == "b"]
    assert on_b
    await until("effects applied on b", lambda: _progressed(members, on_b), 60)
    members.signal("b", signal.SIGSTOP)
    try:

        async def taken() -> bool:
            rows = {row["pid"]: row["owner"] for row in await listing(client_a)}
            return all(rows.get(pid) in ("a", "c", None) for pid in on_b)

        await until("b's processes taken while it is stopped", taken, 20)
    finally:
        members.signal("b", signal.SIGCONT)

    def rejoined() -> bool:
        events = [e.get("event") for e in members.events("b")]
        lost = events.index("daemon_lease_lost") if "daemon_lease_lost" in events else None
        return lost is not None and "daemon_started" in events[lost:]

    await until("b to find its lease lost and join again", lambda: _true(rejoined()), 30)
    await until(
        "every process finished", lambda: _finished(members, pids, steps), 180, every=1.0,
        explain=lambda: _unfinished(members, client_a, pids, steps),
    )  # fmt: skip
    assert [] == members.duplicates()
    assert {pid: steps for pid in pids} == dict(effects_per_process(members))
    joined = [e["incarnation"] for e in members.events("b") if e.get("event") == "cluster_joined"]
    assert 2 == len(set(joined))  # a fresh incarnation
    # Whatever b's copies committed after it continued was refused at the store, naming the
    # member that has each process now (whether any did depends on which of its timers ran
    # first: test_cluster_store pins the refusal itself).
    fenced = [e for e in members.events("b") if e.get("event") == "checkpoint_fenced"]
    assert all(e["owner"] in ("a", "c") for e in fenced)


async def _unfinished(members: DaemonCluster, client: Client, pids: list[str], steps: int) -> str:
    applied = effects_per_process(members)
    rows = {row["pid"]: row for row in await listing(client)}
    late = [pid for pid in pids if applied[pid] < steps]
    return "; ".join(f"{pid}: {applied[pid]} effects, {rows.get(pid)}" for pid in late[:5])


async def _true(value: bool) -> bool:
    return value


async def test_the_cluster_goes_on_through_a_nats_server_killed_and_restarted(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    """One of the three NATS servers is SIGKILLed while 150 processes run, and started again
    later: the processes go on meanwhile (effects keep landing), every one finishes, nothing
    is lost or done twice, and no member loses its lease (the default lease outlasts a
    stream's leader election, 4 to 9 s, plus a heartbeat)."""
    cluster = DaemonCluster(tmp_path, nats_cluster, lease=ClusterSettings.lease)
    try:
        cluster.start_all()
        async with cluster.client("a") as client:
            steps = 8
            pids = await spawn_many(client, 150, steps=steps, pause=0.5)
            await until("effects applied", lambda: _progressed(cluster, pids), 60)
            nats_cluster.stop_node(1)
            try:
                before = len(cluster.effects())
                await until("effects landing while a NATS server is down",
                            lambda: _true(len(cluster.effects()) > before + 150), 60)  # fmt: skip
            finally:
                nats_cluster.start_node(1)
                nats_cluster.wait_healthy()
            await until("every process finished", lambda: _finished(cluster, pids, steps), 180, every=1.0)
        assert [] == cluster.duplicates()
        assert {pid: steps for pid in pids} == dict(effects_per_process(cluster))
        for node in cluster.nodes:
            assert not [e for e in cluster.events(node) if e.get("event") == "cluster_lease_lost"], node
    finally:
        cluster.close()


async def test_a_rolling_restart_of_every_member_loses_nothing(members: DaemonCluster, client_a: Client) -> None:
    """Each member in turn stopped (SIGTERM: it leaves, the others take its processes at once)
    and started again, while 150 processes run: every one finishes, nothing lost or done twice."""
    steps = 10
    pids = await spawn_many(client_a, 150, steps=steps, pause=0.4)
    await until("effects applied", lambda: _progressed(members, pids), 60)
    for node in members.nodes:
        assert 0 == members.stop(node)
        members.start(node)
    await until("every process finished", lambda: _finished(members, pids, steps), 180, every=1.0)
    assert [] == members.duplicates()
    assert {pid: steps for pid in pids} == dict(effects_per_process(members))
    left = [e for n in members.nodes for e in members.events(n) if e.get("event") == "cluster_left"]
    assert 3 <= len(left)


async def test_a_handle_through_a_follows_a_process_from_b_through_bs_death_to_its_new_owner(
    members: DaemonCluster, client_a: Client
) -> None:
    """A remote handle on daemon a to a process b owns: its watch goes on through b's SIGKILL
    (new versions arrive from the survivor that took it, none twice) to the end; calls during
    the move are answered or fail with a retryable error (Unavailable); calls after it are
    answered by the new owner."""
    pids = await spawn_many(client_a, 60, steps=30, pause=0.4)
    owners = {row["pid"]: row["owner"] for row in await listing(client_a)}
    pid = next(p for p in pids if owners[p] == "b")
    handle = await client_a.get(pid)
    seen: list[Snapshot] = []

    async def watch() -> None:
        async for snapshot in handle.watch():
            seen.append(snapshot)

    watching = asyncio.ensure_future(watch())
    await until("the watch to show progress", lambda: _true(any(s.state.get("done", 0) >= 2 for s in seen)), 30)
    members.kill("b")
    answers: list[Any] = []
    while not watching.done():
        try:
            answers.append(await handle.call("done", timeout=5))
        except Unavailable as exc:
            answers.append(exc)
        except ProcessFinished:
            break
        await asyncio.sleep(0.2)
    await asyncio.wait_for(watching, 60)
    assert seen[-1].lifecycle.terminal
    assert 30 == seen[-1].result
    versions = [s.version for s in seen]
    assert sorted(set(versions)) == versions  # in order, none twice
    moving = [i for i, a in enumerate(answers) if isinstance(a, Unavailable)]
    assert all(isinstance(a, int | Unavailable) for a in answers)
    assert any(isinstance(a, int) for a in answers[(moving[-1] if moving else 0) :])  # answered by the new owner
    after = [s for s in seen if s.state.get("done", 0) > 2]
    assert after  # the watch went on from the survivor
    new_owner = {row["pid"]: row["owner"] for row in await listing(client_a)}.get(pid)
    assert new_owner in ("a", "c", None)  # None: it has finished


async def test_a_shell_process_stays_with_its_daemon_shown_unreachable_while_it_is_down(
    members: DaemonCluster, client_a: Client
) -> None:
    """A shell process is bound to its machine: when its daemon dies it is listed (from its
    record) as b's and unreachable, not failed, a request for it fails with a retryable
    ProcessUnreachable, its command runs on, and the daemon takes it back when it returns."""
    marker = members.root / "ticks.txt"
    script = (
        "import os, sys, time\n"
        "while True:\n"
        "    open(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\n"
        "    time.sleep(0.1)\n"
    )
    argv = [sys.executable, "-c", script, str(marker)]
    async with members.client("b") as client_b:
        handle = await client_b.spawn("shell", {"argv": argv})
        pid = handle.pid
        await until("the command to run", lambda: _true(marker.exists()), 20)
    members.kill("b")

    async def unreachable() -> bool:
        rows = {row["pid"]: row for row in await listing(client_a)}
        row = rows.get(pid)
        return row is not None and row["owner"] == "b" and row["reachable"] is False

    await until("the shell process listed as unreachable", unreachable, 20)
    with pytest.raises(Unavailable, match="unreachable: its daemon b is down"):
        await (await client_a.get(pid)).call("anything", timeout=2)
    size = marker.stat().st_size
    await until("the command to go on without its daemon", lambda: _true(marker.stat().st_size > size), 10)
    members.start("b")

    async def back() -> bool:
        rows = {row["pid"]: row for row in await listing(client_a)}
        row = rows.get(pid)
        return row is not None and row["owner"] == "b" and row["reachable"] and row["phase"] == "running"

    await until("b to take its shell process back", back, 30)
    size = marker.stat().st_size
    await until("the command to go on", lambda: _true(marker.stat().st_size > size), 10)
    assert 1 == len(set(marker.read_text().split()))  # one command all along: taken back, not started again
    await (await client_a.get(pid)).kill("done")


def test_ps_lists_the_whole_cluster_with_owners_and_status_shows_members_and_leases(members: DaemonCluster) -> None:
    """``statevisor ps`` through any member lists every member's processes with an OWNER
    column; ``statevisor status --json`` has the cluster's members, each with its lease left."""
    members.start_all()

    async def spawn() -> list[str]:
        async with members.client("c") as client:
            return await spawn_many(client, 30, steps=1000, pause=1.0)

    pids = asyncio.run(spawn())

    def cli(node: str, *args: str) -> str:
        config = members.directory(node) / "statevisor.toml"
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", *args, "--config", str(config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout

    table = cli("a", "ps")
    assert "OWNER" in table.splitlines()[0]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert set(pids) <= set(rows)
    assert {"a", "b", "c"} == {rows[pid][-1] for pid in pids}
    status = json.loads(cli("b", "status", "--json"))
    cluster = status["cluster"]
    assert {"a", "b", "c"} == set(cluster["members"])
    assert all(0 < m["lease_left"] <= 3.0 for m in cluster["members"].values())
    assert ("member", "b") == (cluster["standing"], cluster["node"])
    text = cli("a", "status")
    assert "cluster" in text
