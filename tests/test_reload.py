"""A configuration reload (SIGHUP) in process: what it does when a new process cannot start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from structlog.testing import capture_logs

from supervisor import Handle
from supervisor.daemon.config import Config, load
from supervisor.daemon.service import build_node, reload

TICKER = '[[process]]\nname = "{name}"\nkind = "ticker"\n[process.settings]\ninterval = 60.0\n\n'


def write(path: Path, names: list[str], daemon: str = "") -> Config:
    path.write_text(f'[daemon]\nstore = "s.db"\n{daemon}\n' + "".join(TICKER.format(name=n) for n in names))
    return load(path)


async def test_a_process_a_reload_cannot_start_is_reported_and_tried_again_by_the_next(tmp_path: Path) -> None:
    """A reload adding two processes while the store is locked by another writer starts
    neither, says so for each (reload_start_failed, and the reloaded line's failed list), and
    leaves them out of the running configuration; the next reload, with the store free, starts
    both. The process already running is not touched."""
    config = write(tmp_path / "statevisor.toml", ["a"])
    host = build_node(config)
    host.busy_timeout = 0.05  # a locked store is found out at once
    await host.start()
    current = [config]
    before = host.root.child("a")
    assert isinstance(before, Handle)
    try:
        write(config.path, ["a", "b", "c"])
        foreign = sqlite3.connect(config.daemon.store, isolation_level=None)
        foreign.execute("BEGIN EXCLUSIVE")
        try:
            with capture_logs() as logged:
                await reload(host, current)
        finally:
            foreign.execute("COMMIT")
            foreign.close()
        failures = [e for e in logged if e["event"] == "reload_start_failed"]
        assert ["b", "c"] == [e["child"] for e in failures]
        assert "locked" in failures[0]["error"]
        assert ["b", "c"] == next(e for e in logged if e["event"] == "reloaded")["failed"]
        assert ["a"] == [p.name for p in current[0].processes]
        assert ["a"] == list(host.root.children())
        with capture_logs() as logged:
            await reload(host, current)
        reloaded = next(e for e in logged if e["event"] == "reloaded")
        assert (["b", "c"], []) == (reloaded["added"], reloaded["failed"])
        assert ["a", "b", "c"] == [p.name for p in current[0].processes]
        assert all(isinstance(child, Handle) and not child.done() for child in host.root.children().values())
        assert before is host.root.child("a")
    finally:
        await host.shutdown()


async def test_a_reload_changes_the_log_level_at_once_and_names_the_daemon_keys_that_must_wait(
    tmp_path: Path,
) -> None:
    """log_level is the one [daemon] key a running daemon takes at once: debug lines appear
    right after the reload; the keys that need a restart (here the metrics address) are named
    in the warning, log_level not among them."""
    import io

    import structlog

    from supervisor.daemon.log import configure

    configure("info", json=True, stream=io.StringIO())
    config = write(tmp_path / "statevisor.toml", ["a"])
    host = build_node(config)
    await host.start()
    probe = structlog.get_logger("probe")
    try:
        with capture_logs() as logged:
            probe.debug("before")
            write(config.path, ["a"], daemon='log_level = "debug"\nmetrics = "127.0.0.1:1"\n')
            await reload(host, [config])
            probe.debug("after")
        events = [e["event"] for e in logged]
        assert "before" not in events
        assert "after" in events
        changed = next(e for e in logged if e["event"] == "log_level_changed")
        assert ("info", "debug") == (changed["before"], changed["after"])
        assert ["metrics"] == next(e for e in logged if e["event"] == "reload_daemon_settings_need_restart")["keys"]
    finally:
        await host.shutdown()
        structlog.reset_defaults()
