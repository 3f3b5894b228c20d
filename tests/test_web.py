"""The web console over real HTTP on loopback, with a real node: its pages, its live event
streams, who may read and who may act, its files. (Its browser tests are test_web_browser.py.)"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from supervisor import (
    Budget,
    Cast,
    ChildSpec,
    Context,
    Control,
    Input,
    Machine,
    Node,
    Restart,
    Snapshot,
    SupervisorSpec,
)
from supervisor.daemon import ConfigFileError
from supervisor.daemon.config import parse
from supervisor.web import PanelView, WebConsole
from supervisor.web._assets import VENDOR, vendor_manifest
from supervisor.web._auth import Sessions
from supervisor.web._console import row_key
from tests.helpers import wait_until
from tests.machines import Counter, DoorMachine

TOKEN = "a-token-of-thirty-two-characters"


class Secretive(Machine[dict[str, Any]]):
    """Keeps a password and a list of what it was told; writes what it is told to its log."""

    kind = "secretive"
    secret_keys = frozenset({"password"})

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("told", [])
            case Cast(message):
                state["told"].append(message)

    def log_files(self, state: dict[str, Any]) -> Mapping[str, str]:
        return {"stdout": state["log"]} if "log" in state else {}


class Broken(Machine[dict[str, Any]]):
    """Fails as soon as it starts."""

    kind = "broken"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        ctx.fail("broken on purpose")


async def served(node: Node, **options: Any) -> WebConsole:
    console = WebConsole(node, "127.0.0.1", 0, **options)
    await console.start()
    return console


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    node = Node(machines=[Counter, DoorMachine, Secretive])
    await node.start()
    yield node
    await node.runtime.kill_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: keep cookies of an IP address (127.0.0.1), as browsers do
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def text(http: aiohttp.ClientSession, url: str, **options: Any) -> tuple[int, str]:
    async with http.get(url, allow_redirects=False, **options) as response:
        return response.status, await response.text()


def names_listed(page: str) -> list[str]:
    return re.findall(r'<td data-label="Name"><a href="/process\?pid=[^"]*">([^<]*)</a>', page)


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """Server-sent events as they come: each a map of its fields (data lines joined)."""
    buffer = b""
    while True:
        while b"\n\n" not in buffer:
            chunk = await response.content.read(65536)
            if not chunk:
                return
            buffer += chunk
        raw, buffer = buffer.split(b"\n\n", 1)
        fields: dict[str, str] = {}
        for line in raw.decode().split("\n"):
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = f"{fields[key]}\n{value}" if key in fields else value
        if fields:
            yield fields


async def next_event(stream: AsyncIterator[dict[str, str]], name: str, contains: str = "") -> dict[str, str]:
    async with asyncio.timeout(10):
        async for event in stream:
            if event.get("event") == name and contains in event.get("data", ""):
                return event
    raise AssertionError(f"the stream ended before a {name!r} event with {contains!r}")


async def test_the_list_pages_the_registry_in_order_and_filters_it(node: Node, http: aiohttp.ClientSession) -> None:
    """The process list is paged on the server in spawn order (or newest first), and filtered by
    kind, lifecycle, paused and a part of the name; ended processes are listed on their own."""
    counters = [await node.spawn(Counter, {"n": 0}, name=f"counter-{i:03d}") for i in range(120)]
    door = await node.spawn(DoorMachine, name="front door")
    await counters[5].pause()
    console = await served(node, read="open")
    try:
        status, page = await text(http, console.url + "/processes")
        assert 200 == status
        assert [f"counter-{i:03d}" for i in range(50)] == names_listed(page)
        assert "Showing 1\u201350 of 121." in page
        assert 'rel="next"' in page
        _, last = await text(http, console.url + "/processes?page=3")
        assert [*(f"counter-{i:03d}" for i in range(100, 120)), "front door"] == names_listed(last)
        assert 'rel="next"' not in last
        _, newest = await text(http, console.url + "/processes?order=newest&size=2")
        assert ["front door", "counter-119"] == names_listed(newest)
        _, doors = await text(http, console.url + "/processes?kind=doormachine")
        assert ["front door"] == names_listed(doors)
        _, found = await text(http, console.url + "/processes?q=COUNTER-11")
        assert [f"counter-{i:03d}" for i in range(110, 120)] == names_listed(found)
        _, paused = await text(http, console.url + "/processes?paused=yes")
        assert ["counter-005"] == names_listed(paused)
        await door.cast("open")  # armed a state timeout: waiting
        await wait_until(lambda: str(door.snapshot().lifecycle) == "waiting")
        _, waiting = await text(http, console.url + "/processes?lifecycle=waiting")
        assert ["front door"] == names_listed(waiting)
        await counters[0].kill("done with it")
        _, ended = await text(http, console.url + "/processes?show=ended")
        assert ["counter-000"] == names_listed(ended)
        _, none = await text(http, console.url + "/processes?q=nobody")
        assert "No process matches." in none
    finally:
        await console.close()


async def test_a_list_page_makes_no_snapshot(node: Node, http: aiohttp.ClientSession) -> None:
    """The list reads the registry in place: listing (any page, filtered or not) makes no
    snapshot of any process, so 100,000 processes cost what one page of them costs."""
    handles = [await node.spawn(Counter, {"n": 0}) for _ in range(300)]
    console = await served(node, read="open")
    try:
        for query in ("", "?page=4", "?q=zz", "?order=newest", "?kind=counter&lifecycle=running"):
            status, _ = await text(http, console.url + "/processes" + query)
            assert 200 == status
        assert [] == [h.pid for h in handles if h._process._snapshot is not None]
    finally:
        await console.close()


async def test_a_process_page_shows_its_state_masked_its_history_and_its_diagram(
    node: Node, http: aiohttp.ClientSession
) -> None:
    """A process's page: its facts, its state with secret values masked, the transitions since
    the page first followed it, and its machine's diagram with the current phase highlighted;
    an unknown process is a 404 page."""
    secret = await node.spawn(Secretive, {"password": "hunter2-hunter2", "told": []}, name="keeper")
    door = await node.spawn(DoorMachine, name="front")
    console = await served(node, read="open")
    try:
        status, page = await text(http, console.url + "/process?pid=keeper")
        assert 200 == status
        assert "hunter2" not in page
        assert "&#34;password&#34;: &#34;***&#34;" in page
        _, page = await text(http, f"{console.url}/process?pid={door.pid}")
        assert "class closed current" in page
        assert "No transition since this page began following" in page
        await door.cast("open")
        await wait_until(lambda: door.snapshot().phase == "open")
        _, page = await text(http, f"{console.url}/process?pid={door.pid}")
        assert "class open current" in page
        assert "<code>cast &#39;open&#39;</code>" in page
        assert "goto open, timer state_timeout armed" in page
        status, missing = await text(http, console.url + "/process?pid=nobody")
        assert (404, True) == (status, "No live or recently ended process has the id or name" in missing)
        await secret.kill()
    finally:
        await console.close()


async def test_a_transition_reaches_an_open_page_as_an_event(node: Node, http: aiohttp.ClientSession) -> None:
    """A process page's event stream sends the current state at once, then each change: the
    new phase, the history with the transition, the facts, the state; the terminal one too."""
    door = await node.spawn(DoorMachine, name="front")
    console = await served(node, read="open")
    try:
        async with http.get(f"{console.url}/process/events?pid={door.pid}") as response:
            assert "text/event-stream" == response.headers["Content-Type"]
            stream = events(response)
            assert "closed" == (await next_event(stream, "phase"))["data"]
            await door.cast("open")
            assert "open" == (await next_event(stream, "phase"))["data"]
            history = await next_event(stream, "history")
            assert "goto open" in history["data"]
            assert "&#34;opened&#34;" in (await next_event(stream, "state"))["data"]
            await door.pause()
            assert "paused" == (await next_event(stream, "status"))["data"]
            await door.kill("closing time")
            assert "ended" == (await next_event(stream, "status"))["data"]
            facts = await next_event(stream, "facts")
            assert "closing time" in facts["data"]
        await wait_until(lambda: console.statistics().streams == 0)
    finally:
        await console.close()


async def test_log_lines_are_followed_and_resume_after_a_reconnect(
    node: Node, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A page follows its process's logs on its event stream, from after the lines it showed;
    each event carries the offset, and a stream opened again with it (Last-Event-ID, as a
    browser sends) goes on with the next line: nothing repeated, nothing missed."""
    log_file = tmp_path / "out.log"
    log_file.write_text("first <line>\n")
    handle = await node.spawn(Secretive, {"log": str(log_file), "told": []}, name="writer")
    console = await served(node, read="open")
    try:
        _, page = await text(http, f"{console.url}/process?pid={handle.pid}")
        assert "first &lt;line&gt;\n</pre>" in page
        offset = re.search(r"logs=stdout%3D(\d+)", page)
        assert offset is not None
        assert int(offset[1]) == len("first <line>\n")
        url = f"{console.url}/process/events?pid={handle.pid}&logs=stdout%3D{offset[1]}"
        async with http.get(url) as response:
            stream = events(response)
            with log_file.open("a") as out:
                out.write("second & more\n")
            event = await next_event(stream, "log-stdout")
            assert "second &amp; more\n" == event["data"]
            last_id = event["id"]
            assert "stdout=" + str(len("first <line>\nsecond & more\n")) == last_id
        with log_file.open("a") as out:
            out.write("third\n")
        async with http.get(
            f"{console.url}/process/events?pid={handle.pid}", headers={"Last-Event-ID": last_id}
        ) as again:
            event = await next_event(events(again), "log-stdout")
            assert "third\n" == event["data"]
    finally:
        await console.close()


async def test_the_list_rows_update_live(node: Node, http: aiohttp.ClientSession) -> None:
    """The list's event stream carries the rows it shows, each when its process changes."""
    door = await node.spawn(DoorMachine, name="front")
    console = await served(node, read="open")
    try:
        _, page = await text(http, console.url + "/processes")
        assert f'sse-swap="row-{row_key(door.pid)}"' in page
        url = re.search(r'sse-connect="([^"]+)"', page)
        assert url is not None
        async with http.get(console.url + url[1].replace("&amp;", "&")) as response:
            stream = events(response)
            await next_event(stream, f"row-{row_key(door.pid)}", "<code>closed</code>")
            await door.cast("open")
            await next_event(stream, f"row-{row_key(door.pid)}", "<code>open</code>")
    finally:
        await console.close()


async def test_reading_takes_a_login_with_the_token_unless_it_is_open(node: Node, http: aiohttp.ClientSession) -> None:
    """With reading behind the token, a page sends a browser to the login (and a stream is
    refused); a wrong token is refused and counted, the right one gives a session cookie
    (HttpOnly, SameSite=Strict), and a program may send the token as a bearer instead."""
    console = await served(node, token=TOKEN)
    try:
        status, _ = await text(http, console.url + "/processes")
        assert 303 == status
        async with http.get(console.url + "/processes", allow_redirects=False) as response:
            assert response.headers["Location"] in ("/login?next=/processes", "/login?next=%2Fprocesses")
        assert 401 == (await text(http, console.url + "/process/events?pid=x"))[0]
        async with http.post(console.url + "/login", data={"token": "wrong", "next": "/tree"}) as response:
            assert 401 == response.status
        assert 1 == console.statistics().refused["wrong token"]
        async with http.post(
            console.url + "/login", data={"token": TOKEN, "next": "/tree", "name": "ada"}, allow_redirects=False
        ) as response:
            assert (303, "/tree") == (response.status, response.headers["Location"])
            cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
        status, page = await text(http, console.url + "/processes")
        assert 200 == status
        assert "ada" in page
        async with aiohttp.ClientSession() as program:
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert 200 == (await text(program, console.url + "/tree", headers=bearer))[0]
            assert 303 == (await text(program, console.url + "/tree", headers={"Authorization": "Bearer no"}))[0]
        async with http.post(console.url + "/login", data={"token": TOKEN, "next": "https://elsewhere.example/"},
                             allow_redirects=False) as response:  # fmt: skip
            assert "/processes" == response.headers["Location"], "never a redirect off the console"
    finally:
        await console.close()


async def login(http: aiohttp.ClientSession, console: WebConsole, name: str = "ada") -> str:
    """Log in; the page's forgery token."""
    async with http.post(console.url + "/login", data={"token": TOKEN, "name": name}) as response:
        assert 200 == response.status
    _, page = await text(http, console.url + "/processes")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found[1]


async def test_control_takes_rights_and_the_forgery_token_and_is_logged_with_who(
    node: Node, http: aiohttp.ClientSession
) -> None:
    """Pause, resume, nudge and kill: refused without a login, without the session's forgery
    token, or from another site's page; done with them, and logged with who asked."""
    handle = await node.spawn(Counter, {"n": 0}, name="target")
    console = await served(node, token=TOKEN, control=True, read="open")
    try:
        async with http.post(console.url + "/process/pause", data={"pid": handle.pid}) as response:
            assert 403 == response.status
            assert "Refused: log in with the daemon" in await response.text()
        csrf = await login(http, console)
        async with http.post(console.url + "/process/pause", data={"pid": handle.pid, "csrf": "0" * 32}) as response:
            assert 403 == response.status
        foreign = {"Origin": "https://elsewhere.example"}
        async with http.post(console.url + "/process/pause", data={"pid": handle.pid, "csrf": csrf},
                             headers=foreign) as response:  # fmt: skip
            assert 403 == response.status
        assert not handle.snapshot().paused
        with capture_logs() as logged:
            async with http.post(
                console.url + "/process/pause", data={"pid": handle.pid, "csrf": csrf}, allow_redirects=False
            ) as response:
                assert 303 == response.status
                assert f"/process?pid={handle.pid}&done=paused" == response.headers["Location"]
            assert handle.snapshot().paused
            htmx = {"HX-Request": "true", "X-CSRF-Token": csrf}
            async with http.post(console.url + "/process/resume", data={"pid": handle.pid}, headers=htmx) as response:
                assert '<p class="done">Resumed.</p>' == await response.text()
            assert not handle.snapshot().paused
            async with http.post(console.url + "/process/nudge", data={"pid": handle.pid}, headers=htmx) as response:
                assert 200 == response.status
            async with http.post(
                console.url + "/process/kill", data={"pid": handle.pid, "reason": "testing"}, headers=htmx
            ) as response:
                assert 200 == response.status
        assert "killed" == str(handle.snapshot().lifecycle)
        assert "testing" == handle.snapshot().error
        actions = [(e["action"], e["by"], e["peer"]) for e in logged if e["event"] == "web_action"]
        assert ["pause", "resume", "nudge", "kill"] == [action for action, _, _ in actions]
        assert {"127.0.0.1"} == {peer for _, _, peer in actions}
        [who] = {by for _, by, _ in actions}
        assert re.fullmatch(r"ada \(session [\w-]{8}\)", who), who
        assert {"no control rights", "bad forgery token", "cross-site request"} <= set(console.statistics().refused)
    finally:
        await console.close()


async def test_with_control_off_every_action_is_refused(node: Node, http: aiohttp.ClientSession) -> None:
    """A read-only console (daemon.web_control off) refuses every action, logged in or not, and
    its pages offer none."""
    handle = await node.spawn(Counter, {"n": 0})
    console = await served(node, token=TOKEN)
    try:
        csrf = await login(http, console)
        _, page = await text(http, f"{console.url}/process?pid={handle.pid}")
        assert "/process/pause" not in page
        async with http.post(console.url + "/process/pause", data={"pid": handle.pid, "csrf": csrf}) as response:
            assert 403 == response.status
            assert "Control is off" in await response.text()
        assert not handle.snapshot().paused
    finally:
        await console.close()


async def test_a_configured_kind_is_spawned_from_the_console(node: Node, http: aiohttp.ClientSession) -> None:
    """Spawn takes a kind the node runs, a name and settings as JSON; mistakes are answered."""
    console = await served(node, token=TOKEN, control=True)
    try:
        csrf = await login(http, console)
        form = {"csrf": csrf, "kind": "doormachine", "name": "side door", "state": '{"log": []}'}
        async with http.post(console.url + "/spawn", data=form, allow_redirects=False) as response:
            assert 303 == response.status
        spawned = node.find("side door")
        assert response.headers["Location"] == f"/process?pid={spawned.pid}&done=spawned"
        for bad, problem in (
            ({"kind": "nothing"}, "runs no kind"),
            ({"kind": "counter", "state": "[1]"}, "JSON object"),
        ):
            async with http.post(console.url + "/spawn", data={"csrf": csrf, **bad}) as response:
                assert 400 == response.status
                assert problem in await response.text()
    finally:
        await console.close()


async def test_the_tree_shows_restarts_budgets_and_given_up_children(http: aiohttp.ClientSession) -> None:
    """The supervision tree: each supervisor's strategy, budget and restarts, each child's
    restart type, state, own restarts and budget, and a child given up past its budget."""
    node = Node(
        machines=[Counter, Broken],
        root=SupervisorSpec(
            "root",
            [
                ChildSpec("steady", machine=Counter, state={"n": 0}),
                ChildSpec("flaky", machine=Broken, restart=Restart.TRANSIENT, budget=Budget(1, 60.0)),
            ],
            budget=Budget(10, 60.0),
        ),
    )
    await node.start()
    console = await served(node, read="open")
    try:
        await wait_until(lambda: node.root.statistics().given_up == 1)
        _, page = await text(http, console.url + "/tree")
        assert "one_for_one · budget 10 restarts in 60 s, 1 used now · 1 restart" in page
        [flaky] = [row for row in page.split("<tr") if ">flaky<" in row]
        assert "given up" in flaky
        assert '"Restarts">1<' in flaky
        assert "2 of 1 restart in 60 s" in flaky, "the second restart asked for went over its budget"
        [steady] = [row for row in page.split("<tr") if ">steady<" in row]
        assert "alive" in steady
        assert "permanent" in steady
    finally:
        await console.close()
        await node.runtime.kill_all()


class DoorPanel:
    """A panel for doors: how many times it was told things (a table) and a one-line diagram."""

    def applies_to(self, kind: str) -> bool:
        return kind == "doormachine"

    def render(self, snapshot: Snapshot) -> PanelView | None:
        told = snapshot.state.get("log", [])
        return PanelView(
            "Door log", mermaid="sequenceDiagram\n    you->>door: open", table=[["entry"], *[[t] for t in told]]
        )


class FailingPanel:
    def applies_to(self, kind: str) -> bool:
        return True

    def render(self, snapshot: Snapshot) -> PanelView | None:
        raise RuntimeError("no panel today")


async def test_kinds_add_panels_and_a_failing_panel_says_so(node: Node, http: aiohttp.ClientSession) -> None:
    """A panel shows on its kind's pages (escaped, its Mermaid drawn like the diagram) and on
    their live updates; one that raises shows that it failed, and the page still renders."""
    door = await node.spawn(DoorMachine, name="front")
    counter = await node.spawn(Counter, {"n": 0})
    console = await served(node, read="open", panels=[DoorPanel(), FailingPanel()])
    try:
        await door.cast("open")
        await wait_until(lambda: door.snapshot().phase == "open")
        _, page = await text(http, f"{console.url}/process?pid={door.pid}")
        assert "Door log" in page
        assert '<td data-label="entry">opened</td>' in page
        assert "you-&gt;&gt;door: open" in page
        assert "this panel failed: RuntimeError(&#39;no panel today&#39;)" in page
        _, other = await text(http, f"{console.url}/process?pid={counter.pid}")
        assert "Door log" not in other
        assert "this panel failed" in other
        async with http.get(f"{console.url}/process/events?pid={door.pid}") as response:
            assert "Door log" in (await next_event(events(response), "panels"))["data"]
    finally:
        await console.close()


async def test_static_files_are_the_pinned_ones_served_for_good(http: aiohttp.ClientSession, node: Node) -> None:
    """Every third-party file shipped is the npm release's, byte for byte (the manifest's sha256;
    Mermaid's after gunzip), and is served under a digest URL with immutable caching, gzip as
    shipped to a browser that takes it and plain to one that does not."""
    manifest = vendor_manifest()
    assert {"htmx.min.js", "sse.min.js", "mermaid.min.js.gz"} == set(manifest)
    for name, entry in manifest.items():
        shipped = (VENDOR / name).read_bytes()
        assert entry["shipped_sha256"] == hashlib.sha256(shipped).hexdigest(), name
        original = gzip.decompress(shipped) if entry.get("compressed") == "gzip" else shipped
        assert entry["sha256"] == hashlib.sha256(original).hexdigest(), name
        assert re.fullmatch(r"\d+\.\d+\.\d+", entry["version"])
        assert entry["npm_integrity"].startswith("sha512-")
    console = await served(node, read="open")
    try:
        _, page = await text(http, console.url + "/processes")
        htmx = re.search(r'src="(/static/htmx\.min\.js\?v=[0-9a-f]{16})"', page)
        assert htmx is not None
        async with http.get(console.url + htmx[1]) as response:
            assert "public, max-age=31536000, immutable" == response.headers["Cache-Control"]
            assert (VENDOR / "htmx.min.js").read_bytes() == await response.read()
        plain = {"Accept-Encoding": "identity"}
        async with http.get(console.url + "/static/mermaid.min.js", headers=plain, auto_decompress=False) as response:
            assert "Content-Encoding" not in response.headers
            assert manifest["mermaid.min.js.gz"]["sha256"] == hashlib.sha256(await response.read()).hexdigest()
        async with http.get(console.url + "/static/mermaid.min.js", auto_decompress=False) as response:
            assert "gzip" == response.headers["Content-Encoding"]
        async with http.get(console.url + "/processes") as response:
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert re.fullmatch(r"app;dur=\d+\.\d\d", response.headers["Server-Timing"])
    finally:
        await console.close()


def test_sessions_are_signed_by_the_token_expire_and_end() -> None:
    """A session cookie is refused when tampered with, made with another token, expired or
    logged out; the forgery token is the session's own."""
    sessions = Sessions(TOKEN, lifetime=100.0)
    session, cookie = sessions.issue("ada\n<b>", now=1000.0)
    assert "ada<b>" == session.name
    assert session == sessions.verify(cookie, now=1050.0)
    assert sessions.verify(cookie, now=1100.0) is None
    assert Sessions(TOKEN + "x").verify(cookie, now=1050.0) is None
    payload, _, signature = cookie.partition(".")
    assert sessions.verify(payload + "." + signature[::-1], now=1050.0) is None
    other, _ = sessions.issue("bob", now=1000.0)
    assert sessions.csrf_matches(session, sessions.csrf(session))
    assert not sessions.csrf_matches(other, sessions.csrf(session))
    sessions.end(session, now=1050.0)
    assert sessions.verify(cookie, now=1060.0) is None
    for _ in range(5):
        assert sessions.login_allowed("10.0.0.1", now=2000.0)
        sessions.login_failed("10.0.0.1", now=2000.0)
    assert not sessions.login_allowed("10.0.0.1", now=2001.0)
    assert sessions.login_allowed("10.0.0.1", now=2061.0)


async def test_a_process_keeps_a_history_only_while_asked(node: Node) -> None:
    """Transitions are recorded only while an observer keeps the history (masked and cut
    short), with pauses and kills noted; once every observer lets go it is dropped."""
    handle = await node.spawn(Secretive, {"told": []})
    process = handle._process
    await handle.cast({"password": "sesame-sesame", "n": 1})
    await wait_until(lambda: len(handle.snapshot().state["told"]) == 1)
    assert [] == process.history()
    process.keep_history(True)
    process.keep_history(True)
    await handle.cast({"password": "open-sesame", "x": "y" * 500})
    await wait_until(lambda: len(handle.snapshot().state["told"]) == 2)
    await handle.pause()
    await wait_until(lambda: len(process.history()) == 2)
    cast, paused = process.history()
    assert cast.input.startswith("cast {'password': '***', 'x': 'yyy")
    assert cast.input.endswith("…")
    assert len(cast.input) == 5 + 160
    assert ("paused", None) == (paused.input, paused.error)
    process.keep_history(False)
    assert 2 == len(process.history())
    process.keep_history(False)
    assert [] == process.history()


async def test_the_fan_out_sleeps_while_nothing_changes(node: Node) -> None:
    """The watch fan-out's ticker waits for a watched process to change instead of ticking on a
    timer: nothing is pushed while nothing changes, and a change is pushed when it comes."""
    from supervisor.control._fanout import WatchFanout

    class Sink:
        def __init__(self) -> None:
            self.frames: list[bytes] = []

        def write_now(self, frame: bytes) -> None:
            self.frames.append(frame)

        def backlog(self) -> int:
            return 0

    handle = await node.spawn(Counter, {"n": 0})
    await handle.call("get")
    fanout = WatchFanout(lambda s: str(s.version).encode(), lambda: 0.0, lambda _, body: body)
    sink = Sink()
    watching = asyncio.ensure_future(fanout.watch(sink, 0, handle._process))
    await wait_until(lambda: fanout._wake is not None and len(sink.frames) == 1)
    assert 1 == fanout.pushes
    await handle.cast(5)
    await wait_until(lambda: len(sink.frames) == 2)
    await wait_until(lambda: fanout._wake is not None)
    assert 2 == fanout.pushes
    await handle.kill()
    await asyncio.wait_for(watching, 5)
    fanout.close()


@pytest.mark.parametrize(
    ("daemon", "key", "problem"),
    [
        ('web = "127.0.0.1:8080"', "daemon.token_file", "reading the web console takes a login"),
        (
            'web = "127.0.0.1:8080"\nweb_read = "open"\nweb_control = true',
            "daemon.token_file",
            "controlling processes from the web console",
        ),
        ('web = "0.0.0.0:8080"\nweb_read = "open"\ntoken_file = "t"', "daemon.web_read", 'must be "token"'),
        ('web = "0.0.0.0:8080"\ntoken_file = "t"', "daemon.web_tls", "must be true when daemon.web is not on loopback"),
        ('web = "127.0.0.1:8080"\nweb_read = "open"\nweb_tls = true', "daemon.web_tls", "needs daemon.tls_cert"),
        ('web = "nowhere"', "daemon.web", "expected host:port"),
        ('web = "127.0.0.1:8080"\nweb_read = "everyone"\ntoken_file = "t"', "daemon.web_read", "expected one of"),
        ("web_control = true", "daemon.web_control", "has no effect without daemon.web"),
    ],
)
def test_the_web_settings_follow_the_control_apis_rules(tmp_path: Path, daemon: str, key: str, problem: str) -> None:
    """daemon.web is checked like daemon.tcp and daemon.metrics: a login needs the token, and
    beyond loopback reading needs it too, over TLS; each mistake names its key and line."""
    path = tmp_path / "statevisor.toml"
    text = f"[daemon]\n{daemon}\n"
    with pytest.raises(ConfigFileError) as caught:
        parse(text, path, kinds=False)
    [error] = [e for e in caught.value.errors if e.key == key]
    assert problem in error.problem
    assert error.line is not None
    assert error.line >= 2


def test_a_good_web_configuration_is_taken(tmp_path: Path) -> None:
    """Loopback with the token and control; beyond loopback with the token and TLS."""
    path = tmp_path / "statevisor.toml"
    config = parse('[daemon]\nweb = "127.0.0.1:8080"\nweb_control = true\ntoken_file = "t"\n', path, kinds=False)
    assert ("127.0.0.1:8080", True, "token", False) == (
        config.daemon.web, config.daemon.web_control, config.daemon.web_read, config.daemon.web_tls
    )  # fmt: skip
    wide = parse(
        '[daemon]\nweb = "0.0.0.0:8443"\nweb_tls = true\ntoken_file = "t"\ntls_cert = "c"\ntls_key = "k"\n',
        path,
        kinds=False,
    )
    assert wide.daemon.web_tls
