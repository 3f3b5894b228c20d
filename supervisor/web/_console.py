"""The web console's server: aiohttp, in the daemon's own event loop, reading the node in place.

Pages are rendered on the server (they read without JavaScript); htmx swaps in the live parts a
page's one server-sent event stream brings (see :mod:`._live`), and Mermaid draws diagrams in
the browser. Requests are answered on the loop the processes run on, so every handler reads the
node between two transitions, as the control API does, and none blocks: log tails are read on
the log-reader threads.

Access (see :mod:`._auth`): reading needs a login with the daemon's token unless ``read`` is
``"open"`` (loopback only); acting needs ``control`` enabled, a login, and the session's forgery
token. Every action is logged with who asked, and every refusal counted (and logged at most once
a minute per reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import structlog
from aiohttp import hdrs, web
from markupsafe import Markup

from .._core.handle import Handle
from .._core.history import TransitionRecord
from .._core.process import Process
from .._core.snapshot import Snapshot
from .._errors import ConfigurationError, ProcessNotFound, StatevisorError
from .._files.logtail import read_tail, read_tail_position
from .._supervision.node import Node
from .._version import __version__
from ..control._fanout import WatchFanout
from ._assets import Assets
from ._auth import SESSION_COOKIE, Session, Sessions
from ._cluster import (
    STATUS_EVERY,
    STATUS_LOOK,
    ClusterQuery,
    ClusterSource,
    ClusterStatus,
    OwnerWatch,
    cluster_page,
    placed_arguments,
)
from ._live import EventStream, follow_log, log_event_id, parse_offsets
from ._panels import Panel, render_panels
from ._views import (
    ENDED_CHOICES,
    LIVE_CHOICES,
    ListQuery,
    ProcessRow,
    Show,
    diagram_source,
    duration,
    highlighted,
    iso,
    list_page,
    sse_event,
    state_text,
    supervision_tree,
    waiting_text,
)

log = structlog.get_logger("statevisor.web")

TEMPLATES = Path(__file__).resolve().parent / "templates"
LOG_LINES = 200
"""Lines of each log a process's page shows when it loads (then new ones as they come)."""
HISTORY_PROCESSES = 256
"""Processes whose transitions the console keeps recording after their page was shown (the
most recently shown): a page reloaded, or opened again, still shows what happened meanwhile."""
REFUSAL_LOG_INTERVAL = 60.0
MAX_FORM_BYTES = 64 * 1024
WATCH_INTERVAL = 0.1
"""Seconds between two updates of one page at most: ten a second, more than people read (a quiet
process's change goes out at once)."""
ACTIONS = ("pause", "resume", "kill", "nudge")
SESSION: web.RequestKey[Session | None] = web.RequestKey("session")
"""Who asked (None: nobody logged in), as the guard found it."""


class ReadAccess(StrEnum):
    """Who may read the console: only those who logged in with the token, or anyone who can
    reach it (allowed on loopback only)."""

    TOKEN = "token"
    OPEN = "open"


def on_loopback(host: str) -> bool:
    return host.strip("[]") in ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True, slots=True)
class WebStatistics:
    """The console's counts since it started."""

    streams: int  # server-sent event streams open now (pages open)
    requests: int
    actions: dict[str, int]  # control actions done, by action (pause, resume, kill, nudge, spawn)
    refused: dict[str, int]  # requests refused, by reason
    pushes: int  # live updates written by the fan-outs


class WebConsole:
    """The console of one node, served on ``host:port`` (see the module's text).

    ``token`` is the daemon's (needed to log in: for reading unless ``read`` is open, and for
    control); ``tls`` an SSL context to serve with (required beyond loopback, as is the token);
    ``control`` lets logged-in people pause, resume, kill, nudge and spawn; ``panels`` add what
    kinds show of their own processes; ``cluster`` (a daemon that is a cluster member) serves the
    cluster page.
    """

    def __init__(
        self,
        node: Node,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        control: bool = False,
        read: ReadAccess | str = ReadAccess.TOKEN,
        panels: Iterable[Panel] = (),
        interval: float = WATCH_INTERVAL,
        cluster: ClusterSource | None = None,
    ) -> None:
        read = ReadAccess(read)
        if (control or read is ReadAccess.TOKEN) and not token:
            raise ConfigurationError(
                "the web console needs the daemon's token to let anyone log in (control, or reading)"
            )
        if not on_loopback(host) and (read is ReadAccess.OPEN or tls is None or not token):
            raise ConfigurationError(
                f"the web console on {host} is reachable beyond this machine: it needs the token for reading, and TLS"
            )
        self.node = node
        self.host = host
        self.port = port
        self.tls = tls
        self.control = control
        self.read = read
        self.panels = list(panels)
        self.interval = interval
        self.cluster = cluster
        self.sessions = Sessions(token) if token else None
        self.assets = Assets()
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters.update(
            duration=duration, iso=iso, waiting=waiting_text, row_key=row_key, json=_json_text, urlencode=_urlencode
        )
        # The fragments' macros, called by the live updates (Jinja's module is dynamic).
        self._parts: Any = self._templates.get_template("_parts.html").module
        frame: Callable[[int, bytes], bytes] = lambda _request, body: body  # noqa: E731 - SSE frames itself
        self.pages = WatchFanout(self._encode_page, lambda: self.interval, frame)
        self.rows = WatchFanout(self._encode_row, lambda: self.interval, frame)
        self._history: OrderedDict[str, Process] = OrderedDict()
        self._streams: set[EventStream] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.requests = 0
        self.actions: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self._refusals: dict[str, float] = {}

    # --- running ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; raises OSError naming the address when that cannot be done."""
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_FORM_BYTES)
        app.router.add_get("/", self._root)
        app.router.add_get("/processes", self._processes)
        app.router.add_get("/processes/events", self._rows_events)
        app.router.add_get("/process", self._process)
        app.router.add_get("/process/events", self._process_events)
        app.router.add_get("/process/log", self._log_text)
        app.router.add_post("/process/{action}", self._act)
        app.router.add_post("/spawn", self._spawn)
        app.router.add_get("/tree", self._tree)
        app.router.add_get("/cluster", self._cluster)
        app.router.add_get("/cluster/events", self._cluster_events)
        app.router.add_get("/cluster/where", self._where)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/static/{name}", self._static)
        # handler_cancellation: a browser that closes a page ends its stream's handler at once.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host.strip("[]"), self.port, ssl_context=self.tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"web console on {self.host}:{self.port} (daemon.web): {exc.strerror or exc}"
            ) from None
        self._runner, self._site = runner, site
        self.port = self.bound_port or self.port

    @property
    def bound_port(self) -> int | None:
        if self._runner is None:
            return None
        for address in self._runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        return None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        host = f"[{self.host.strip('[]')}]" if ":" in self.host.strip("[]") else self.host
        return f"{scheme}://{host}:{self.port}"

    async def close(self) -> None:
        """Stop serving: open pages' streams end, then the port is let go."""
        self.pages.close()
        self.rows.close()
        for stream in list(self._streams):
            stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for process in list(self._history.values()):
            process.keep_history(False)
        self._history.clear()

    def statistics(self) -> WebStatistics:
        return WebStatistics(
            streams=len(self._streams),
            requests=self.requests,
            actions=dict(self.actions),
            refused=dict(self.refused),
            pushes=self.pages.pushes + self.rows.pushes,
        )

    def streams(self) -> list[EventStream]:
        """The pages' event streams open now (the benchmark reads when each last wrote)."""
        return list(self._streams)

    def __repr__(self) -> str:
        return (
            f"<WebConsole {self.url} read={self.read} control={self.control}: {len(self._streams)} streams, "
            f"{self.requests} requests>"
        )

    # --- access ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Who is asking, whether they may read, and the headers every answer carries."""
        started = time.perf_counter()
        self.requests += 1
        request[SESSION] = self._session(request)
        open_paths = request.path.startswith("/static/") or request.path in ("/login", "/logout")
        try:
            if not open_paths and self.read is ReadAccess.TOKEN and request[SESSION] is None:
                self.refuse("not logged in", request)
                if request.method == "GET" and not request.path.endswith("/events"):
                    raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
                if request.headers.get("HX-Request"):  # a page whose session ended: say so where it acted
                    raise web.HTTPUnauthorized(
                        text='<p class="error-text" role="alert">Refused: log in with the daemon\'s token first '
                        '(<a href="/login">log in</a>).</p>',
                        content_type="text/html",
                    )
                raise web.HTTPUnauthorized(text="log in with the daemon's token first (/login)\n")
            response = await handler(request)
        except web.HTTPException as exc:  # an answer too (a redirect, a refusal): raised on, as aiohttp wants
            self._finish(exc, started)
            raise
        self._finish(response, started)
        return response

    def _finish(self, response: web.StreamResponse, started: float) -> None:
        """The headers every answer carries, and how long the server took (Server-Timing)."""
        _secure(response, self.tls is not None)
        if not response.prepared:
            response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1e3:.2f}"

    def _session(self, request: web.Request) -> Session | None:
        if self.sessions is None:
            return None
        bearer = request.headers.get(hdrs.AUTHORIZATION)
        if bearer:
            return self.sessions.bearer(bearer)
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.sessions.verify(cookie) if cookie else None

    def refuse(self, reason: str, request: web.Request) -> None:
        """Count a refused request; log it at most once a minute per reason."""
        self.refused[reason] = self.refused.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._refusals.get(reason, float("-inf")) >= REFUSAL_LOG_INTERVAL:
            self._refusals[reason] = now
            log.warning(
                "web_refused", reason=reason, path=request.path, peer=request.remote, count=self.refused[reason]
            )

    def _same_origin(self, request: web.Request) -> bool:
        """A browser names where a form was sent from: it must be this console."""
        origin = request.headers.get(hdrs.ORIGIN)
        return origin is None or origin == f"{request.scheme}://{request.host}"

    async def _may_act(self, request: web.Request, form: Mapping[str, Any]) -> Session:
        """The session of a request that acts, or the refusal to send (HTTP 403, saying why)."""
        session: Session | None = request[SESSION]
        if not self.control:
            self.refuse("control is off", request)
            raise self._denied(
                request, "Control is off: the daemon serves this console read-only (daemon.web_control)."
            )
        if session is None:
            self.refuse("no control rights", request)
            raise self._denied(request, "Refused: log in with the daemon's token to control processes.")
        if not self._same_origin(request):
            self.refuse("cross-site request", request)
            raise self._denied(request, "Refused: the request did not come from this console's pages.")
        assert self.sessions is not None
        offered = str(form.get("csrf") or request.headers.get("X-CSRF-Token", ""))
        if not self.sessions.csrf_matches(session, offered):
            self.refuse("bad forgery token", request)
            raise self._denied(request, "Refused: the form is stale or forged; load the page again.")
        return session

    def _denied(self, request: web.Request, message: str) -> web.HTTPException:
        if request.headers.get("HX-Request"):
            return web.HTTPForbidden(
                text=f'<p class="error-text" role="alert">{_escape(message)}</p>', content_type="text/html"
            )
        body = self._render(
            "message.html",
            request,
            heading="Refused",
            message=message,
            error=True,
            back=request.headers.get(hdrs.REFERER),
        )
        return web.HTTPForbidden(text=body, content_type="text/html")

    # --- rendering --------------------------------------------------------------------------

    def _render(self, template: str, request: web.Request, **context: Any) -> str:
        session: Session | None = request[SESSION]
        return self._templates.get_template(template).render(
            asset=self.assets.url,
            version=__version__,
            live=len(self.node.runtime),
            now=time.time(),
            session=session,
            csrf=self.sessions.csrf(session) if session is not None and self.sessions is not None else "",
            control=self.control,
            clustered=self.cluster is not None,
            can_control=self.control and session is not None,
            has_token=self.sessions is not None,
            path=request.path_qs,
            section=context.pop("section", ""),
            **context,
        )

    def _page(self, template: str, request: web.Request, status: int = 200, **context: Any) -> web.Response:
        return web.Response(text=self._render(template, request, **context), status=status, content_type="text/html")

    def _not_found(self, request: web.Request, message: str) -> web.HTTPException:
        body = self._render(
            "message.html", request, heading="Not found", message=message, error=True, back="/processes"
        )
        return web.HTTPNotFound(text=body, content_type="text/html")

    # --- pages ------------------------------------------------------------------------------

    async def _root(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/processes")

    async def _processes(self, request: web.Request) -> web.StreamResponse:
        query = ListQuery.parse(request.query)
        page = list_page(self.node, query)
        pids = [row.pid for row in page.rows if not row.ended]
        stream_url = "/processes/events?" + urlencode([("pid", pid) for pid in pids]) if pids else ""
        lifecycles = ENDED_CHOICES if query.show is Show.ENDED else LIVE_CHOICES
        return self._page(
            "processes.html",
            request,
            section="processes",
            page=page,
            query=query,
            lifecycles=[str(lc) for lc in lifecycles],
            stream_url=stream_url,
        )

    def _handle(self, request: web.Request, pid: str | None = None) -> Handle:
        pid = pid if pid is not None else request.query.get("pid", "")
        try:
            return self.node.get(pid)
        except ProcessNotFound:
            pass
        try:
            return self.node.find(pid)
        except ProcessNotFound:
            raise self._not_found(request, f"No live or recently ended process has the id or name {pid!r}.") from None

    def _keep_history(self, process: Process) -> None:
        """Record ``process``'s transitions from now on, for the most recently shown processes."""
        if process.pid in self._history:
            self._history.move_to_end(process.pid)
            return
        process.keep_history(True)
        self._history[process.pid] = process
        while len(self._history) > HISTORY_PROCESSES:
            _, oldest = self._history.popitem(last=False)
            oldest.keep_history(False)

    async def _process(self, request: web.Request) -> web.StreamResponse:
        handle = self._handle(request)
        process = handle._process
        self._keep_history(process)
        snapshot = handle.snapshot()
        logs: dict[str, list[str]] = {}
        offsets: dict[str, int] = {}
        for name, path in handle.log_files().items():
            lines, offset = await read_tail_position(path, LOG_LINES)
            logs[name] = lines
            if offset is not None:
                offsets[name] = offset
        query = {"pid": process.pid}
        if offsets:
            query["logs"] = log_event_id(offsets)
        diagram = diagram_source(process.machine)
        views = render_panels(self.panels, snapshot) if self.panels else []
        has_panels = any(panel.applies_to(process.kind) for panel in self.panels)
        done = {
            "paused": "Paused.",
            "resumed": "Resumed.",
            "killed": "Killed.",
            "nudged": "Nudged.",
            "spawned": "Spawned.",
        }.get(request.query.get("done", ""))
        return self._page(
            "process.html",
            request,
            section="processes",
            row=ProcessRow.from_snapshot(snapshot),
            snapshot=snapshot,
            stats=None if snapshot.done else handle.statistics(),
            state=state_text(snapshot.state),
            records=shown_history(process.history(last=HISTORY_SHOWN), snapshot.version),
            logs=logs,
            diagram=diagram,
            highlighted=highlighted(diagram, snapshot.phase) if diagram else "",
            has_panels=has_panels,
            panel_views=views,
            has_mermaid_panels=any(v.mermaid for v in views),
            secret_keys=", ".join(sorted(process.machine.secret_keys)),
            stream_url="/process/events?" + urlencode(query),
            done=done,
        )

    async def _log_text(self, request: web.Request) -> web.StreamResponse:
        """A log's last lines as plain text (the page's link, and for programs)."""
        handle = self._handle(request)
        stream = request.query.get("stream", "stdout")
        files = handle.log_files()
        if stream not in files:
            raise self._not_found(
                request,
                f"Process {handle.pid} keeps no {stream!r} log (its logs: {', '.join(sorted(files)) or 'none'}).",
            )
        try:
            count = min(100_000, max(1, int(request.query.get("lines", "1000"))))
        except ValueError:
            count = 1000
        lines = await read_tail(files[stream], count)
        return web.Response(text="".join(line + "\n" for line in lines), content_type="text/plain")

    async def _tree(self, request: web.Request) -> web.StreamResponse:
        return self._page("tree.html", request, section="tree", tree=supervision_tree(self.node.root))

    # --- the cluster ----------------------------------------------------------------------------

    def _cluster_source(self, request: web.Request) -> ClusterSource:
        if self.cluster is None:
            raise self._not_found(request, "This daemon is not a member of a cluster: it has no cluster page.")
        return self.cluster

    async def _cluster(self, request: web.Request) -> web.StreamResponse:
        source = self._cluster_source(request)
        status = ClusterStatus.of(source.status())
        query = ClusterQuery.parse(request.query)
        problem = ""
        try:
            placed = await source.placed(**placed_arguments(query))
        except Exception as exc:  # the cluster's store or a member not answering: the rest still shows
            log.warning("web_cluster_list_failed", error=repr(exc))
            placed, problem = [], f"The cluster's processes could not be listed: {exc}"
        page = cluster_page(placed, query, self.node.machines)
        pids = [row.pid for row in page.rows]
        stream_url = "/cluster/events?" + urlencode([("pid", pid) for pid in pids])
        where = request.query.get("where", "").strip()
        return self._page(
            "cluster.html",
            request,
            section="cluster",
            cluster=status,
            page=page,
            query=query,
            lifecycles=[str(lc) for lc in LIVE_CHOICES],
            stream_url=stream_url,
            problem=problem,
            where=where,
            answer=await self._where_answer(source, where) if where else None,
        )

    async def _where(self, request: web.Request) -> web.StreamResponse:
        """The "where is process PID?" form: a fragment for htmx, else the cluster page with it."""
        source = self._cluster_source(request)
        where = request.query.get("pid", "").strip()
        if not request.headers.get("HX-Request"):
            raise web.HTTPSeeOther("/cluster?" + urlencode({"where": where}))
        answer = await self._where_answer(source, where)
        return web.Response(text=str(self._parts.where_answer(answer)), content_type="text/html")

    async def _where_answer(self, source: ClusterSource, pid: str) -> dict[str, Any]:
        """Who owns ``pid`` (an id anywhere in the cluster, or a name of this daemon's)."""
        status = ClusterStatus.of(source.status())
        if not pid:
            return {"pid": pid, "found": False, "message": "Give a process's id."}
        local = self._live_process(pid)
        if local is None:
            with contextlib.suppress(ProcessNotFound):
                local = self.node.find(pid)._process
        if local is not None and not local.lifecycle.terminal:
            return {"pid": local.pid, "found": True, "owner": status.node, "here": True, "live": True}
        try:
            owner = await source.owner(pid)
        except Exception as exc:  # NATS trouble: say so, the page stays
            log.warning("web_cluster_owner_failed", pid=pid, error=repr(exc))
            return {"pid": pid, "found": False, "message": f"The cluster's store did not answer: {exc}"}
        if owner is None:
            message = f"No live process {pid!r} in cluster {status.name} (names are looked up on this daemon only)."
            return {"pid": pid, "found": False, "message": message}
        node, incarnation = owner
        return {
            "pid": pid,
            "found": True,
            "owner": node,
            "incarnation": incarnation,
            "here": node == status.node,
            "live": node in status.live,
        }

    async def _cluster_events(self, request: web.Request) -> web.StreamResponse:
        source = self._cluster_source(request)
        pids = request.query.getall("pid", [])[:500]
        return await self._event_stream(request, [functools.partial(self._cluster_updates, source=source, pids=pids)])

    async def _cluster_updates(self, stream: EventStream, source: ClusterSource, pids: list[str]) -> None:
        """The members' leases and counts every STATUS_EVERY (at once when a member joins or
        leaves), and the owners of the page's rows when they may have changed."""
        loop = asyncio.get_running_loop()
        watch = OwnerWatch(dict.fromkeys(pids, ("", True)))
        pushed_at = float("-inf")
        live: frozenset[str] | None = None
        while not stream.closed:
            status = ClusterStatus.of(source.status())
            now = loop.time()
            if status.live != live or now - pushed_at >= STATUS_EVERY:
                live, pushed_at = status.live, now
                stream.write_now(
                    sse_event("members", str(self._parts.cluster_members(status)))
                    + sse_event("counts", str(self._parts.cluster_counts(status)))
                )
                due = watch.due(status.live, now)
                owners = await asyncio.gather(*(source.owner(pid) for pid in due), return_exceptions=True)
                frames = []
                for pid, owner in zip(due, owners, strict=True):
                    if isinstance(owner, BaseException):
                        continue  # NATS trouble: looked up again at the next push
                    node = owner[0] if owner is not None else ""
                    if watch.changed(pid, node):
                        cell = self._parts.owner_cell(node, node in status.live, node == status.node)
                        frames.append(sse_event(f"owner-{row_key(pid)}", str(cell)))
                if frames:
                    stream.write_now(b"".join(frames))
            await asyncio.sleep(STATUS_LOOK)

    # --- live: server-sent events -------------------------------------------------------------

    async def _event_stream(
        self, request: web.Request, workers: list[Callable[[EventStream], Awaitable[Any]]]
    ) -> web.StreamResponse:
        """Answer with an event stream fed by ``workers`` until the browser goes (or we close)."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        _secure(response, self.tls is not None)
        if request.version < (1, 1):
            raise web.HTTPBadRequest(text="event streams take HTTP/1.1\n")
        response.enable_chunked_encoding()  # EventStream frames its chunks itself (see there)
        await response.prepare(request)
        stream = EventStream(response, request.transport)
        await stream.open()
        self._streams.add(stream)
        tasks = [asyncio.ensure_future(_bind(worker, stream)) for worker in workers]
        try:
            await stream.run()
        finally:
            stream.close()
            self._streams.discard(stream)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return response

    async def _process_events(self, request: web.Request) -> web.StreamResponse:
        handle = self._handle(request)
        process = handle._process
        self._keep_history(process)
        offsets = parse_offsets(request.headers.get("Last-Event-ID") or request.query.get("logs", ""))
        workers: list[Callable[[EventStream], Awaitable[Any]]] = [
            functools.partial(self.pages.watch, request_id=0, process=process)
        ]
        for name, path in handle.log_files().items():
            workers.append(
                functools.partial(follow_log, name=name, path=Path(path), offsets=offsets, start=offsets.get(name))
            )
        return await self._event_stream(request, workers)

    async def _rows_events(self, request: web.Request) -> web.StreamResponse:
        processes = []
        for pid in request.query.getall("pid", [])[:500]:
            with contextlib.suppress(ProcessNotFound):
                processes.append(self.node.get(pid)._process)
        workers: list[Callable[[EventStream], Awaitable[Any]]] = [
            functools.partial(self.rows.watch, request_id=0, process=p) for p in processes
        ]
        return await self._event_stream(request, workers)

    def _encode_page(self, snapshot: Snapshot) -> bytes:
        """A process page's live parts for one version, rendered once however many pages show it."""
        try:
            process = self._live_process(snapshot.pid)
            now = time.time()
            row = ProcessRow.from_snapshot(snapshot)
            stats = process.statistics() if process is not None and not snapshot.done else None
            records = process.history(last=HISTORY_SHOWN + 1) if process is not None else []
            parts = [
                sse_event("status", row.status),
                sse_event("phase", row.phase),
                sse_event("facts", str(self._parts.facts(row, stats, snapshot, now))),
                sse_event("history", str(self._parts.history(shown_history(records, snapshot.version), now))),
                sse_event("state", _escape(state_text(snapshot.state))),
            ]
            if self.panels and process is not None and any(p.applies_to(snapshot.kind) for p in self.panels):
                parts.append(sse_event("panels", str(self._parts.panels(render_panels(self.panels, snapshot)))))
            return b"".join(parts)
        except Exception as exc:  # a bug here must cost one update, never the ticker every page shares
            log.exception("web_render_failed", pid=snapshot.pid)
            return sse_event("facts", f'<p class="error-text">This update could not be shown: {_escape(repr(exc))}</p>')

    def _encode_row(self, snapshot: Snapshot) -> bytes:
        try:
            cells = self._parts.row_cells(ProcessRow.from_snapshot(snapshot), time.time())
            return sse_event(f"row-{row_key(snapshot.pid)}", str(cells))
        except Exception:
            log.exception("web_render_failed", pid=snapshot.pid)
            return b""

    def _live_process(self, pid: str) -> Process | None:
        try:
            return self.node.get(pid)._process
        except ProcessNotFound:
            return None

    # --- control --------------------------------------------------------------------------

    async def _act(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise self._not_found(request, f"There is no action {action!r} (there are {', '.join(ACTIONS)}).")
        form = await request.post()
        session = await self._may_act(request, form)
        handle = self._handle(request, str(form.get("pid", "")))
        reason = str(form.get("reason") or "").strip() or f"killed from the web console by {session.who}"
        done = {"pause": "paused", "resume": "resumed", "kill": "killed", "nudge": "nudged"}[action]
        try:
            # Shielded: a browser that goes away mid-way does not abort the operation half-done.
            if action == "pause":
                await asyncio.shield(handle.pause())
            elif action == "resume":
                await asyncio.shield(handle.resume())
            elif action == "nudge":
                await asyncio.shield(handle.nudge())
            else:
                await asyncio.shield(handle.kill(reason))
        except StatevisorError as exc:
            log.info(
                "web_action_failed",
                action=action,
                pid=handle.pid,
                name=handle.name,
                by=session.who,
                peer=request.remote,
                error=str(exc),
            )
            return self._answer(request, f"Could not {action} {handle.name}: {exc}", status=409, error=True)
        self.actions[action] = self.actions.get(action, 0) + 1
        fields = {"reason": reason} if action == "kill" else {}
        log.info(
            "web_action",
            action=action,
            pid=handle.pid,
            name=handle.name,
            kind=handle.kind,
            by=session.who,
            peer=request.remote,
            **fields,
        )
        return self._answer(request, f"{done.capitalize()}.", redirect=_process_url(handle.pid, done))

    async def _spawn(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        session = await self._may_act(request, form)
        kind = str(form.get("kind", ""))
        name = str(form.get("name") or "").strip() or None
        text = str(form.get("state") or "").strip()
        try:
            state = json.loads(text) if text else None
            if state is not None and not isinstance(state, dict):
                raise ValueError("the settings must be a JSON object")
        except ValueError as exc:
            return self._answer(request, f"Settings are not a JSON object: {exc}", status=400, error=True)
        if kind not in self.node.machines:
            return self._answer(request, f"This daemon runs no kind {kind!r}.", status=400, error=True)
        try:
            handle = await asyncio.shield(self.node.spawn(kind, state, name=name))
        except StatevisorError as exc:
            return self._answer(request, f"Could not spawn: {exc}", status=400, error=True)
        self.actions["spawn"] = self.actions.get("spawn", 0) + 1
        log.info(
            "web_action",
            action="spawn",
            pid=handle.pid,
            name=handle.name,
            kind=kind,
            by=session.who,
            peer=request.remote,
        )
        url = _process_url(handle.pid, "spawned")
        if request.headers.get("HX-Request"):
            link = f'<a href="{_escape(url)}">{_escape(handle.name)}</a>'
            return web.Response(text=f'<p class="done">Spawned {link}.</p>', content_type="text/html")
        raise web.HTTPSeeOther(url)

    def _answer(
        self, request: web.Request, message: str, *, status: int = 200, error: bool = False, redirect: str = ""
    ) -> web.StreamResponse:
        """htmx gets a fragment for the page's status line; a plain form a page (or a redirect)."""
        if request.headers.get("HX-Request"):
            css = "error-text" if error else "done"
            role = ' role="alert"' if error else ""
            return web.Response(
                text=f'<p class="{css}"{role}>{_escape(message)}</p>', status=status, content_type="text/html"
            )
        if redirect and not error:
            raise web.HTTPSeeOther(redirect)
        return self._page(
            "message.html",
            request,
            status=status,
            heading="Refused" if error else "Done",
            message=message,
            error=error,
            back=request.headers.get(hdrs.REFERER),
        )

    # --- logging in and out -------------------------------------------------------------------

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        if self.sessions is None:
            return self._page(
                "message.html",
                request,
                heading="No login here",
                back="/processes",
                message="This console has no token to log in with (daemon.token_file): it is read-only.",
            )
        return self._page(
            "login.html",
            request,
            next=_local(request.query.get("next", "")),
            problem="",
            lifetime=duration(self.sessions.lifetime),
        )

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self.sessions is None:
            raise web.HTTPNotFound()
        form = await request.post()
        peer = request.remote or "?"
        target = _local(str(form.get("next", "")))
        if not self._same_origin(request):
            self.refuse("cross-site login", request)
            raise self._denied(request, "Refused: the login did not come from this console's page.")
        if not self.sessions.login_allowed(peer):
            self.refuse("too many failed logins", request)
            return self._page(
                "login.html",
                request,
                status=429,
                next=target,
                lifetime=duration(self.sessions.lifetime),
                problem="Too many failed logins from here: wait a minute.",
            )
        if not self.sessions.token_matches(str(form.get("token", ""))):
            self.sessions.login_failed(peer)
            self.refuse("wrong token", request)
            return self._page(
                "login.html",
                request,
                status=401,
                next=target,
                lifetime=duration(self.sessions.lifetime),
                problem="That is not the daemon's token.",
            )
        session, cookie = self.sessions.issue(str(form.get("name", "")))
        log.info("web_login", by=session.who, peer=peer)
        response = web.HTTPSeeOther(target or "/processes")
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(self.sessions.lifetime),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.tls is not None,
        )
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        session: Session | None = request[SESSION]
        form = await request.post()
        if session is not None and self.sessions is not None and not session.bearer:
            if not self._same_origin(request) or not self.sessions.csrf_matches(session, str(form.get("csrf", ""))):
                self.refuse("bad forgery token", request)
                raise self._denied(request, "Refused: the form is stale or forged; load the page again.")
            self.sessions.end(session)
            log.info("web_logout", by=session.who, peer=request.remote)
        response = web.HTTPSeeOther("/login" if self.read is ReadAccess.TOKEN else "/processes")
        response.del_cookie(SESSION_COOKIE, path="/")
        raise response

    # --- static files -------------------------------------------------------------------------

    async def _static(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": f'"{asset.digest}"'}
        if request.headers.get(hdrs.IF_NONE_MATCH) == f'"{asset.digest}"':
            return web.Response(status=304, headers=headers)
        body = asset.body
        if asset.compressed:
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, ""):
                headers["Content-Encoding"] = "gzip"
            else:
                body = asset.plain()
        return web.Response(
            body=body,
            headers=headers,
            content_type=asset.content_type.split(";")[0],
            charset="utf-8" if "charset" in asset.content_type else None,
        )


async def _bind(worker: Callable[[EventStream], Awaitable[Any]], stream: EventStream) -> None:
    with contextlib.suppress(StatevisorError, ConnectionError):
        await worker(stream)


CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""Scripts only from the console itself (htmx runs with eval off); inline styles, which Mermaid's
drawings carry; nothing from anywhere else, and no framing."""


def _secure(response: web.StreamResponse, tls: bool) -> None:
    if response.prepared:
        return
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if tls:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")


HISTORY_SHOWN = 20
"""Transitions a process's page shows (the newest; the process keeps more while recording)."""


def shown_history(records: list[TransitionRecord], version: int) -> list[TransitionRecord]:
    """The newest HISTORY_SHOWN records up to ``version`` (the snapshot the page shows)."""
    return [record for record in records if record.version <= version][-HISTORY_SHOWN:]


def row_key(pid: str) -> str:
    """A short name for a process safe in element ids and event names (ids may hold any text)."""
    return hashlib.sha256(pid.encode()).hexdigest()[:16]


def _process_url(pid: str, done: str = "") -> str:
    return "/process?" + urlencode({"pid": pid, **({"done": done} if done else {})})


def _local(target: str) -> str:
    """A redirect target that stays on this console (a path, never another site)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else ""


def _escape(text: str) -> str:
    return str(Markup.escape(text))


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=repr)


def _urlencode(value: Any) -> str:
    if isinstance(value, Mapping):
        return urlencode(value)
    return quote(str(value), safe="")
