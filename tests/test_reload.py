"""A configuration reload (SIGHUP) in process: what it does when a new process cannot start."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from structlog.testing import capture_logs

from processes import CATALOG
from supervisor import Handle, Host, SupervisorSpec
from supervisor.config import Config, load
from supervisor.daemon import child_spec, reload

TICKER = '[[process]]\nname = "{name}"\nkind = "ticker"\n[process.settings]\ninterval = 60.0\n\n'


def write(path: Path, names: list[str]) -> Config:
    path.write_text('[daemon]\nstore = "s.db"\n\n' + "".join(TICKER.format(name=n) for n in names))
    return load(path, CATALOG)


async def test_a_process_a_reload_cannot_start_is_reported_and_tried_again_by_the_next(tmp_path: Path) -> None:
    """A reload adding two processes while the store is locked by another writer starts
    neither, says so for each (reload_start_failed, and the reloaded line's failed list), and
    leaves them out of the running configuration; the next reload, with the store free, starts
    both. The process already running is not touched."""
    config = write(tmp_path / "statevisor.toml", ["a"])
    root = SupervisorSpec("root", [child_spec(p, CATALOG.kinds) for p in config.processes])
    machines, executors = CATALOG.build(config)
    host = Host(machines=machines, executors=executors, store=str(config.daemon.store), root=root, busy_timeout=0.05)
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
                await reload(host, current, CATALOG)
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
            await reload(host, current, CATALOG)
        reloaded = next(e for e in logged if e["event"] == "reloaded")
        assert (["b", "c"], []) == (reloaded["added"], reloaded["failed"])
        assert ["a", "b", "c"] == [p.name for p in current[0].processes]
        assert all(isinstance(child, Handle) and not child.done() for child in host.root.children().values())
        assert before is host.root.child("a")
    finally:
        await host.shutdown()
