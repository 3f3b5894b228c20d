"""A small HTTP/1.1 server on asyncio streams: what the fake API server speaks.

Standard library only. Keep-alive connections (clients reuse them, as client-go and httpx do),
request bodies by ``Content-Length`` or chunked, and two kinds of response: a whole body, or a
chunked stream whose pieces are written as they come (watches, followed logs). TLS is the ssl
module's, offering HTTP/1.1 alone by ALPN, so clients that prefer HTTP/2 (kubectl) fall back.

:meth:`HttpServer.stop` closes the listener *and* every open connection, as a restarting API
server does; :meth:`HttpServer.start` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    410: "Gone",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    peer_cert: dict[str, Any] | None = None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: AsyncIterator[bytes] | None = None  # chunked: each item written as it comes


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serves ``handler`` on 127.0.0.1:``port`` (0: any free port), optionally over TLS."""

    def __init__(self, handler: Handler, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.port = port
        self.tls = tls
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, ssl=self.tls, reuse_address=True, backlog=1024
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and cut every open connection (streams included)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # stopped: the connection is cut below, as a dying server's would be
        finally:
            self._connections.discard(task)
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        peer_cert = ssl_object.getpeercert() if ssl_object is not None else None
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed between requests
            if len(head) > _MAX_HEAD:
                return
            request = _parse_head(head.decode("latin-1"))
            request.peer_cert = peer_cert or None
            request.body = await _read_body(reader, request)
            try:
                response = await self.handler(request)
            except Exception as exc:  # the fake's own bug: answered as the API server would, and shown
                traceback.print_exc()
                body = json.dumps(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "code": 500,
                        "reason": "InternalError",
                        "message": repr(exc),
                    }
                ).encode()
                response = Response(500, body, {"Content-Type": "application/json"})
            keep = request.header("connection").lower() != "close"
            await _write(writer, response, keep, head_only=request.method == "HEAD")
            if not keep:
                return


def _parse_head(text: str) -> Request:
    lines = text.split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    return Request(method.upper(), parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)), headers, b"")


async def _read_body(reader: asyncio.StreamReader, request: Request) -> bytes:
    if request.header("transfer-encoding").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
            if len(body) > _MAX_BODY:
                raise ValueError("body too large")
    length = int(request.header("content-length", "0") or 0)
    if length > _MAX_BODY:
        raise ValueError("body too large")
    return await reader.readexactly(length) if length else b""


async def _write(writer: asyncio.StreamWriter, response: Response, keep: bool, *, head_only: bool) -> None:
    headers = {"Cache-Control": "no-cache, private", **response.headers}
    if response.stream is None:
        headers["Content-Length"] = str(len(response.body))
    else:
        headers["Transfer-Encoding"] = "chunked"
    if not keep:
        headers["Connection"] = "close"
    head = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Status')}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    if response.stream is None:
        writer.write(head.encode("latin-1") + (b"" if head_only else response.body))
        await writer.drain()
        return
    writer.write(head.encode("latin-1"))
    await writer.drain()
    stream = response.stream
    try:
        async for piece in stream:
            if piece:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    finally:
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """A server context for ``cert``; with ``client_ca``, client certificates it signed are
    asked for (optional: a token authenticates too)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
