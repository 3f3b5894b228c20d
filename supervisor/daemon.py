"""``statevisor daemon``: run a Host from a configuration file until told to stop.

What exists now: the configuration, the SQLite store and recovery, the supervised processes it
declares, metrics on loopback, structured logs, bounded graceful shutdown on SIGTERM/SIGINT.
The control socket, remote handles, SIGHUP reload and the full metric set are issue #5's.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from ._host import Host
from ._supervisor import ChildSpec, SupervisorSpec
from .config import Config
from .logs import configure

log = structlog.get_logger("statevisor.daemon")


def build_host(config: Config, kinds: dict[str, Any]) -> Host:
    children = [
        ChildSpec(
            p.name,
            machine=kinds[p.kind],
            state=dict(p.settings),
            restart=p.restart,
            depends_on=p.depends_on,
        )
        for p in config.processes
    ]
    return Host(
        machines=list(kinds.values()),
        store=str(config.daemon.store),
        slots=dict(config.daemon.slots),
        kill_grace=config.daemon.kill_grace,
        retention=config.daemon.retention_days * 86_400,
        root=SupervisorSpec("root", children),
    )


async def serve(config: Config, kinds: dict[str, Any], *, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status."""
    from .metrics import start_metrics

    config.daemon.store.parent.mkdir(parents=True, exist_ok=True)
    host = build_host(config, kinds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    report = await host.start()
    server = start_metrics(host, config.daemon.metrics)
    log.info(
        "daemon_started",
        config=str(config.path),
        store=str(config.daemon.store),
        metrics=config.daemon.metrics,
        revived=report.revived,
        quarantined=len(report.quarantined),
        processes=len(host.runtime),
    )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("daemon_stopping", timeout=config.daemon.shutdown_timeout)
        server.shutdown()
        await host.shutdown(timeout=config.daemon.shutdown_timeout)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("daemon_stopped")
    return 0


def run(config: Config, kinds: dict[str, Any]) -> int:
    configure(config.daemon.log_level)
    if config.daemon.loop == "uvloop":
        import uvloop

        return uvloop.run(serve(config, kinds))
    return asyncio.run(serve(config, kinds))
