"""Protocol roles as statevisor processes on a node: over a real in-process channel, unix and TCP
sockets and a pty pair, with faults injected into the real links; watched, paused, resumed,
killed, restarted mid-run; refused when the versions differ."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from processes.protocol import ProtocolExecutor, ProtocolRole, executors, register, run_sequence
from processes.protocol._transcript import last_run, load
from processes.protocol.examples.bootloader import erased_after_written, read_wear_log
from supervisor import Handle, Lifecycle, Node, SettingsError
from tests.helpers import wait_for_snapshot, wait_until
from tests.services.loopback import free_port
from tests.test_protocol_sim import OLD

SECTOR = 16384


class Roles:
    """A node running the protocol kind, in a directory of its own."""

    def __init__(self, directory: Path, *, store: bool = False) -> None:
        self.directory = directory
        self.store = str(directory / "store.db") if store else None
        self.node: Node | None = None

    async def start(self) -> Node:
        table = executors(self.directory / "run", self.directory / "logs")
        self.executor: ProtocolExecutor = table["protocol.run"]
        self.node = Node(machines=[ProtocolRole], executors=table, store=self.store)
        await self.node.start()
        return self.node

    def image(self, size: int, seed: int = 1) -> bytes:
        image = bytes((i * 7 + seed) % 251 for i in range(size))
        (self.directory / "image.bin").write_bytes(image)
        return image

    async def flash(self, link: str, *, host: dict[str, Any] | None = None, client: dict[str, Any] | None = None,
                    flash_size: int = 1 << 20, **common: Any) -> tuple[Handle, Handle]:  # fmt: skip
        assert self.node is not None
        options = {"flash": str(self.directory / "flash.bin"), "size": flash_size, "sector_size": SECTOR,
                   "wear_log": True}  # fmt: skip
        client_settings = {"protocol": "bootloader", "role": "client", "link": link, "options": options, **common}
        host_settings = {"protocol": "bootloader", "role": "host", "link": link,
                         "options": {"image": str(self.directory / "image.bin")}, **common}  # fmt: skip
        client_handle = await self.node.spawn(ProtocolRole, {**client_settings, **(client or {})}, name="client")
        host_handle = await self.node.spawn(ProtocolRole, {**host_settings, **(host or {})}, name="host")
        return host_handle, client_handle

    def flashed(self) -> bytes:
        return (self.directory / "flash.bin").read_bytes()

    def wear(self) -> list[tuple[Any, ...]]:
        return read_wear_log(self.directory / "flash.bin.wear")


@pytest.fixture
async def roles(tmp_path: Path) -> AsyncIterator[Roles]:
    running = Roles(tmp_path)
    await running.start()
    yield running
    if running.node is not None:
        await running.node.shutdown()


def links(directory: Path) -> dict[str, str]:
    return {
        "channel": "channel:flash",
        "unix": f"unix:{directory / 'flash.sock'}",
        "tcp": f"tcp:127.0.0.1:{free_port()}",
        "pty": f"pty:{directory / 'ttyFLASH'}",
    }


FAULTS = {"drop": 0.03, "duplicate": 0.03, "corrupt": 0.03, "delay": 0.03, "delay_max": 0.003}


@pytest.mark.parametrize("transport", ["channel", "unix", "tcp", "pty"])
@pytest.mark.parametrize("faulty", [False, True], ids=["clean", "faults"])
async def test_the_bootloader_flashes_over_each_link(roles: Roles, transport: str, faulty: bool) -> None:
    """A host flashes a 100 KiB image into a client's emulated flash over each kind of link;
    with faults injected into the real link (drops, duplicates, flipped bits, delays, and
    reordering on the channel, which allows it) the run still completes: both processes
    finish in boot, the flash holds the image and booted it, no sector was erased after a
    chunk was written into it, and the faults showed (retransmissions, rejected frames)."""
    image = roles.image(100_000)
    faults = {**FAULTS, "reorder": 0.03} if transport == "channel" else FAULTS
    common: dict[str, Any] = {"retransmit": [0.005, 0.1]}
    host, client = await roles.flash(
        links(roles.directory)[transport],
        host={"faults": {**faults, "seed": 1}} if faulty else None,
        client={"faults": {**faults, "seed": 2}} if faulty else None,
        **common,
    )
    ended = await host.wait(timeout=60)
    assert Lifecycle.FINISHED == ended.lifecycle, ended.error
    assert "boot" == ended.result["terminal"]
    assert Lifecycle.FINISHED == (await client.wait(timeout=30)).lifecycle
    assert image == roles.flashed()[: len(image)]
    assert (roles.directory / "flash.bin.boot").exists()
    assert [] == erased_after_written(roles.wear(), SECTOR)
    if faulty:
        assert ended.result["retransmissions"] > 0
        assert ended.state["rejected"] + ended.state["corrupt"] + (await client.snapshot()).state["corrupt"] > 0


async def test_a_watch_shows_the_protocol_its_step_index_and_bytes(roles: Roles) -> None:
    """A role's snapshots say which protocol it speaks, which step it is in and its index, and
    how many bytes and steps it moved; at the end, its result says how the run ended."""
    image = roles.image(400_000)
    host, client = await roles.flash("channel:watched", report_every=0.01)
    moving = await wait_for_snapshot(host, lambda s: s.state.get("step") == "write_next_chunk")
    state = moving.state
    assert ("bootloader", "host") == (state["protocol"], state["role"])
    assert state["step"] in ("erase_sector", "write_next_chunk")
    assert state["seq"] >= state["index"] >= 1
    ended = await host.wait(timeout=60)
    assert ("ended", "boot", "done") == (ended.phase, ended.state["step"], ended.state["outcome"])
    assert ended.state["bytes"] >= len(image)
    assert len(image) // 256 + len(image) // SECTOR + 2 <= ended.result["steps"]
    await client.wait(timeout=30)


async def test_pausing_a_role_holds_the_run_and_the_peer_keeps_waiting(roles: Roles) -> None:
    """A paused host sends no step; it tells its client to keep waiting, so the client does not
    time out even through a pause longer than its step timeout; resumed, the run completes."""
    image = roles.image(600_000)
    host, client = await roles.flash("channel:paused", report_every=0.01, step_timeout=0.6)
    await wait_for_snapshot(host, lambda s: s.state.get("seq", 0) > 20)
    await host.pause()
    # A paused process takes no report: its session says it holds.
    await wait_until(lambda: "paused" in roles.executor.sessions[host.pid].report()["held"])
    session = roles.executor.sessions[client.pid]
    driver = session.driver
    assert driver is not None
    before = driver.holds
    await wait_until(lambda: driver.holds > before)  # the pause's first hold: what was in flight has landed
    heard, seq = driver.holds, driver.seq
    # Three more of the host's hold frames come a step timeout apart at least: the client waited
    # longer than its step timeout, and no step was taken meanwhile.
    await wait_until(lambda: driver.holds >= heard + 3, timeout=20)
    assert seq == driver.seq
    assert not client.done()
    await host.resume()
    ended = await host.wait(timeout=60)
    assert "boot" == ended.result["terminal"], ended.error
    assert image == roles.flashed()[: len(image)]


async def test_killing_a_role_aborts_the_run_on_both_sides(roles: Roles) -> None:
    """Killing the host mid-run ends it killed and tells the client, which takes the abort path
    at once (it does not wait for its step timeout) and fails saying why."""
    roles.image(600_000)
    host, client = await roles.flash("channel:killed", report_every=0.01, step_timeout=30.0)
    await wait_for_snapshot(host, lambda s: s.state.get("seq", 0) > 20)
    await host.kill("enough")
    ended = await client.wait(timeout=10)
    assert Lifecycle.FAILED == ended.lifecycle
    assert "killed: the process was killed" in (ended.error or "")
    assert "abort" == ended.state["terminal"]
    assert not (roles.directory / "flash.bin.boot").exists()


async def test_an_older_client_is_refused_at_start_and_both_abort(roles: Roles) -> None:
    """A client speaking version 1 of the bootloader answers a version 2 host: the host refuses
    it at start; both processes fail in the abort step, saying which versions met."""
    register(OLD)
    roles.image(10_000)
    host, client = await roles.flash("channel:versions", client={"protocol": "bootloader@1"})
    host_end, client_end = await host.wait(timeout=30), await client.wait(timeout=30)
    for ended in (host_end, client_end):
        assert Lifecycle.FAILED == ended.lifecycle
        assert ("abort", "aborted") == (ended.state["terminal"], ended.state["outcome"])
        assert "speaks bootloader version 1; this host speaks version 2" in (ended.error or "")
    assert [] == roles.wear()


async def test_a_node_restarted_mid_run_resumes_both_roles_from_their_records(tmp_path: Path) -> None:
    """A node with its store shut down mid-run (its processes detached, their sessions closed)
    and started again revives both roles: each replays its record and the run goes on from
    where it was, to a flash that holds the image, no sector erased after it was written."""
    roles = Roles(tmp_path, store=True)
    await roles.start()
    image = roles.image(600_000)
    host, _ = await roles.flash(f"unix:{tmp_path / 'flash.sock'}", report_every=0.01)
    await wait_for_snapshot(host, lambda s: s.state.get("seq", 0) > 100)
    assert roles.node is not None
    await roles.node.shutdown()
    node = await roles.start()
    try:
        # Both handles at once: either role may end before the other's wait returns.
        revived, client = node.runtime.find("host"), node.runtime.find("client")
        ended = await revived.wait(timeout=60)
        assert "boot" == ended.result["terminal"], ended.error
        assert ended.state["resumed_from"] > 100
        await client.wait(timeout=30)
        assert image == roles.flashed()[: len(image)]
        assert [] == erased_after_written(roles.wear(), SECTOR)
    finally:
        await node.shutdown()


async def test_the_transcript_is_the_role_s_log_and_draws_its_sequence(roles: Roles) -> None:
    """A role's log is its run's transcript, one JSON event a line (steps folded); the last
    run's events draw its sequence diagram, from the start step to the boot."""
    roles.image(40_000)
    host, client = await roles.flash("channel:transcript")
    await host.wait(timeout=30)
    await client.wait(timeout=30)
    lines = await client.logs("stdout", 1000)
    events = last_run(load(lines))
    assert {"event": "start", "records": 0, "link": "channel:transcript"} == events[0]
    steps = [e["step"] for e in events if "count" in e]
    assert ["start", "erase_sector", "write_next_chunk", "erase_sector", "write_next_chunk"] == steps[:5]
    assert "boot" == steps[-1]
    assert {"end": "done", "terminal": "boot"} == {k: events[-1][k] for k in ("end", "terminal")}
    json.dumps(events)  # plain values, as the command prints them


async def test_a_console_draws_a_role_s_last_run_from_its_log_or_its_record(roles: Roles) -> None:
    """run_sequence, the plain function a console calls, draws the same steps from a role's log
    lines as from its record file, the boot and the run's end included; it takes one source."""
    roles.image(20_000)
    host, client = await roles.flash("channel:console")
    await host.wait(timeout=30)
    await client.wait(timeout=30)
    from_log = run_sequence(transcript=await host.logs("stdout", 1000))
    from_record = run_sequence(record=roles.executor.record_path(host.pid), protocol="bootloader")
    for diagram in (from_log, from_record):
        assert diagram.startswith("sequenceDiagram\n")
        assert "host->>client: 1 start: Start(" in diagram
        assert "Note over host,client: done at boot" in diagram
    with pytest.raises(TypeError, match="one of them"):
        run_sequence()


async def test_the_web_console_draws_a_role_s_run_on_its_page_and_live(roles: Roles) -> None:
    """The protocol kind's panel, loaded from its entry point as the daemon loads it, shows on a
    role's page the sequence diagram of its run (the start and, once done, the boot), and the
    page's event stream carries it; other kinds' pages do not get it."""
    import aiohttp

    from processes.protocol._panel import SequencePanel
    from supervisor.daemon.plugins import load_panels
    from tests.test_web import events, next_event, served, text

    panels, problems = load_panels()
    assert [] == problems
    assert any(isinstance(panel, SequencePanel) for panel in panels)
    assert roles.node is not None
    console = await served(roles.node, read="open", panels=panels)
    try:
        roles.image(20_000)
        host, client = await roles.flash("channel:panel")
        await host.wait(timeout=30)
        await client.wait(timeout=30)
        async with aiohttp.ClientSession() as http:
            _, page = await text(http, f"{console.url}/process?pid={host.pid}")
            assert "Sequence of the run" in page
            assert "host-&gt;&gt;client: 1 start: Start(" in page
            assert "Note over host,client: done at boot" in page
            async with http.get(f"{console.url}/process/events?pid={client.pid}") as response:
                update = await next_event(events(response), "panels", "Sequence of the run")
                assert "done at boot" in update["data"]
    finally:
        await console.close()
    assert not SequencePanel().applies_to("shell")


async def test_the_sensor_protocol_commits_its_configuration(roles: Roles) -> None:
    """The second protocol on the kind: a host sets a sensor's configuration over a unix socket;
    the sensor's file holds the desired values under the next version."""
    config = roles.directory / "sensor.json"
    config.write_text(json.dumps({"model": "T-100", "version": 4, "config": {"rate": 10, "unit": "C"}}))
    assert roles.node is not None
    link = f"unix:{roles.directory / 'sensor.sock'}"
    client = await roles.node.spawn(
        ProtocolRole, {"protocol": "sensor-config", "role": "client", "link": link, "options": {"config": str(config)}}
    )
    host = await roles.node.spawn(
        ProtocolRole, {"protocol": "sensor-config", "role": "host", "link": link, "options": {"desired": {"rate": 50}}}
    )
    ended = await host.wait(timeout=30)
    assert "commit" == ended.result["terminal"], ended.error
    await client.wait(timeout=30)
    assert {"model": "T-100", "version": 5, "config": {"rate": 50, "unit": "C"}} == json.loads(config.read_text())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"protocol": "nonesuch", "role": "host", "link": "channel:x"}, "protocol: no such protocol; registered: "),
        ({"protocol": "bootloader", "role": "boss", "link": "channel:x"}, "role: expected 'host' or 'client'"),
        ({"protocol": "bootloader", "role": "host", "link": "serial"}, "link: 'serial' is not a link address"),
        ({"protocol": "bootloader", "role": "host", "link": "channel:x"}, "options.image: the host needs the image"),
        (
            {"protocol": "bootloader", "role": "client", "link": "unix:/x", "options": {"flash": "f"},
             "faults": {"reorder": 0.1}},
            "faults.reorder: a unix link is a stream",
        ),
        ({"protocol": "bootloader", "role": "client", "link": "channel:x", "tries": 3}, "tries: unknown setting"),
    ],
)  # fmt: skip
async def test_settings_are_checked_when_spawned_naming_the_key(
    roles: Roles, settings: dict[str, Any], message: str
) -> None:
    """Settings a role cannot run with are refused at spawn, the error naming the key."""
    assert roles.node is not None
    with pytest.raises(SettingsError, match=message):
        await roles.node.spawn(ProtocolRole, settings)


async def test_the_executor_exports_its_metrics(roles: Roles) -> None:
    """While roles run, the executor's metric families count them by protocol and role (no
    process ids); ended runs are counted by outcome."""
    roles.image(300_000)
    host, client = await roles.flash("channel:metrics", report_every=0.01)
    await wait_for_snapshot(host, lambda s: s.state.get("seq", 0) > 10)
    families = {f.name: f for f in roles.executor.metric_families()}
    sessions = {tuple(s.labels.values()): s.value for s in families["statevisor_protocol_sessions"].samples}
    assert {("bootloader", "client"): 1, ("bootloader", "host"): 1} == sessions
    assert all(s.value > 0 for s in families["statevisor_protocol_steps"].samples)
    await host.wait(timeout=60)
    await client.wait(timeout=30)
    await roles.node.shutdown()  # type: ignore[union-attr]
    roles.node = None
    ended = {tuple(s.labels.values()): s.value for s in next(
        f for f in roles.executor.metric_families() if f.name == "statevisor_protocol_runs_ended").samples}  # fmt: skip
    assert 1 == ended[("bootloader", "host", "done")]
    assert 1 == ended[("bootloader", "client", "done")]
