"""The log-apply kind on a real 3-node NATS JetStream cluster: replicas in three real daemons
converge under a NATS server SIGKILL and a daemon SIGKILL; replicas resume from their applied
index after NATS restarts; a stale writer is fenced off; retried appends land once."""

from __future__ import annotations

import asyncio
import itertools
import signal
from pathlib import Path
from typing import Any

import pytest

from processes.logapply import JetStreamEntryLog, KeyValue, LogApplyClient, Replica, SnapshotStore
from processes.logapply._entry_log import CLOSE_GRACE
from processes.logapply.errors import EntryLogError, EntryRejected, StaleWriter
from supervisor.control import Client
from tests.helpers import wait_for_snapshot, wait_until
from tests.services.nats import NatsCluster
from tests.test_daemon import free_port, start_daemon

pytestmark = pytest.mark.uvloop_only

_streams = itertools.count()


def stream_name() -> str:
    return f"t{next(_streams)}x{free_port()}"


async def test_retried_appends_land_once_and_a_stale_writer_is_fenced(nats_cluster: NatsCluster) -> None:
    """An append retried under the same message id returns the first index and adds nothing;
    a second incarnation of the same writer appends fine, after which the first incarnation's
    next append is refused as a stale writer."""
    stream = stream_name()
    first = JetStreamEntryLog(nats_cluster.urls, stream, writer="w1")
    await first.open()
    index = await first.append(b"a", "id-1")
    assert index == await first.append(b"a", "id-1")
    assert (1, 1) == await first.bounds()
    second = JetStreamEntryLog(nats_cluster.urls, stream, writer="w1")  # the same daemon, restarted
    await second.open()
    assert 2 == await second.append(b"b", "id-2")
    with pytest.raises(StaleWriter, match="another daemon running with the same writer name"):
        await first.append(b"c", "id-3")
    assert (1, 2) == await second.bounds()
    await first.close()
    await second.close()


async def test_an_entry_larger_than_the_servers_take_is_refused_at_once(nats_cluster: NatsCluster) -> None:
    """An entry over the servers' max_payload is refused at once with the sizes, not retried
    until the append timeout (it would fail the same way each time); the log goes on."""
    log = JetStreamEntryLog(nats_cluster.urls, stream_name(), writer="w1", append_timeout=30.0)
    await log.open()
    with pytest.raises(EntryRejected, match="does not fit the servers' max_payload"):
        await asyncio.wait_for(log.append(b"x" * (2 << 20), "big"), 5)
    assert 1 == await log.append(b"small", "small")
    await log.close()


async def test_an_append_given_up_on_that_lands_later_is_not_taken_for_a_stale_writer(
    nats_cluster: NatsCluster,
) -> None:
    """Every NATS server is frozen (SIGSTOP) during an append: it gives up with a clear error,
    but its publish is still on its way and lands when they resume. The writer's next append
    finds that entry (its own message id) at the end of its lane and goes on after it, instead
    of stopping the log as if another daemon wrote with its name."""
    stream = stream_name()
    log = JetStreamEntryLog(nats_cluster.urls, stream, writer="w1", lanes=1)
    await log.open()
    log.append_timeout = 1.0  # after open: opening waits for the cluster as long as it takes
    try:
        assert 1 == await log.append(b"a", "id-a")
        servers = [child for child in nats_cluster.children if child is not None]
        for server in servers:
            server.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(EntryLogError, match=r"append gave up after 1\.0 s"):
                await log.append(b"b", "id-b")
        finally:
            for server in servers:
                server.send_signal(signal.SIGCONT)
            await asyncio.to_thread(nats_cluster.wait_healthy)
        async with asyncio.timeout(30):
            while (await log.bounds())[1] < 2:  # noqa: ASYNC110 - the stream's end raises no event here
                await asyncio.sleep(0.05)
        assert 3 == await log.append(b"c", "id-c")
    finally:
        await log.close()


async def test_close_is_bounded_while_every_server_is_frozen_mid_append(nats_cluster: NatsCluster) -> None:
    """Every NATS server is frozen (SIGSTOP) while an append is in flight: close() still returns
    within its bound (two grace periods and a margin), and the append fails as closed instead of
    hanging. (A close that waited on nats-py forever held one CI run for 90 minutes.)"""
    log = JetStreamEntryLog(nats_cluster.urls, stream_name(), writer="w1", lanes=2)
    await log.open()
    assert 1 == await log.append(b"a", "id-a")
    servers = [child for child in nats_cluster.children if child is not None]
    for server in servers:
        server.send_signal(signal.SIGSTOP)
    try:
        in_flight = asyncio.ensure_future(log.append(b"b", "id-b"))
        await wait_until(lambda: ("queued=0" in repr(log) and log.retries > 0) or in_flight.done(), timeout=30)
        async with asyncio.timeout(2 * CLOSE_GRACE + 5):
            await log.close()
        with pytest.raises(EntryLogError, match="closed before the append was acknowledged"):
            await in_flight
    finally:
        for server in servers:
            server.send_signal(signal.SIGCONT)
        await asyncio.to_thread(nats_cluster.wait_healthy)


async def test_replicas_resume_from_their_applied_index_across_nats_restarts(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    """Two replicas; one NATS server is SIGKILLed and restarted while entries are proposed,
    then a replica is closed and reopened (from its snapshot): both end at the same index with
    the same state hash, every entry applied once."""
    stream = stream_name()

    def replica(name: str) -> Replica:
        log = JetStreamEntryLog(nats_cluster.urls, stream, writer=name)
        return Replica(name, KeyValue(), log, SnapshotStore(tmp_path / name), snapshot_every=300, compact=False)

    one, two = replica("r1"), replica("r2")
    try:
        await one.start()
        await two.start()

        async def propose(r: Replica, keys: range) -> None:
            for n in keys:
                await r.propose({"op": "add", "key": f"e{n}", "by": 1}, msg_id=f"{r.name}-{n}")

        await asyncio.gather(propose(one, range(0, 400)), propose(two, range(400, 800)))
        nats_cluster.stop_node(1)
        await asyncio.gather(propose(one, range(800, 1000)), propose(two, range(1000, 1200)))
        await asyncio.to_thread(nats_cluster.start_node, 1)
        await two.close()
        await propose(one, range(1200, 1500))
        two = replica("r2")
        await two.start()
        assert two.snapshot_index > 0, "the reopened replica did not start from its snapshot"
        await one.caught_up(1500)
        await two.caught_up(1500)
        assert one.status()["hash"] == two.status()["hash"]
        assert {f"e{n}": 1 for n in range(1500)} == dict(two.value.root)
    finally:
        await one.close()
        await two.close()


def write_config(directory: Path, cluster: NatsCluster, stream: str, writer: str) -> tuple[Path, int]:
    port = free_port()
    directory.mkdir(parents=True)
    config = directory / "statevisor.toml"
    config.write_text(
        f"""[daemon]
store = "var/store.db"
socket = "var/s.sock"
metrics = "127.0.0.1:{port}"
log_dir = "var/log"
run_dir = "var/runs"

[[process]]
name = "kv"
kind = "logapply"
[process.settings]
app = "kv"
log = "jetstream"
servers = {cluster.urls!r}
stream = "{stream}"
writer = "{writer}"
snapshot_every = 5000
"""
    )
    return config, port


ENTRIES = 100_000
IN_FLIGHT = 64


@pytest.mark.timeout(600)
async def test_three_daemons_converge_under_nats_and_daemon_sigkills(nats_cluster: NatsCluster, tmp_path: Path) -> None:
    """100,000 entries proposed through three replica daemons (remote handles); one NATS server
    is SIGKILLed and restarted, and one daemon is SIGKILLed and restarted mid-run. Afterwards
    the three replicas are at the same index with equal state hashes; a fresh replica replaying
    the stream finds every entry applied exactly once and every acknowledged one present, and only
    the killed daemon's callers saw errors (the NATS failover cost no proposal)."""
    stream = stream_name()
    setups = [write_config(tmp_path / f"d{i}", nats_cluster, stream, f"d{i}") for i in range(3)]
    daemons = [start_daemon(config, port) for config, port in setups]
    acked: set[int] = set()
    progress = asyncio.Event()
    failed = [0, 0, 0]  # proposals that raised, per daemon
    numbers = iter(range(ENTRIES))
    try:
        clients = [Client.connect(str(tmp_path / f"d{i}" / "var" / "s.sock")) for i in range(3)]
        for client in clients:
            await client.__aenter__()

        async def handle(i: int) -> LogApplyClient:
            async with asyncio.timeout(60):
                while True:
                    try:
                        return LogApplyClient(await clients[i].get("kv"), timeout=60)
                    except Exception:  # the daemon is (re)starting
                        await asyncio.sleep(0.1)

        async def worker(i: int) -> None:
            kv = await handle(i)
            for n in numbers:
                try:
                    await kv.propose({"op": "add", "key": f"e{n}", "by": 1})
                    acked.add(n)
                    progress.set()
                except Exception:  # its daemon was killed: the entry may or may not land
                    failed[i] += 1
                    kv = await handle(i)

        async def reached(fraction: float) -> None:
            while len(acked) < ENTRIES * fraction:
                await progress.wait()
                progress.clear()

        async def chaos() -> None:
            async with asyncio.timeout(600):
                await reached(0.25)
                await asyncio.to_thread(nats_cluster.stop_node, 2)
                await reached(0.4)
                await asyncio.to_thread(nats_cluster.start_node, 2)
                await reached(0.55)
                daemons[1].send_signal(signal.SIGKILL)
                await asyncio.to_thread(daemons[1].communicate, timeout=10)
                daemons[1] = await asyncio.to_thread(start_daemon, *setups[1])

        async with asyncio.timeout(900):
            await asyncio.gather(chaos(), *(worker(i) for i in range(3) for _ in range(IN_FLIGHT)))
        # The restarted daemon re-issues the proposals its killed incarnation had checkpointed;
        # they may land after every caller is done. Settle first: nothing in flight anywhere.
        for i in range(3):
            remote: Any = await clients[i].get("kv")  # a remote handle: watch() as in-process
            await wait_for_snapshot(remote, lambda s: s.state["requests_in_flight"] == 0, timeout=120)
        statuses: list[dict[str, Any]] = []
        for i in range(3):
            kv = await handle(i)
            await kv.read("e0", sync=True)
            statuses.append(await kv.status())
        for client in clients:
            await client.__aexit__(None, None, None)
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.communicate(timeout=30)
    checker = Replica("checker", KeyValue(), JetStreamEntryLog(nats_cluster.urls, stream, writer="checker"))
    await checker.start()
    state = dict(checker.value.root)
    last = checker.applied
    await checker.close()
    applied = {s["applied"] for s in statuses}
    assert {last} == applied, statuses
    assert {checker.status()["hash"]} == {s["hash"] for s in statuses}
    assert {} == {k: v for k, v in state.items() if v != 1}, "an entry was applied twice"
    assert last == len(state), "the log holds an entry twice"
    assert set() == {f"e{n}" for n in acked} - set(state), "an acknowledged entry is missing"
    assert ENTRIES - sum(failed) <= len(acked)
    # The NATS server's death must cost no proposal; only the killed daemon's callers see errors.
    assert 0 == failed[0] + failed[2], failed


def test_a_cluster_whose_node_cannot_take_its_port_starts_again_on_fresh_ports(tmp_path: Path) -> None:
    """A port taken by another program between the choice and the start makes that node exit:
    start() notices (it used to wait on the two nodes left, and a 3-replica stream then found
    no place), stops the cluster and starts it again on fresh ports, all three nodes healthy."""
    import socket

    from tests.services.nats import nats_server

    if nats_server() is None:
        pytest.fail("nats-server missing: run the README's test command (bash .ci/test), which installs it")
    cluster = NatsCluster(tmp_path / "nats")
    taken = cluster.cluster_ports[1]
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))
    squatter.listen()
    try:
        cluster.start()
        assert taken not in cluster.cluster_ports
        assert all(child is not None and child.poll() is None for child in cluster.children)
        assert all(cluster.healthy(node) for node in range(cluster.size))
        assert "address already in use" in (tmp_path / "nats" / "n1.log").read_text()
    finally:
        squatter.close()
        cluster.stop()
