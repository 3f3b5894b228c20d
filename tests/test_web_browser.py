"""The web console in a real browser: Debian's headless Chromium, driven by Playwright, against a
real ``statevisor daemon`` serving it.

Nothing here sleeps and hopes: every check waits on what the page shows (Playwright's ``expect``,
with a timeout) or on the daemon's own answer. The screenshots the tests take go to the
directory ``$STATEVISOR_SCREENSHOTS`` names (``docs/images`` refreshes the manual's), else to the
test's temporary directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_daemon import ROOT, free_port, json_lines, kill_if_running, start_daemon

CHROMIUM = "/usr/bin/chromium"
TOKEN = "browser-test-token-0123456789abcdef"
TIMEOUT_MS = 15_000
# The flags every launch takes: no sandbox (root in a container), and nothing that reaches out.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip

# A command that says it started, then waits for files the test makes: step1 makes it write a
# line, step2 makes it end.
SCRIPT = (
    'echo "started"; while [ ! -e step1 ]; do sleep 0.05; done; echo "second line <b>"; '
    "while [ ! -e step2 ]; do sleep 0.05; done; echo done"
)


class WebDaemon:
    """A real daemon with the web console on loopback, control on, reading behind the token."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.web_port = free_port()
        token = directory / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        self.config = directory / "statevisor.toml"
        self.config.write_text(
            f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{self.port}"\n'
            f'web = "127.0.0.1:{self.web_port}"\nweb_control = true\ntoken_file = "token"\n'
            'log_dir = "var/logs"\nrun_dir = "var/runs"\nloop = "asyncio"\n\n'
            '[[process]]\nname = "heartbeat"\nkind = "ticker"\n[process.settings]\ninterval = 0.5\n'
        )
        self.child = start_daemon(self.config, self.port, stdout=subprocess.PIPE)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def inspect(self, name: str) -> dict[str, Any]:
        """The process as the daemon says, through the command line (Playwright's sync API
        holds this thread's event loop)."""
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "inspect", name, "--json", "--config", str(self.config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def stop(self) -> list[dict[str, Any]]:
        self.child.terminate()
        _, err = self.child.communicate(timeout=30)
        return json_lines(err)


def missing() -> list[str]:
    found = [] if os.access(CHROMIUM, os.X_OK) else ["chromium (Debian package chromium)"]
    return found + ([] if shutil.which("chromedriver") else ["chromedriver (Debian package chromium-driver)"])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    running = WebDaemon(tmp_path_factory.mktemp("web"))
    try:
        yield running
    finally:
        kill_if_running(running.child)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    if missing():
        pytest.fail(f"missing {', '.join(missing())}: run the test command (bash .ci/test), which installs them")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        yield running


def chromium(playwright: Any, profile: Path, **options: Any) -> Any:
    """Debian's Chromium, headless, with a fresh profile; never a browser Playwright downloads."""
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, **options
    )


@pytest.fixture(scope="module")
def browser(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    context = chromium(playwright, tmp_path_factory.mktemp("chromium-profile"), viewport={"width": 1280, "height": 900})
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = os.environ.get("STATEVISOR_SCREENSHOTS")
    directory = (ROOT / where) if where else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def log_in(page: Any, daemon: WebDaemon, then: str = "/processes") -> None:
    page.goto(f"{daemon.url}{then}")
    page.wait_for_url(re.compile(r"/login\?next="))  # reading takes the token: sent to the login
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_label("Your name").fill("browser test")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(then) + "$"))


def current_phase(page: Any) -> str:
    """The phase the drawn diagram highlights: the state node that carries the class ``current``."""
    found = page.locator(".diagram .mermaid-view svg g.current")
    text: str = (found.first.text_content(timeout=TIMEOUT_MS) or "").strip()
    return text


def test_a_process_seen_from_the_list_to_its_end_in_the_browser(daemon: WebDaemon, browser: Any, shots: Path) -> None:
    """Spawned from the console, a shell process shows in the list; its page draws its
    machine's diagram with the current phase highlighted; a new log line appears without a
    reload; the pause button pauses it for real (and, once the session is gone, is refused and
    the process left running); its end arrives live: the new phase highlighted, the
    transition in the history, and the lifecycle finished."""
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    log_in(page, daemon)

    # Spawn from the list's form (htmx), then find the process in the list.
    spawn = page.locator("details.spawn")
    spawn.get_by_text("Spawn a process").click()
    spawn.get_by_label("Kind", exact=True).select_option("shell")
    spawn.get_by_label("Name").fill("web-demo")
    settings = {"argv": ["sh", "-c", SCRIPT], "cwd": str(daemon.directory)}
    spawn.get_by_label("Settings").fill(json.dumps(settings))
    spawn.get_by_role("button", name="Spawn").click()
    expect(page.locator("#spawn-result")).to_contain_text("Spawned web-demo")
    page.goto(f"{daemon.url}/processes")
    row = page.locator("table.processes tbody tr", has_text="web-demo")
    expect(row).to_contain_text("shell")
    expect(row).to_contain_text("running")
    page.screenshot(path=str(shots / "web-processes.png"), full_page=True)

    # Its page: the diagram drawn with "running" highlighted, the first line of its log.
    row.get_by_role("link", name="web-demo").click()
    page.wait_for_url(re.compile(r"/process\?pid="))
    expect(page.locator(".diagram .mermaid-view svg")).to_be_visible()
    assert "running" == current_phase(page)
    log = page.locator("#log-stdout")
    expect(log).to_contain_text("started")

    # A new line of its log arrives without a reload (escaped: shown as text, not markup).
    (daemon.directory / "step1").touch()
    expect(log).to_contain_text("second line <b>")

    # Pause, for real: the page says so live, and so does the daemon.
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#action-result")).to_contain_text("Paused.")
    expect(page.locator("#facts")).to_contain_text("paused")
    assert daemon.inspect("web-demo")["paused"]
    page.screenshot(path=str(shots / "web-process.png"), full_page=True)
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#action-result")).to_contain_text("Resumed.")
    assert not daemon.inspect("web-demo")["paused"]

    # Without control rights (the session gone), the button is refused and nothing happens.
    browser.clear_cookies()
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#action-result")).to_contain_text("Refused: log in with the daemon")
    assert not daemon.inspect("web-demo")["paused"]

    # Its end arrives on the open page: phase, lifecycle, history, diagram.
    (daemon.directory / "step2").touch()
    expect(page.locator("#facts")).to_contain_text("finished")
    expect(page.locator(".live-phase")).to_have_text("ended")
    expect(page.locator("#history")).to_contain_text("goto ended")
    expect(page.locator(".diagram")).to_have_attribute("data-drawn-phase", "ended")
    assert "ended" == current_phase(page)
    expect(log).to_contain_text("done")
    assert [] == [e for e in errors if "Content Security Policy" in e or "Refused to" in e], errors
    page.close()


def test_the_console_by_keyboard_and_on_a_narrow_screen(daemon: WebDaemon, browser: Any, shots: Path) -> None:
    """The supervision tree shows the declared process; the keyboard reaches the skip link
    first, and it leads to the content; on a phone-sized screen the tables become labelled
    cards."""
    from playwright.sync_api import expect

    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    log_in(page, daemon, "/tree")
    expect(page.locator("main")).to_contain_text("heartbeat")
    page.screenshot(path=str(shots / "web-tree.png"), full_page=True)
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_be_visible()
    page.close()

    narrow = browser.new_page()
    narrow.set_viewport_size({"width": 390, "height": 844})
    narrow.set_default_timeout(TIMEOUT_MS)
    narrow.goto(f"{daemon.url}/processes")
    cell = narrow.locator("table.processes tbody tr", has_text="heartbeat").locator('td[data-label="Kind"]')
    expect(cell).to_be_visible()
    # Asked again until it holds: the live list may replace the row between two looks at it.
    expect(cell).to_have_css("display", "block")
    narrow.screenshot(path=str(shots / "web-narrow.png"), full_page=True)
    narrow.close()


def test_pages_read_whole_without_javascript(daemon: WebDaemon, playwright: Any, tmp_path: Path) -> None:
    """The server renders every page whole: a browser with JavaScript off reads the list and a
    process's page (its state, history and diagram source) after logging in with a plain form."""
    from playwright.sync_api import expect

    context = chromium(playwright, tmp_path / "profile", java_script_enabled=False)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        log_in(page, daemon)
        row = page.locator("table.processes tbody tr", has_text="heartbeat")
        expect(row).to_contain_text("ticker")
        row.get_by_role("link", name="root/heartbeat").click()
        expect(page.locator("#state")).to_contain_text('"ticks"')
        expect(page.locator("#facts")).to_contain_text("Waiting on")
        expect(page.get_by_role("heading", name="Recent transitions")).to_be_visible()
    finally:
        context.close()


def test_the_daemon_logs_the_console_and_who_acted(daemon: WebDaemon) -> None:
    """The daemon names the console's address when it starts, and its log says who paused what
    from the console; its metrics count the console's pages and actions. (Runs last: it stops
    the daemon.)"""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert re.search(r'^statevisor_web_actions_total\{action="pause"\} [1-9]', metrics, re.M), metrics
    assert re.search(r"^statevisor_web_requests_total [1-9]", metrics, re.M)
    logs = daemon.stop()
    [started] = [e for e in logs if e["event"] == "daemon_started"]
    assert daemon.url == started["web"]
    actions = [(e["action"], e["name"], e["by"]) for e in logs if e["event"] == "web_action"]
    assert ("pause", "web-demo") == actions[1][:2]
    assert actions[1][2].startswith("browser test (session ")
    assert any(e["event"] == "web_refused" and e["reason"] == "not logged in" for e in logs)


@pytest.mark.timeout(300)
def test_the_cluster_page_in_the_browser(
    playwright: Any, browser: Any, shots: Path, tmp_path: Path, nats_cluster: Any
) -> None:
    """On a cluster member's console, the navigation links the cluster page, which shows the
    three members (this daemon marked, each lease as a bar) and the processes with their owners;
    the "where is" form answers a process's owner in place; when b is killed its row leaves the
    page without a reload."""
    from concurrent.futures import ThreadPoolExecutor

    from playwright.sync_api import expect

    from tests.test_web_cluster import WebCluster, spawn_steppers

    members = WebCluster(tmp_path, nats_cluster, lease=3.0)
    try:
        members.start_all()

        async def spawn() -> dict[str, str | None]:
            async with members.client("a") as client:
                pids = await spawn_steppers(client, 12)
                return {p.snapshot.pid: p.owner for p in await client.placed() if p.snapshot.pid in pids}

        # Playwright's sync API holds this thread's event loop: the client runs on another thread.
        with ThreadPoolExecutor(1) as thread:
            placed = thread.submit(asyncio.run, spawn()).result(timeout=120)
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"{members.url('a')}/processes")
        page.get_by_role("link", name="Cluster").click()
        page.wait_for_url(re.compile(r"/cluster$"))
        for node in ("a", "b", "c"):
            expect(page.locator(f'#members tr[data-member="{node}"]')).to_be_visible()
        expect(page.locator('#members tr[data-member="a"]')).to_contain_text("this daemon")
        expect(page.locator("#members meter")).to_have_count(3)
        expect(page.locator("table.placed tbody tr")).to_have_count(len(placed))
        pid, owner = next((pid, owner) for pid, owner in placed.items() if owner == "b")
        expect(page.locator(f'tr[data-pid="{pid}"] td[data-label="Owner"]')).to_contain_text("b")
        # b's count comes with its heartbeats (every third of a lease), and the page's next push.
        expect(page.locator('#members tr[data-member="b"] td[data-label="Processes owned"]')).not_to_have_text("0")
        page.screenshot(path=str(shots / "web-cluster.png"), full_page=True)

        page.get_by_label("Process id").fill(pid)
        page.get_by_role("button", name="Find its owner").click()
        expect(page.locator("#where-answer")).to_contain_text(f"owned by {owner}")
        assert page.url.endswith("/cluster")  # answered in place, by htmx

        members.kill("b")
        expect(page.locator('#members tr[data-member="b"]')).to_have_count(0, timeout=30_000)
        moved = page.locator(f'tr[data-pid="{pid}"] td[data-label="Owner"] .owner')
        expect(moved).to_have_text(re.compile(r"^[ac]$"), timeout=30_000)
        page.close()
    finally:
        members.close()
