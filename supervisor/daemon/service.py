"""``statevisor daemon``: run a node from a configuration file until told to stop.

What it runs: the configuration, the store (SQLite, or a cluster's) and recovery, the supervised
processes it declares, metrics on loopback, the web console when configured, structured logs
written off the loop, bounded graceful shutdown on SIGTERM/SIGINT, configuration reload on
SIGHUP, task stacks on SIGUSR1, the control socket (owner-only), a watchdog of its event loop,
systemd's notify protocol, and an open-files limit raised for itself (not for the commands it
starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .._core.machine import Machine
from .._errors import StatevisorError
from .._files.open_files import raise_open_files_limit
from .._files.private import private_directory
from .._store.protocol import Store
from .._supervision.kind import KindSetup
from .._supervision.node import Node
from .._supervision.supervisor import ChildSpec, SupervisorSpec
from .config import Config, ConfigFileError, DaemonSettings, ProcessSettings, load
from .log import configure, set_level
from .systemd import SystemdNotifier
from .watchdog import LoopWatchdog

if TYPE_CHECKING:
    from ..web import ClusterSource, WebConsole, WebStatistics

log = structlog.get_logger("statevisor.daemon")


def read_token(path: Path, key: str = "daemon.token_file") -> str:
    """A TCP token (``key`` names the setting); its file must be private to its owner and the
    token at least 16 characters (secrets never logged)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigFileError(str(path), key, None, f"must be readable by its owner only (mode {mode:o})")
    token = path.read_text().strip()
    if len(token) < 16:
        raise ConfigFileError(str(path), key, None, "the token must be at least 16 characters")
    return token


def tls_context(settings: DaemonSettings) -> ssl.SSLContext:
    """The server side of TLS for the daemon's TCP listeners (control and metrics)."""
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigFileError("", "daemon.tls_cert", None, "tls_cert and tls_key are both needed for TLS")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def check_tokens(settings: DaemonSettings) -> None:
    """Read every configured token once, so that a bad token file stops the start, named."""
    if settings.token_file is not None:
        read_token(settings.token_file)
    if settings.metrics_token_file is not None:
        read_token(settings.metrics_token_file, "daemon.metrics_token_file")


def tcp_options(config: Config) -> dict[str, Any]:
    settings = config.daemon
    if settings.tcp is None or settings.token_file is None:
        return {}
    host, _, port = settings.tcp.rpartition(":")
    tls = tls_context(settings) if settings.tls_cert is not None and settings.tls_key is not None else None
    return {"tcp": (host.strip("[]"), int(port)), "token": read_token(settings.token_file), "tls": tls}


def web_console(node: Node, settings: DaemonSettings, cluster: ClusterSource | None = None) -> WebConsole | None:
    """The web console ``daemon.web`` asks for (a :class:`supervisor.web.WebConsole`, not started),
    with the panels installed packages declare, and the cluster page when ``cluster`` is given;
    None when it is not configured."""
    if settings.web is None:
        return None
    from ..web import WebConsole
    from .plugins import load_panels

    panels, problems = load_panels()
    for problem in problems:
        log.error("web_panel_not_loaded", problem=problem, note="the console serves without it")
    host, _, port = settings.web.rpartition(":")
    return WebConsole(
        node,
        host.strip("[]"),
        int(port),
        token=read_token(settings.token_file) if settings.token_file is not None else None,
        tls=tls_context(settings) if settings.web_tls else None,
        control=settings.web_control,
        read=settings.web_read,
        panels=panels,
        cluster=cluster,
    )


def child_spec(process: ProcessSettings, kinds: Mapping[str, type[Machine[Any]]]) -> ChildSpec:
    return ChildSpec(
        process.name,
        machine=kinds[process.kind],
        state=dict(process.settings),
        restart=process.restart,
        depends_on=process.depends_on,
        backoff=process.backoff,
        budget=process.budget,
    )


def build_node(config: Config, store: Store | None = None) -> Node:
    """The node a configuration describes: its kinds built from the daemon's settings, its
    declared processes under the root supervisor; on ``store`` when given (a cluster's), else
    on the configured SQLite file."""
    kinds = config.catalog.machines
    children = [child_spec(p, kinds) for p in config.processes]
    setup = KindSetup(config.path.parent, config.daemon.log_dir, config.daemon.run_dir, config.tables)
    machines, executors = config.catalog.build(setup)
    return Node(
        machines=machines,
        executors=executors,
        store=store if store is not None else str(config.daemon.store),
        slots=dict(config.daemon.slots),
        kill_grace=config.daemon.kill_grace,
        retention=config.daemon.retention_days * 86_400,
        ended_kept=config.daemon.ended_kept,
        root=SupervisorSpec(
            "root",
            children,
            strategy=config.supervisor.strategy,
            budget=config.supervisor.budget,
            backoff=config.supervisor.backoff,
        ),
    )


class _Run:
    """What one run of the daemon's node holds, for the signal handlers and the metrics: the
    node (replaced when a cluster member joins again) and how often it joined again."""

    def __init__(self, config: Config) -> None:
        self.current = [config]
        self.node: Node | None = None
        self.rejoins = 0


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM or SIGINT; returns the exit status.

    A cluster member that loses its lease stops everything it runs (its processes are someone
    else's now), and runs again as a fresh member, taking back what is still its node's.
    """
    private_directory(config.daemon.store.parent)  # the state directory: its owner's alone
    systemd = SystemdNotifier.from_environment()  # first: no command started may inherit it
    check_open_files(config.daemon.max_connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    run = _Run(config)
    reloads: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        if run.node is None:
            log.warning("reload_ignored", note="the daemon is between two runs of its node; send SIGHUP again")
            return
        task = loop.create_task(reload(run.node, run.current))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR1, dump_stacks)
    try:
        while True:
            status = await _run_once(run, stop, systemd, ready)
            if status is not None:
                return status
            run.rejoins += 1
            log.warning("cluster_rejoining", rejoins=run.rejoins)
    finally:
        _remove_handlers(loop)


async def _run_once(
    run: _Run, stop: asyncio.Event, systemd: SystemdNotifier, ready: asyncio.Event | None
) -> int | None:
    """Run the node until ``stop`` (the exit status) or, for a cluster member, until its lease
    is lost (None: run again)."""
    from ..control import ControlServer
    from .metrics import start_metrics

    config = run.current[0]
    loop = asyncio.get_running_loop()
    member: Any = None
    store: Store | None = None
    router: Any = None
    extra: list[Any] = []
    if config.cluster is not None:
        from ..cluster.member import ClusterMember
        from ..cluster.metrics import ClusterCollector

        member = ClusterMember(config.cluster)
        store = await member.open()
        extra.append(ClusterCollector(member, lambda: router, lambda: run.rejoins))
    node = build_node(config, store)
    control: ControlServer | None = None
    lost = False
    async with contextlib.AsyncExitStack() as running:
        # Whatever started is stopped again, last first, also when a later step fails to start:
        # the daemon never exits with its processes half up. The metrics port is taken before
        # any process starts, since it is the likeliest to be in use already.
        if member is not None:
            running.push_async_callback(lambda: member.close(leave=not lost))
        pinging = loop.create_task(systemd.keep_alive(), name="systemd-watchdog")
        running.callback(pinging.cancel)
        watchdog = LoopWatchdog(loop, node.runtime)
        watchdog.start()
        running.callback(watchdog.stop)
        settings = config.daemon
        watched = WebWatch()
        server = start_metrics(
            node, settings.metrics, lambda: control.connections if control else 0, watchdog,
            web=watched.statistics,
            token=read_token(settings.metrics_token_file, "daemon.metrics_token_file")
            if settings.metrics_token_file else None,
            tls=tls_context(settings) if settings.metrics_tls else None, extra=extra,
        )  # fmt: skip
        running.callback(server.close)
        report = await node.start()
        run.node = node
        running.callback(lambda: setattr(run, "node", None))
        clean: list[bool] = []

        async def shut_down() -> None:
            clean.append(await node.shutdown(timeout=config.daemon.shutdown_timeout))

        running.push_async_callback(shut_down)
        if member is not None:
            member.attach(node)
        private_directory(config.daemon.socket.parent)
        control = ControlServer(
            node, str(config.daemon.socket), max_connections=config.daemon.max_connections, **tcp_options(config)
        )
        if member is not None:
            from ..cluster.routing import Router

            router = Router(member, control)
            control.router = router
            await router.start()
            running.push_async_callback(router.stop)
        await control.start()
        running.push_async_callback(control.close)
        cluster = None
        if member is not None and router is not None:
            from ..web import ClusterSource

            cluster = ClusterSource(status=member.status, placed=router.placed, owner=member.store.owner)
        console = web_console(node, settings, cluster)
        if console is not None:
            await console.start()
            running.push_async_callback(console.close)
            watched.console = console
        log.info(
            "daemon_started",
            config=str(config.path),
            store=node.store_path,
            metrics=config.daemon.metrics,
            socket=str(config.daemon.socket),
            web=console.url if console is not None else None,
            revived=report.revived,
            quarantined=len(report.quarantined),
            processes=len(node.runtime),
            cluster=config.cluster.name if config.cluster else None,
            node=config.cluster.node if config.cluster else None,
        )
        systemd.ready(f"{len(node.runtime)} processes, {report.revived} revived")
        if ready is not None:
            ready.set()
        waits = [asyncio.ensure_future(stop.wait())]
        if member is not None:
            waits.append(asyncio.ensure_future(member.lost.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        lost = member is not None and member.lost.is_set() and not stop.is_set()
        if lost:
            log.error("daemon_lease_lost", why=member.lost_why, note="stopping every copy here, then joining again")
        else:
            systemd.stopping()
            log.info("daemon_stopping", timeout=config.daemon.shutdown_timeout)
    if lost:
        return None
    if clean == [False]:
        log.error("daemon_stopped", clean=False, note="the store was not closed in time; see store_not_closed")
        return 1
    log.info("daemon_stopped")
    return 0


class WebWatch:
    """The web console for the metrics, once it has started (the metrics start before it)."""

    def __init__(self) -> None:
        self.console: WebConsole | None = None

    def statistics(self) -> WebStatistics | None:
        return self.console.statistics() if self.console is not None else None


def check_open_files(max_connections: int) -> None:
    """Raise the open-files limit (see :mod:`._open_files`) and say what it is; warn when it
    cannot cover ``daemon.max_connections``, before a client meets "too many open files"."""
    limit = raise_open_files_limit()
    if limit.error is not None:
        log.warning("open_files_limit_kept", limit=limit.before, hard=limit.hard, error=limit.error)
    elif limit.after != limit.before:
        log.info("open_files_limit_raised", before=limit.before, after=limit.after)
    if limit.short_of(max_connections):
        log.warning(
            "open_files_limit_low",
            limit=limit.after,
            max_connections=max_connections,
            advice="raise the hard limit (LimitNOFILE= in a systemd unit, ulimit -Hn) or lower daemon.max_connections",
        )


def _remove_handlers(loop: asyncio.AbstractEventLoop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        loop.remove_signal_handler(signum)


def install_kinds(node: Node, old: Config, new: Config) -> None:
    """Kinds and executors a reload brings (a new ``[kinds]`` entry, one pointing elsewhere, a
    package installed since): installed in the node for new processes; live processes of a
    changed kind go on with the machine they started with until they end or restart."""
    added, changed, executors = old.catalog.changes(new.catalog)
    if not (added or changed or executors):
        return
    setup = KindSetup(new.path.parent, new.daemon.log_dir, new.daemon.run_dir, new.tables)
    for name in (*added, *changed):
        machine, own = new.catalog.build_kind(name, setup)
        node.install(machine, own)
    node.install_executors({action_type: new.catalog.executors[action_type].value for action_type in executors})
    log.info(
        "kinds_reloaded", added=added, changed=changed, executors=executors,
        note="live processes of a changed kind go on with the code they started with until they end or restart",
    )  # fmt: skip


async def reload(node: Node, current: list[Config]) -> None:
    """Apply a changed configuration: start new processes, stop removed ones, restart changed
    ones; leave the rest alone. An invalid file is refused and the running configuration kept."""
    old = current[0]
    try:
        new = load(old.path)
    except ConfigFileError as exc:
        log.error("reload_refused", error=str(exc))
        return
    before = {p.name: p for p in old.processes}
    after = {p.name: p for p in new.processes}
    removed = [n for n in before if n not in after]
    changed = [n for n in before if n in after and before[n] != after[n]]
    added = [n for n in after if n not in before]
    settings = dataclasses.fields(new.daemon)
    differ = [f.name for f in settings if getattr(new.daemon, f.name) != getattr(old.daemon, f.name)]
    if "log_level" in differ:  # the one [daemon] key a running daemon can take at once
        set_level(new.daemon.log_level)
        log.info("log_level_changed", before=old.daemon.log_level, after=new.daemon.log_level)
        differ.remove("log_level")
    if differ:
        note = "these [daemon] changes apply at the next start"
        log.warning("reload_daemon_settings_need_restart", keys=differ, note=note)
    if new.supervisor != old.supervisor:
        log.warning("reload_supervisor_settings_need_restart", note="[supervisor] changes apply at the next start")
    install_kinds(node, old, new)
    root = node.root
    for name in reversed(removed + changed):
        await root.remove_child(name, "removed or changed by a configuration reload")
    failed: list[str] = []
    for name in [n for n in after if n in added or n in changed]:
        try:
            await root.add_child(child_spec(after[name], new.catalog.machines))
        except StatevisorError as exc:  # e.g. the store cannot take it now: the others still start
            failed.append(name)
            log.error("reload_start_failed", child=name, error=str(exc), note="the next SIGHUP tries it again")
            with contextlib.suppress(StatevisorError):
                await root.remove_child(name, "its start failed")
    # What failed to start is left out of the running configuration, so the next reload adds it.
    current[0] = dataclasses.replace(new, processes=tuple(p for p in new.processes if p.name not in failed))
    log.info(
        "reloaded", added=added, removed=removed, changed=changed, unchanged=len(after) - len(added) - len(changed),
        failed=failed,
    )  # fmt: skip


def dump_stacks() -> None:
    """Write every task's stack to the log (SIGUSR1): what is everything waiting on?"""
    import io

    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(file=stack)
        log.info("task_stack", task=task.get_name(), stack=stack.getvalue())


def run(config: Config) -> int:
    sink = configure(config.daemon.log_level, background=True)
    try:
        if config.daemon.loop == "uvloop":
            import uvloop

            return uvloop.run(serve(config))
        return asyncio.run(serve(config))
    finally:
        if sink is not None:
            sink.close()
