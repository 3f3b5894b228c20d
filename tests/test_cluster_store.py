"""The cluster's parts in one process, on the real 3-node NATS cluster: the store's fenced
writes and take-overs, the membership's leases on the servers' clock, placement, and the
``[cluster]`` table's checks."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from supervisor import ActionSucceeded, Context, Control, Input, Machine, Node
from supervisor.cluster.connection import ClusterConnection, pid_of, record_key
from supervisor.cluster.errors import ClusterError, Fenced
from supervisor.cluster.membership import Membership, Standing
from supervisor.cluster.placement import place
from supervisor.cluster.settings import ClusterSettings
from supervisor.cluster.store import ClusterStore
from supervisor.daemon.config import ConfigFileError, parse
from tests.helpers import wait_until
from tests.services.nats import NatsCluster


class Steps(Machine[dict[str, Any]]):
    """One tracked "noop" step per cast; counts the steps done."""

    kind = "steps"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state["done"] = 0
            case ActionSucceeded():
                state["done"] += 1
            case _:
                ctx.track("noop", None)


async def noop(action: Any) -> None:
    return None


def settings(nats: NatsCluster, name: str, node: str, lease: float = 2.0) -> ClusterSettings:
    return ClusterSettings(servers=tuple(nats.urls), name=name, node=node, lease=lease, request_timeout=5.0)


@pytest.fixture
def cluster_name() -> str:
    """A cluster of the test's own: its buckets are new."""
    return "s" + secrets.token_hex(4)


async def open_store(nats: NatsCluster, name: str, node: str, fenced: list[tuple[str, str]]) -> ClusterStore:
    connection = await ClusterConnection.open(settings(nats, name, node))
    return ClusterStore(connection, secrets.token_hex(8), on_fenced=lambda pid, owner: fenced.append((pid, owner)))


def test_record_keys_round_trip_any_process_id() -> None:
    """Generated ids are their own keys; any other id (spaces, dots, non-ASCII) becomes one
    subject token that maps back to it exactly."""
    for pid in ["a1b2c3", "web-1_x", "root/web", "with space", "dots.in.it", "ünïcode", "=starts"]:
        key = record_key(pid)
        assert pid == pid_of(key)
        assert "." not in key
        assert " " not in key
    assert "a1b2c3" == record_key("a1b2c3")


def test_rendezvous_placement_spreads_evenly_and_moves_only_a_departed_members_share() -> None:
    """Every member computes the same owner; 3,000 keys spread within 15% of even over three
    members; when one leaves, only its keys move, and they split between the survivors."""
    keys = [secrets.token_hex(6) for _ in range(3000)]
    before = {key: place(key, ["a", "b", "c"]) for key in keys}
    counts = Counter(before.values())
    assert all(850 <= counts[m] <= 1150 for m in "abc"), counts
    after = {key: place(key, ["a", "c"]) for key in keys}
    moved = [key for key in keys if before[key] != after[key]]
    assert all(before[key] == "b" for key in moved)
    assert counts["b"] == len(moved)
    assert {"a", "c"} == {after[key] for key in moved}
    assert place("x", []) is None


async def test_a_takeover_fences_the_old_owners_next_write(nats_cluster: NatsCluster, cluster_name: str) -> None:
    """A process written by member a and taken over by b: a's next write is refused (Fenced,
    naming b), a is told to drop it, and the record is b's with a's last state in it."""
    fenced_a: list[tuple[str, str]] = []
    a = await open_store(nats_cluster, cluster_name, "a", fenced_a)
    b = await open_store(nats_cluster, cluster_name, "b", [])
    try:
        node_a = Node(machines=[Steps()], executors={"noop": noop}, store=a)
        await node_a.start()
        handle = await node_a.spawn(Steps)
        await handle.cast("go")
        await wait_until(lambda: handle.snapshot().state.get("done") == 1)
        await wait_until(lambda: not a.statistics().queued)
        claimed = await b.claim("a", lambda record: True)
        assert [handle.pid] == [r.pid for r in claimed.records]
        assert 1 == claimed.records[0].state["done"]
        assert ("b", b.incarnation) == await b.owner(handle.pid)
        assert [] == await a.index("a")
        assert [record_key(handle.pid)] == await b.index("b")
        await handle.cast("go")  # a's copy runs on, but what it commits is not written
        await wait_until(lambda: bool(fenced_a))
        assert [(handle.pid, "b")] == fenced_a
        assert 1 == a.fenced
        record = await b.get(handle.pid)
        assert record is not None
        assert 1 == record.state["done"]
        await node_a.shutdown()
    finally:
        await a.connection.close()
        await b.connection.close()


async def test_a_write_refused_after_its_own_earlier_write_landed_goes_on(
    nats_cluster: NatsCluster, cluster_name: str
) -> None:
    """A write whose acknowledgement was lost (it timed out, but landed) leaves the store one
    revision behind: the next write is refused, the record is found to be this incarnation's,
    and the write goes on rather than fencing its own process off."""
    fenced: list[tuple[str, str]] = []
    store = await open_store(nats_cluster, cluster_name, "a", fenced)
    try:
        node = Node(machines=[Steps()], executors={"noop": noop}, store=store)
        await node.start()
        handle = await node.spawn(Steps)
        await wait_until(lambda: not store.statistics().queued)
        pid = handle.pid
        store._revisions[pid] -= 1  # as if the last acknowledgement never came
        await handle.cast("go")
        await wait_until(lambda: handle.snapshot().state.get("done") == 1)
        await wait_until(lambda: not store.statistics().queued)
        assert [] == fenced
        record = await store.get(pid)
        assert record is not None
        assert 1 == record.state["done"]
        await node.shutdown()
    finally:
        await store.connection.close()


async def test_a_claim_takes_only_what_it_is_given_and_a_race_has_one_winner(
    nats_cluster: NatsCluster, cluster_name: str
) -> None:
    """Two members claiming the same departed member's processes at once: each process ends
    up with exactly one of them, and the departed member's index is emptied."""
    origin = await open_store(nats_cluster, cluster_name, "gone", [])
    b = await open_store(nats_cluster, cluster_name, "b", [])
    c = await open_store(nats_cluster, cluster_name, "c", [])
    try:
        node = Node(machines=[Steps()], executors={"noop": noop}, store=origin)
        await node.start()
        pids = {(await node.spawn(Steps)).pid for _ in range(40)}
        await wait_until(lambda: not origin.statistics().queued)
        await node.shutdown()
        first, second = await asyncio.gather(b.claim("gone", lambda r: True), c.claim("gone", lambda r: True))
        won_b = {r.pid for r in first.records}
        won_c = {r.pid for r in second.records}
        assert pids == won_b | won_c
        assert set() == won_b & won_c
        assert [] == await b.index("gone")
        for pid in pids:
            owner = await b.owner(pid)
            assert owner is not None
            assert ("b" if pid in won_b else "c") == owner[0]
    finally:
        for store in (origin, b, c):
            await store.connection.close()


async def test_a_member_that_stops_beating_lapses_and_cannot_beat_again(
    nats_cluster: NatsCluster, cluster_name: str
) -> None:
    """Two members see each other; one stops beating: the other sees it gone once the servers
    expire its key (about a lease later), and its own next beat is refused: it knows its
    lease is lost."""
    left: list[str] = []
    lost: list[str] = []
    one = await ClusterConnection.open(settings(nats_cluster, cluster_name, "one", lease=1.0))
    two = await ClusterConnection.open(settings(nats_cluster, cluster_name, "two", lease=1.0))
    watcher = Membership(one, on_left=left.extend)
    silent = Membership(two, on_lost=lost.append)
    try:
        await watcher.join()
        await silent.join()
        watcher.start()
        await wait_until(lambda: "two" in watcher.live())  # from its join; it never beats after
        await wait_until(lambda: left == ["two"], timeout=15)
        assert ["one"] == watcher.live()
        silent.start()  # comes back, as a stopped process continued
        await wait_until(lambda: bool(lost), timeout=10)
        assert Standing.LOST == silent.standing
    finally:
        await watcher.stop()
        await silent.stop()
        await one.close()
        await two.close()


async def test_a_lease_that_passed_while_no_beat_could_land_is_kept_if_the_key_stayed(
    nats_cluster: NatsCluster, cluster_name: str
) -> None:
    """A member whose beats could not land for longer than its lease (as while the bucket's
    stream elects a leader after a NATS server's death: no server expired its key either) is
    in doubt, not lost: its next beat lands on its revision, and it goes on as a member."""
    lost: list[str] = []
    connection = await ClusterConnection.open(settings(nats_cluster, cluster_name, "doubt", lease=3.0))
    member = Membership(connection, on_lost=lost.append)
    try:
        await member.join()
        member.beat_landed -= 10.0  # over three leases ago, as far as this member's clock tells
        beats = member.beats
        member.start()
        await wait_until(lambda: member.beats > beats, timeout=10)
        assert [] == lost
        assert Standing.MEMBER == member.standing
        assert not member.in_doubt
        assert member.lease_left() > 0
    finally:
        await member.stop()
        await connection.close()


async def test_a_second_daemon_with_a_live_node_name_is_refused(nats_cluster: NatsCluster, cluster_name: str) -> None:
    """Joining with a node name whose holder goes on beating fails, naming the name and the
    likely mistake, rather than two daemons sharing one identity."""
    first = await ClusterConnection.open(settings(nats_cluster, cluster_name, "same", lease=1.0))
    second = await ClusterConnection.open(settings(nats_cluster, cluster_name, "same", lease=1.0))
    holder = Membership(first)
    try:
        await holder.join()
        holder.start()
        with pytest.raises(ClusterError, match="node name 'same' is held by a live daemon"):
            await Membership(second).join()
    finally:
        await holder.stop()
        await first.close()
        await second.close()


async def test_members_must_agree_on_the_lease(nats_cluster: NatsCluster, cluster_name: str) -> None:
    """A member configured with another lease than the cluster's is refused at connect,
    naming both leases."""
    first = await ClusterConnection.open(settings(nats_cluster, cluster_name, "x", lease=2.0))
    try:
        with pytest.raises(ClusterError, match=r"its lease is 2 s .* here says 5 s"):
            await ClusterConnection.open(settings(nats_cluster, cluster_name, "y", lease=5.0))
    finally:
        await first.close()


def test_fenced_is_a_store_error_naming_the_new_owner() -> None:
    """Fenced derives from the core's StoreError and names the process and its owner."""
    error = Fenced("nats://x/a", "p1", "b")
    assert "process p1 is owned by b now" in str(error)
    assert ("p1", "b") == (error.pid, error.owner)


BASE = '[daemon]\nstore = "s.db"\n'


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        ('servers = ["nats://10.0.0.5:4222"]\nname = "c"\nnode = "a"\n', "cluster.servers[0]", "use tls://"),
        ('servers = ["nats://10.0.0.5:4222"]\nname = "c"\nnode = "a"\n', "cluster.credentials", "credentials file"),
        ('servers = ["http://x"]\nname = "c"\nnode = "a"\n', "cluster.servers[0]", "nats:// or tls:// URL"),
        ('servers = []\nname = "c"\nnode = "a"\n', "cluster.servers", "at least one"),
        ('servers = ["nats://127.0.0.1:1"]\nname = "my cluster"\nnode = "a"\n', "cluster.name", "letters, digits"),
        ('servers = ["nats://127.0.0.1:1"]\nname = "c"\n', "cluster.node", "missing (required)"),
        ('servers = ["nats://127.0.0.1:1"]\nname = "c"\nnode = "a"\nlease = 0.5\n', "cluster.lease", ">= 1"),
        ('servers = ["nats://127.0.0.1:1"]\nname = "c"\nnode = "a"\nreplicas = 2\n', "cluster.replicas", "1, 3 or 5"),
        ('servers = ["nats://127.0.0.1:1"]\nname = "c"\nnode = "a"\nleases = 3\n', "cluster.leases", "unknown key"),
    ],
)
def test_cluster_table_mistakes_are_named_with_their_key(tmp_path: Path, table: str, key: str, message: str) -> None:
    """Each mistake in [cluster] is reported with its key and what is expected."""
    with pytest.raises(ConfigFileError) as caught:
        parse(BASE + "\n[cluster]\n" + table, tmp_path / "c.toml", kinds=False)
    assert any(e.key == key and message in str(e) for e in caught.value.errors), str(caught.value)


def test_cluster_secrets_must_be_owner_only(tmp_path: Path) -> None:
    """A NATS credentials file others can read is refused, naming its mode."""
    creds = tmp_path / "nats.creds"
    creds.write_text("x")
    creds.chmod(0o644)
    table = 'servers = ["tls://nats.example:4222"]\nname = "c"\nnode = "a"\ncredentials = "nats.creds"\n'
    with pytest.raises(ConfigFileError, match=r"readable by its owner only \(mode 644\)"):
        parse(BASE + "\n[cluster]\n" + table, tmp_path / "c.toml", kinds=False)
    creds.chmod(0o600)
    config = parse(BASE + "\n[cluster]\n" + table, tmp_path / "c.toml", kinds=False)
    assert config.cluster is not None
    assert (("tls://nats.example:4222",), "c", "a", creds) == (
        config.cluster.servers, config.cluster.name, config.cluster.node, config.cluster.credentials,
    )  # fmt: skip


async def test_a_members_index_is_listed_whole_every_time(nats_cluster: NatsCluster, cluster_name: str) -> None:
    """Listing a member's index gives every key, every time, and none of its deleted ones. (A
    key-value watch's "that is all" marker could come before its first keys: a listing of 500
    came back empty about once in three, and a survivor then took none of a departed member's
    processes until its next sweep.)"""
    connection = await ClusterConnection.open(settings(nats_cluster, cluster_name, "a"))
    try:
        await asyncio.gather(*[connection.owners.put(f"b.k{i}", b"") for i in range(500)])
        await connection.owners.delete("b.k7")
        await connection.owners.put("c.other", b"")
        wanted = {f"b.k{i}" for i in range(500)} - {"b.k7"}
        for _ in range(20):
            assert wanted == set(await connection.keys(connection.owners, "b.>"))
        assert [] == await connection.keys(connection.owners, "nobody.>")
    finally:
        await connection.close()
