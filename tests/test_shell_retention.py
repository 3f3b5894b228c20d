"""Retention of shell processes' logs: what pruning deletes, and what it leaves alone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from processes.shell import Shell, executors
from supervisor import Handle, Lifecycle, Node


async def ended(host: Node, settings: dict[str, Any], *, pid: str, name: str | None = None) -> Handle:
    handle = await host.spawn("shell", settings, pid=pid, name=name)
    await handle.wait(timeout=20)
    assert Lifecycle.FINISHED == handle.snapshot().lifecycle, handle.snapshot().error
    await handle._process.wait_persisted(5)  # prune sees only what the store holds
    return handle


async def test_pruning_deletes_an_unnamed_processs_logs_and_keeps_named_and_chosen_ones(tmp_path: Path) -> None:
    """When retention prunes ended shell processes, an unnamed one's logs (named after its pid)
    go with its record: the live file, its rotated backup and its rotation record. A named
    process's logs (the next process of that name writes on in them) and a file the settings
    chose stay; so do a live process's logs."""
    logs = tmp_path / "logs"
    host = Node(
        machines=[Shell(logs)], executors=executors(tmp_path / "runs"), store=str(tmp_path / "s.db"), retention=0.0
    )
    await host.start()
    rotated = logs / "anon.out.log"
    script = f'seq 1 400; while [ ! -e "{rotated}.1" ]; do sleep 0.02; done; echo last'
    await ended(host, {"argv": ["sh", "-c", script], "log_max_bytes": 1024}, pid="anon")
    await ended(host, {"argv": ["echo", "kept"]}, pid="p-named", name="named")
    await ended(host, {"argv": ["echo", "chosen"], "stdout": "chosen.log"}, pid="p-chosen")
    live = await host.spawn("shell", {"argv": ["sleep", "60"]}, pid="live")
    owned = [rotated, Path(f"{rotated}.1"), logs / ".anon.out.log.rotation", logs / "anon.err.log"]
    kept = [logs / "named.out.log", logs / "named.err.log", logs / "chosen.log"]
    for path in [*owned, *kept, logs / "p-chosen.err.log"]:
        assert path.exists(), path
    await asyncio.sleep(0.01)  # retention 0: a record is pruned once the clock has moved past its end

    assert 3 == await host.prune()

    for path in [*owned, logs / "p-chosen.err.log"]:
        assert not path.exists(), path
    for path in kept:
        assert path.exists(), path
    assert (logs / "live.out.log").exists()
    assert ["kept"] == (logs / "named.out.log").read_text().split()
    await live.kill()
    await host.shutdown(timeout=10)
