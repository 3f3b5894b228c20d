"""The control server: the handle API of a node's processes, over a unix socket.

The socket is created owner-only (mode 0600) and a connecting process of another uid is refused
(``SO_PEERCRED``), even if the file's mode was widened. Bad frames get an error frame or, when the
framing itself is broken, a closed connection: never a crashed daemon. Requests on one
connection run concurrently; their responses are written whole, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import socket
import ssl
import struct
import time
from typing import Any

import structlog

from .._core.handle import Handle
from .._errors import ConfigurationError, ProcessNotFound, StatevisorError
from .._supervision.node import Node
from ._errors import ProtocolError
from ._fanout import WatchFanout
from ._ops import OPS, Op, Router, answer, argument, encoded_snapshot
from ._protocol import MAX_FRAME, PROTOCOL_VERSION, encode, error_fields, read_frame
from ._socket_file import SocketKeeper, claim_socket

log = structlog.get_logger("statevisor.control")

MAX_CONNECTIONS = 1024
"""Control connections served at once (``daemon.max_connections``); more are refused."""

REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two log lines about refused connections of one reason (each is counted)."""

MAX_IN_FLIGHT = 4096
"""Requests one connection may have unanswered (streams count until they end)."""

HELLO_TIMEOUT = 10.0
"""Seconds a new connection has to greet (and, on TCP, show its token) before it is closed."""


class ControlServer:
    """Serves one node on a unix socket path."""

    def __init__(
        self,
        node: Node,
        path: str,
        *,
        max_frame: int = MAX_FRAME,
        allow_uids: set[int] | None = None,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        max_connections: int = MAX_CONNECTIONS,
        router: Router | None = None,
    ) -> None:
        if tcp is not None and not token:
            raise ConfigurationError("a control API on TCP needs a token")
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigurationError(f"max_connections must be a whole number >= 1; got {max_connections!r}")
        self.max_connections = max_connections
        self.router = router  # a cluster's: requests for processes elsewhere go there
        self.node = node
        self.path = path
        self.tcp = tcp
        self.token = token
        self.tls = tls
        self._tcp_server: asyncio.AbstractServer | None = None
        self.max_frame = max_frame
        self.allow_uids = allow_uids if allow_uids is not None else {os.getuid()}
        self.watch_interval = 0.05
        self.hello_timeout = HELLO_TIMEOUT
        self.fanout = WatchFanout(encoded_snapshot, lambda: self.watch_interval)
        self._server: asyncio.AbstractServer | None = None
        self._keeper: SocketKeeper | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()  # one per connection, awaited by close()
        self.refused = 0
        self._refusals: dict[str, tuple[float | None, int]] = {}  # reason -> (last logged, unlogged since)
        self.internal_errors = 0  # requests that hit a bug (answered InternalError, logged)

    async def start(self) -> None:
        """Listen; raises OSError naming the address when that cannot be done, or when another
        daemon already serves the socket, or a file that is not a socket is in its place."""
        await claim_socket(self.path)
        self._server = await self._listen_unix()
        self._keeper = SocketKeeper(self.path, self._listen_unix)
        if self.tcp is not None:
            host, port = self.tcp
            try:
                self._tcp_server = await asyncio.start_server(self._accept_tcp, host, port, ssl=self.tls)
            except OSError as exc:
                self._server.close()
                raise OSError(exc.errno, f"control on {host}:{port} (daemon.tcp): {exc.strerror or exc}") from None
        self._keeping = asyncio.get_running_loop().create_task(self._keeper.keep(self._replace_unix))

    async def _listen_unix(self) -> asyncio.AbstractServer:
        old = os.umask(0o177)  # the socket file is born owner-only: no window where others could connect
        try:
            return await asyncio.start_unix_server(self._accept, path=self.path)
        except OSError as exc:
            raise OSError(exc.errno, f"control socket {self.path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)

    def _replace_unix(self, server: asyncio.AbstractServer) -> None:
        """Listen on ``server`` from now on (the old one's path is gone); connections stay."""
        old, self._server = self._server, server
        if old is not None:
            old.close()

    @property
    def tcp_port(self) -> int | None:
        if self._tcp_server is None:
            return None
        sockets = getattr(self._tcp_server, "sockets", ())  # asyncio.Server has them; the ABC does not say so
        return int(sockets[0].getsockname()[1]) if sockets else None

    async def close(self) -> None:
        self.fanout.close()
        if self._keeping is not None:
            self._keeping.cancel()
        if self._tcp_server is not None:
            self._tcp_server.close()
            self._tcp_server = None
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):
                connection.close()
            if self._handlers:  # let each connection finish its requests' cancellation (bounded)
                await asyncio.wait(list(self._handlers), timeout=5)
            await self._server.wait_closed()
            self._server = None
        if self._keeper is not None and self._keeper.ours():  # never another daemon's socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    @property
    def connections(self) -> int:
        return len(self._connections)

    def count_bug(self) -> None:
        """One more request that hit a bug (answered InternalError, logged)."""
        self.internal_errors += 1

    def refuse(self, reason: str, **fields: Any) -> None:
        """Count a refused connection, and log it at most once per REFUSAL_LOG_INTERVAL for
        each reason, saying how many went unlogged since: a client retrying in a loop must
        not fill the daemon's log."""
        self.refused += 1
        now = time.monotonic()
        logged_at, unlogged = self._refusals.get(reason, (None, 0))
        if logged_at is None or now - logged_at >= REFUSAL_LOG_INTERVAL:
            log.warning("control_refused", reason=reason, unlogged_since=unlogged, **fields)
            self._refusals[reason] = (now, 0)
        else:
            self._refusals[reason] = (logged_at, unlogged + 1)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid = _peer_uid(sock) if sock is not None else None
        if uid is None or uid not in self.allow_uids:
            self.refuse("peer uid not allowed", uid=uid)
            writer.close()
            return
        await self._serve(reader, writer, token=None)

    async def _accept_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, token=self.token)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str | None) -> None:
        if len(self._connections) >= self.max_connections:
            # Each connection is a descriptor and a task: a client that opens them in a loop and
            # never closes them must not take the descriptors the processes need.
            self.refuse("too many connections", limit=self.max_connections)
            error = ProtocolError(
                f"the daemon serves {self.max_connections} control connections already "
                "(daemon.max_connections); close some, or raise the limit"
            )
            with contextlib.suppress(ConnectionError):
                writer.write(encode({"id": None, "ok": False, "error": error_fields(error)}))
                await writer.drain()
            writer.close()
            return
        connection = _Connection(self, reader, writer, token)
        self._connections.add(connection)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await connection.serve()
        finally:
            self._connections.discard(connection)
            if handler is not None:
                self._handlers.discard(handler)


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return int(uid)


class _Connection:
    def __init__(
        self,
        server: ControlServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        token: str | None = None,
    ) -> None:
        self.server = server
        self.token = token
        self.reader = reader
        self.writer = writer
        self.node = server.node
        self.fanout = server.fanout
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.greeted = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for task in self.tasks.values():
            task.cancel()
        self.writer.close()

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.writer.write(encode(message))
            await self.writer.drain()
        except (ConnectionError, ProtocolError) as exc:
            if isinstance(exc, ProtocolError):  # a result too large for one frame
                await self.fail(message.get("id"), exc)
                return
            self.close()

    def write_now(self, frame: bytes) -> None:
        """Queue a whole frame without waiting for the peer (the watch fan-out paces itself)."""
        if not self.closed and not self.writer.transport.is_closing():
            self.writer.write(frame)

    def backlog(self) -> int:
        """Bytes written here that the peer has not taken yet."""
        return int(self.writer.transport.get_write_buffer_size())

    async def send_frame(self, frame: bytes) -> None:
        if self.closed:
            return
        try:
            self.writer.write(frame)
            await self.writer.drain()
        except ConnectionError:
            self.close()

    async def fail(self, request_id: int | None, error: BaseException) -> None:
        await self.send({"id": request_id, "ok": False, "error": error_fields(error)})

    async def serve(self) -> None:
        try:
            while not self.closed:
                try:
                    if self.greeted:
                        message = await read_frame(self.reader, self.server.max_frame)
                    else:
                        message = await self._first_frame()
                except ProtocolError as exc:
                    await self.fail(None, exc)
                    break  # the framing is broken: nothing after this can be trusted
                if message is None:
                    break
                await self._dispatch(message)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.close()
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def _first_frame(self) -> dict[str, Any] | None:
        """The next frame of a connection that has not greeted yet, within ``hello_timeout``:
        a peer that connects and says nothing (or trickles bytes) would otherwise hold one of
        ``max_connections`` for good, and on TCP anyone who can connect could fill them all."""
        timeout = self.server.hello_timeout
        try:
            async with asyncio.timeout(timeout):
                return await read_frame(self.reader, self.server.max_frame)
        except TimeoutError:
            self.server.refuse("no hello in time", seconds=timeout)
            raise ProtocolError(f"no hello within {timeout:g} s of connecting") from None

    async def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            await self.fail(None, ProtocolError("'id' must be an integer"))
            return
        op = message.get("op")
        if not self.greeted:
            if op != "hello" or message.get("v") != PROTOCOL_VERSION:
                error = ProtocolError(
                    f"expected hello with protocol version {PROTOCOL_VERSION}, got {op!r} v{message.get('v')!r}"
                )
                await self.fail(request_id, error)
                self.close()
                return
            offered = message.get("token")
            if self.token is not None and not (
                isinstance(offered, str) and hmac.compare_digest(offered.encode(), self.token.encode())
            ):
                self.server.refuse("bad or missing token on TCP")
                await self.fail(request_id, ProtocolError("a valid token is required on this connection"))
                self.close()
                return
            self.greeted = True
            from .._version import __version__

            await self.send(
                {"id": request_id, "ok": True, "result": {"version": PROTOCOL_VERSION, "server": __version__}}
            )
            return
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            await self.fail(request_id, ProtocolError(f"unknown operation {op!r}; known: {', '.join(sorted(OPS))}"))
            return
        args = message.get("args", {})
        if not isinstance(args, dict):
            await self.fail(request_id, ProtocolError("'args' must be a map"))
            return
        if request_id in self.tasks:
            await self.fail(request_id, ProtocolError(f"request id {request_id} is already in use here"))
            return
        if len(self.tasks) >= MAX_IN_FLIGHT:
            # Each request is a task until answered: a client that sends without reading the
            # answers (or opens streams without end) is refused more, not given the memory.
            await self.fail(
                request_id,
                ProtocolError(
                    f"{MAX_IN_FLIGHT} requests are in flight on this connection already; "
                    "wait for answers, or cancel streams, before sending more"
                ),
            )
            return
        router = self.server.router
        if router is not None and isinstance(op, str) and router.routes(op, args):
            work = self._route(router, op, args, request_id)
        else:
            work = self._run(handler, args, request_id)
        self.tasks[request_id] = asyncio.get_running_loop().create_task(work)

    async def _run(self, handler: Op, args: dict[str, Any], request_id: int) -> None:
        try:
            message = await answer(self, handler, args, request_id, self.server.count_bug)
            if message is not None:
                await self.send(message)
        finally:
            self.tasks.pop(request_id, None)

    async def _route(self, router: Router, op: str, args: dict[str, Any], request_id: int) -> None:
        try:
            await router.route(self, op, args, request_id)
        except asyncio.CancelledError:
            return
        except (StatevisorError, TimeoutError) as exc:
            await self.fail(request_id, exc)
        except Exception as exc:  # a bug in routing costs one request, never the daemon
            self.server.count_bug()
            log.exception("control_route_failed", op=op)
            await self.send({"id": request_id, "ok": False, "error": {"type": "InternalError", "message": repr(exc)}})
        finally:
            self.tasks.pop(request_id, None)

    def handle(self, args: dict[str, Any]) -> Handle:
        pid = argument(args, "pid", str)
        try:
            return self.node.get(pid)
        except ProcessNotFound:
            return self.node.find(pid)
