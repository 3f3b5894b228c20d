"""The web console's cluster page: real ``statevisor daemon`` members of one cluster on the real
3-node NATS cluster, each serving its console on a loopback port of its own, read over real
HTTP; a daemon outside a cluster has no such page. The page's decisions (paging, filters, which
owners a live update looks up again) are pinned on their own below, in plain code.

Nothing sleeps and hopes: every wait is on what a page or its event stream shows, with a
timeout. (The page in a browser is test_web_browser.py's.)"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor.control import Client
from supervisor.web._cluster import OWNERS_EVERY, STATUS_EVERY, ClusterQuery, OwnerWatch, cluster_page
from supervisor.web._console import row_key
from tests.cluster_daemons import DaemonCluster
from tests.services.loopback import free_ports
from tests.services.nats import NatsCluster
from tests.test_daemon import free_port, kill_if_running, start_daemon
from tests.test_web import events


class WebCluster(DaemonCluster):
    """A :class:`DaemonCluster` whose members each serve the web console (reading open: loopback)."""

    def __init__(self, root: Path, nats: NatsCluster, **options: Any) -> None:
        self.web_ports: dict[str, int] = {}
        super().__init__(root, nats, **options)
        taken = set(self.ports.values())
        spare = [port for port in free_ports(2 * len(self.nodes)) if port not in taken]
        self.web_ports = dict(zip(self.nodes, spare, strict=False))
        for node in self.nodes:
            self.write_config(node)

    def write_config(self, node: str) -> Path:
        config = super().write_config(node)
        port = self.web_ports.get(node)
        if port is not None:
            web = f'[daemon]\nweb = "127.0.0.1:{port}"\nweb_read = "open"\n'
            config.write_text(config.read_text().replace("[daemon]\n", web, 1))
        return config

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.web_ports[node]}"


@pytest.fixture
def members(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[WebCluster]:
    cluster = WebCluster(tmp_path, nats_cluster, lease=3.0)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def page(http: aiohttp.ClientSession, url: str, **options: Any) -> tuple[int, str]:
    async with http.get(url, allow_redirects=False, **options) as response:
        return response.status, await response.text()


def members_shown(html: str) -> set[str]:
    return set(re.findall(r'<tr id="member-[^"]*" data-member="([^"]*)"', html))


def owners_shown(html: str) -> dict[str, str]:
    """pid -> the owner the rows show."""
    found = {}
    for row in re.findall(r'<tr id="placed-[^"]*" data-pid="([^"]*)">(.*?)</tr>', html, re.S):
        owner = re.search(r'data-owner="([^"]*)"', row[1])
        found[row[0]] = owner.group(1) if owner else ""
    return found


async def spawn_steppers(client: Client, count: int) -> list[str]:
    """``count`` long-running steppers, placed across the cluster by the daemon asked."""
    state = {"steps": 1000, "pause": 1.0, "done": 0}
    handles = await asyncio.gather(*(client.spawn("stepper", state) for _ in range(count)))
    return [handle.pid for handle in handles]


@pytest.mark.timeout(300)
async def test_the_cluster_page_shows_members_and_owners_and_follows_a_member_killed(
    members: WebCluster, http: aiohttp.ClientSession
) -> None:
    """Each member's console lists the three members (itself marked) and every process of the
    cluster with the owner the control API names, paged on the server. After b is SIGKILLed,
    a's page, over its event stream and without a reload, stops listing b within a lease and a
    half (plus one push), and shows b's processes with their new owners, a or c; the "where is"
    form names a moved process's new owner, and a reload shows the same."""
    members.start_all()
    async with members.client("c") as client:
        pids = await spawn_steppers(client, 30)
        placed = {p.snapshot.pid: p.owner for p in await client.placed()}
    assert {"a", "b", "c"} == {placed[pid] for pid in pids}

    status, html = await page(http, members.url("a") + "/cluster?size=500")
    assert 200 == status
    assert {"a", "b", "c"} == members_shown(html)
    assert re.search(r'data-member="a" class="here">.*?this daemon', html, re.S)
    shown = owners_shown(html)
    assert {pid: placed[pid] for pid in pids} == {pid: shown.get(pid) for pid in pids}
    status, other = await page(http, members.url("b") + "/cluster")
    assert {"a", "b", "c"} == members_shown(other)
    assert re.search(r'data-member="b" class="here">', other)

    # Paged on the server: 10 a page, the last page what is left.
    _, first = await page(http, members.url("a") + "/cluster?size=10")
    assert 10 == len(owners_shown(first))
    assert 'rel="next"' in first
    _, last = await page(http, members.url("a") + "/cluster?size=10&page=3")
    assert 10 == len(owners_shown(last))
    assert 'rel="next"' not in last
    _, only_b = await page(http, members.url("a") + "/cluster?size=500&owner=b")
    assert {pid for pid in pids if placed[pid] == "b"} == set(owners_shown(only_b))

    of_b = [pid for pid in pids if placed[pid] == "b"]
    query = "&".join(f"pid={pid}" for pid in of_b)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=30)
    async with http.get(members.url("a") + "/cluster/events?" + query, timeout=timeout) as response:
        stream = events(response)
        async with asyncio.timeout(30):
            async for event in stream:
                if event.get("event") == "members" and members_shown(event["data"]) == {"a", "b", "c"}:
                    break
        members.kill("b")
        # A lease and a half for the cluster to see b gone, and one push of the page's after it.
        async with asyncio.timeout(members.lease * 1.5 + STATUS_EVERY + 0.5):
            async for event in stream:
                if event.get("event") == "members" and "b" not in members_shown(event["data"]):
                    assert {"a", "c"} == members_shown(event["data"])
                    break
        moved: dict[str, str] = {}
        async with asyncio.timeout(members.lease * 3 + OWNERS_EVERY):
            async for event in stream:
                name = event.get("event", "")
                for pid in of_b:
                    if name == f"owner-{row_key(pid)}":
                        owner = re.search(r'data-owner="([^"]*)"', event["data"])
                        if owner is not None and owner.group(1) in ("a", "c"):
                            moved[pid] = owner.group(1)
                if set(moved) == set(of_b):
                    break

    async with members.client("a") as client:
        now = {p.snapshot.pid: p.owner for p in await client.placed()}
    assert {pid: now[pid] for pid in of_b} == moved
    pid = of_b[0]
    status, answer = await page(http, members.url("a") + f"/cluster/where?pid={pid}", headers={"HX-Request": "true"})
    assert 200 == status
    assert f'data-owner="{moved[pid]}"' in answer
    _, html = await page(http, members.url("c") + "/cluster?size=500")
    assert {"a", "c"} == members_shown(html)
    assert moved == {p: owner for p, owner in owners_shown(html).items() if p in of_b}
    # Without JavaScript the form's answer comes in the page.
    _, whole = await page(http, members.url("c") + f"/cluster?where={pid}")
    assert re.search(rf'id="where-answer".*data-owner="{moved[pid]}"', whole, re.S)


@pytest.mark.timeout(300)
async def test_where_is_answers_for_ids_names_and_nothing(members: WebCluster, http: aiohttp.ClientSession) -> None:
    """The "where is" form answers a process owned by another member with that member, one of
    this daemon's (by id or by name) with a link to its page, and an unknown id with a "no
    process" answer; the cluster link is in every page's navigation."""
    members.start_all()
    async with members.client("a") as client:
        pids = await spawn_steppers(client, 12)
        placed = {p.snapshot.pid: p.owner for p in await client.placed()}
        named = await client.spawn("stepper", {"steps": 1000, "pause": 1.0, "done": 0}, name="local-one")
    elsewhere = next(pid for pid in pids if placed[pid] != "a")
    hx = {"HX-Request": "true"}
    _, answer = await page(http, members.url("a") + f"/cluster/where?pid={elsewhere}", headers=hx)
    assert f'data-owner="{placed[elsewhere]}"' in answer
    assert "a live member" in answer
    # A named spawn is placed by hashing too, and a name is looked up on the daemon asked: its owner's.
    async with members.client("a") as client:
        owner = {p.snapshot.pid: p.owner for p in await client.placed()}[named.pid]
    assert owner is not None
    _, answer = await page(http, members.url(owner) + "/cluster/where?pid=local-one", headers=hx)
    assert f'data-owner="{owner}"' in answer
    assert f'href="/process?pid={named.pid}"' in answer
    _, answer = await page(http, members.url("a") + "/cluster/where?pid=nosuchprocess", headers=hx)
    assert "No live process" in answer
    _, processes = await page(http, members.url("b") + "/processes")
    assert '<a href="/cluster"' in processes
    async with http.get(members.url("b") + "/cluster/where?pid=x", allow_redirects=False) as response:
        assert (303, "/cluster?where=x") == (response.status, response.headers["Location"])


def test_a_daemon_outside_a_cluster_has_no_cluster_page(tmp_path: Path) -> None:
    """A daemon that is not a cluster member serves no cluster link in its pages and answers
    404 at /cluster (and its event stream and form)."""
    import urllib.error
    import urllib.request

    port, web_port = free_port(), free_port()
    config = tmp_path / "statevisor.toml"
    config.write_text(
        f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{port}"\n'
        f'web = "127.0.0.1:{web_port}"\nweb_read = "open"\nloop = "asyncio"\n'
    )
    child = start_daemon(config, port, stdout=subprocess.PIPE)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/processes", timeout=10) as response:
            body = response.read().decode()
        assert "Supervision tree" in body
        assert "/cluster" not in body
        for path in ("/cluster", "/cluster/events", "/cluster/where?pid=x"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=10)
            assert 404 == refused.value.code
            assert "not a member of a cluster" in refused.value.read().decode()
    finally:
        child.terminate()
        try:
            child.communicate(timeout=30)
        finally:
            kill_if_running(child)


# --- the page's decisions ---------------------------------------------------------------------


def placed_fields(pid: str, owner: str, since: float) -> dict[str, Any]:
    return {
        "pid": pid, "name": f"n-{pid}", "kind": "stepper", "lifecycle": "running", "paused": False, "phase": "run",
        "since": since, "owner": owner, "reachable": True,
    }  # fmt: skip


def test_the_cluster_list_is_filtered_ordered_and_paged_here() -> None:
    """Rows are ordered by when their process began (then id), filtered by owner and by a part
    of the name or id, and paged: a page holds its size, and says whether another follows."""
    placed = [placed_fields(f"p{i:02d}", "abc"[i % 3], since=100.0 - i) for i in range(25)]
    first = cluster_page(placed, ClusterQuery.parse({"size": "10"}), ["stepper"])
    assert ["p24", "p23", "p22"] == [row.pid for row in first.rows[:3]]
    assert (10, True, 25, 25) == (len(first.rows), first.has_next, first.matching, first.total)
    last = cluster_page(placed, ClusterQuery.parse({"size": "10", "page": "3"}), [])
    assert (["p04", "p03", "p02", "p01", "p00"], False) == ([row.pid for row in last.rows], last.has_next)
    newest = cluster_page(placed, ClusterQuery.parse({"order": "newest", "size": "2"}), [])
    assert ["p00", "p01"] == [row.pid for row in newest.rows]
    of_b = cluster_page(placed, ClusterQuery.parse({"owner": "b"}), [])
    assert {f"p{i:02d}" for i in range(25) if i % 3 == 1} == {row.pid for row in of_b.rows}
    assert ["a", "b", "c"] == of_b.owners
    text = cluster_page(placed, ClusterQuery.parse({"q": "N-P1"}), [])
    assert {f"p{i}" for i in range(10, 20)} == {row.pid for row in text.rows}
    query = ClusterQuery.parse({"owner": "b", "size": "10", "page": "2"})
    assert {"owner": "b", "size": "10", "page": "3"} == query.arguments(page=3)


def test_a_live_update_looks_owners_up_again_only_when_they_may_have_changed() -> None:
    """Every row's owner is looked up at first, when the members change and every OWNERS_EVERY
    seconds; meanwhile only those whose owner is not a live member (moving, bound to a daemon
    that is down); an owner the page shows already is not pushed again."""
    watch = OwnerWatch({"x": ("a", True), "y": ("b", True)})
    live = frozenset({"a", "b"})
    assert ["x", "y"] == watch.due(live, 0.0)
    assert not watch.changed("x", "a")
    assert not watch.changed("y", "b")
    assert [] == watch.due(live, 1.0)
    fewer = frozenset({"a"})
    assert ["x", "y"] == watch.due(fewer, 2.0)
    assert watch.changed("y", "b")  # the same owner, now unreachable
    assert ["y"] == watch.due(fewer, 3.0)
    assert watch.changed("y", "a")
    assert [] == watch.due(fewer, 4.0)
    assert ["x", "y"] == watch.due(fewer, 2.0 + OWNERS_EVERY)
