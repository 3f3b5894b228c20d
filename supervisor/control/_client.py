"""The Python client of the control API (its remote handles are in :mod:`._remote`).

    async with Client.connect("var/statevisor.sock") as client:
        handle = await client.spawn("ticker", {"interval": 1.0})
        await handle.cast("hello")
        async for snapshot in handle.watch():
            ...

Remote handles raise the same exception classes as in-process ones (rebuilt here from the
error's fields), and return the same :class:`Snapshot` records.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import Any

from .. import _errors as errors
from .._core.lifecycle import Lifecycle
from .._core.snapshot import Snapshot
from .._supervision.summary import NodeSummary
from ._errors import ConnectionDenied, DaemonNotAnswering, ProtocolError, RemoteError
from ._protocol import PROTOCOL_VERSION, encode, read_frame
from ._remote import Placed, RemoteHandle, snapshot_of


def _rebuild(fields: dict[str, Any]) -> BaseException:
    kind, message = str(fields.get("type")), str(fields.get("message", ""))
    pid, reason = str(fields.get("pid", "?")), str(fields.get("reason", message))
    if kind == "ProcessFinished":
        return errors.ProcessFinished(pid, "finished")
    if kind == "ProcessFailed":
        return errors.ProcessFailed(pid, reason)
    if kind == "ProcessKilled":
        return errors.ProcessKilled(pid, reason)
    if kind == "SettingsError" and "key" in fields and "problem" in fields:
        return errors.SettingsError(str(fields["key"]), str(fields["problem"]))
    if kind in ("TransitionError", "IllegalPhaseChange", "StateMutationError", "NondeterminismError"):
        return errors.TransitionError(str(fields.get("error_type", kind)), message)
    simple: dict[str, type[BaseException]] = {
        "WouldBlock": errors.WouldBlock, "CallTimeout": errors.CallTimeout, "ProcessNotFound": errors.ProcessNotFound,
        "ConfigurationError": errors.ConfigurationError, "StateTypeError": errors.ConfigurationError,
        "ProtocolError": ProtocolError, "NotFinished": errors.NotFinished, "TimeoutError": TimeoutError,
        "LogNotFound": errors.LogNotFound,
    }  # fmt: skip
    if kind in simple:
        return simple[kind](message)
    if fields.get("retryable"):  # a cluster's ProcessMoving, OwnerLost...: the same request may succeed later
        retry_after = fields.get("retry_after")
        return errors.Unavailable(message, float(retry_after) if isinstance(retry_after, int | float) else 1.0)
    return RemoteError(kind, message)


CONNECT_TIMEOUT = 10.0
"""Seconds a client gives the daemon to accept it and answer its hello."""


class _Disconnected:
    """Put into a watch stream's queue when the connection drops (the stream reconnects)."""


class Client:
    """One connection to a daemon. Use ``async with Client.connect(path) as client``.

    When the daemon goes away (a restart, a crash), requests in flight fail with
    ``ConnectionResetError`` (they may or may not have been carried out), the next request
    reconnects, and watch streams reconnect by themselves (backoff up to ``reconnect_timeout``)
    and resume from the process's current version. Connecting (and the daemon's answer to the
    hello) must take less than ``connect_timeout``: a stopped or stuck daemon still accepts
    connections (the kernel does), and would otherwise keep a caller waiting for good.
    """

    def __init__(
        self,
        path: str,
        *,
        reconnect_timeout: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
        tcp: tuple[str, int] | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.path = path
        self.tcp = tcp
        self.token = token
        self.tls = tls
        self.reconnect_timeout = reconnect_timeout
        self.connect_timeout = connect_timeout
        self._reconnecting: asyncio.Lock | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[Any]] = {}
        self._pump: asyncio.Task[None] | None = None
        self.server_version: str | None = None

    @classmethod
    def connect(cls, path: str, *, reconnect_timeout: float = 30.0, connect_timeout: float = CONNECT_TIMEOUT) -> Client:
        """A client of the daemon's unix socket (owner-only; no token needed)."""
        return cls(path, reconnect_timeout=reconnect_timeout, connect_timeout=connect_timeout)

    @classmethod
    def connect_tcp(
        cls,
        host: str,
        port: int,
        *,
        token: str,
        tls: ssl.SSLContext | None = None,
        reconnect_timeout: float = 30.0,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> Client:
        """A client over TCP: the token is required; pass an SSL context beyond loopback."""
        return cls(
            f"{host}:{port}",
            tcp=(host, port),
            token=token,
            tls=tls,
            reconnect_timeout=reconnect_timeout,
            connect_timeout=connect_timeout,
        )

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and greet; raises ``DaemonNotAnswering`` (a ``TimeoutError``) naming the
        daemon when that takes longer than ``connect_timeout``, ``ConnectionDenied`` when the
        daemon refuses."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._open()
        except TimeoutError:
            raise DaemonNotAnswering(
                f"the daemon at {self.path} did not answer within {self.connect_timeout:g} s "
                "(is it stopped, or its event loop blocked?)"
            ) from None

    async def _open(self) -> None:
        if self.tcp is not None:
            self._reader, self._writer = await asyncio.open_connection(self.tcp[0], self.tcp[1], ssl=self.tls)
        else:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        hello: dict[str, Any] = {"op": "hello", "v": PROTOCOL_VERSION, "id": 0}
        if self.token is not None:
            hello["token"] = self.token
        try:
            self._writer.write(encode(hello))
            await self._writer.drain()
            answer = await read_frame(self._reader)
        except BaseException:
            self._writer.close()
            raise
        if answer is None or not answer.get("ok"):
            self._writer.close()  # refused: do not leave the socket to the garbage collector
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
            reason = (answer or {}).get("error", {}).get("message", "connection closed")
            raise ConnectionDenied(f"the daemon refused the connection: {reason}")
        self.server_version = answer["result"].get("server")
        self._pump = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._fail_all(ConnectionResetError("the control connection is closed"))

    def _fail_all(self, error: BaseException, *, streams_resume: bool = False) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        for queue in self._streams.values():
            queue.put_nowait(_Disconnected() if streams_resume else error)

    @property
    def connected(self) -> bool:
        return self._pump is not None and not self._pump.done()

    async def reconnect(self) -> None:
        """Connect again (one attempt at a time), with backoff, within ``reconnect_timeout``."""
        if self._reconnecting is None:
            self._reconnecting = asyncio.Lock()
        async with self._reconnecting:
            if self.connected:
                return
            if self._writer is not None:
                self._writer.close()
            delay = 0.05
            async with asyncio.timeout(self.reconnect_timeout):
                while True:
                    try:
                        await self.open()
                        return
                    except ConnectionDenied:
                        raise
                    except (ConnectionError, FileNotFoundError, ProtocolError):
                        await asyncio.sleep(delay)
                        delay = min(1.0, delay * 2)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                message = await read_frame(self._reader)
                if message is None:
                    break
                request = message.get("id")
                if "item" in message and request in self._streams:
                    self._streams[request].put_nowait(message["item"])
                    continue
                if request in self._streams:
                    ended = message.get("ok")
                    self._streams[request].put_nowait(
                        StopAsyncIteration(message.get("result")) if ended else _rebuild(message.get("error", {}))
                    )
                    continue
                future = self._waiting.pop(request, None) if isinstance(request, int) else None
                if future is None or future.done():
                    continue
                if message.get("ok"):
                    future.set_result(message.get("result"))
                else:
                    future.set_exception(_rebuild(message.get("error", {})))
        except (ConnectionError, ProtocolError) as exc:
            self._fail_all(ConnectionResetError(f"the control connection broke: {exc}"), streams_resume=True)
            return
        self._fail_all(ConnectionResetError("the daemon closed the control connection"), streams_resume=True)

    async def _send(self, request: int, op: str, args: dict[str, Any]) -> None:
        if self._writer is None:
            raise ConnectionResetError("not connected; use `async with Client.connect(path)`")
        if not self.connected:
            await self.reconnect()
        assert self._writer is not None
        self._writer.write(encode({"id": request, "op": op, "args": args}))
        await self._writer.drain()

    async def request(self, op: str, **args: Any) -> Any:
        request = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        await self._send(request, op, args)
        return await future

    async def collect(self, op: str, **args: Any) -> list[Any]:
        """Every item of a finite server stream whose items are lists, joined; from a daemon
        that answers with one list in its response instead, that list. A broken connection
        fails it like any request in flight (``ConnectionResetError``): asking again could
        repeat items."""
        found: list[Any] = []
        async with contextlib.aclosing(self._stream_once(op, args)) as items:
            async for item in items:
                if isinstance(item, _Disconnected):
                    raise ConnectionResetError(f"the control connection broke during {op!r}")
                found.extend((item.args[0] or ()) if isinstance(item, StopAsyncIteration) else item)
        return found

    def stream(self, op: str, **args: Any) -> AsyncIterator[Any]:
        """Items of a server stream; after a disconnection the stream is asked for again."""
        return self.resumable_stream(op, lambda: args)

    async def resumable_stream(self, op: str, args: Callable[[], dict[str, Any]]) -> AsyncIterator[Any]:
        """Items of a server stream; after a disconnection it is asked for again with what
        ``args()`` returns then (e.g. the position reached)."""
        while True:
            async with contextlib.aclosing(self._stream_once(op, args())) as items:
                async for item in items:
                    if isinstance(item, StopAsyncIteration):
                        return
                    if isinstance(item, _Disconnected):
                        break
                    yield item
            await self.reconnect()

    async def _stream_once(self, op: str, args: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """One request's stream: its items, then how it ended, yielded last: the response (a
        ``StopAsyncIteration`` carrying its result) or ``_Disconnected``; an error response is
        raised. A stream closed before its end (the caller stopped reading, or was cancelled)
        is cancelled on the server."""
        request = next(self._ids)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[request] = queue
        ended = False
        try:
            await self._send(request, op, args)
            while True:
                item = await queue.get()
                ended = isinstance(item, (StopAsyncIteration, BaseException, _Disconnected))
                if isinstance(item, BaseException) and not isinstance(item, StopAsyncIteration):
                    raise item
                yield item
                if ended:
                    return
        finally:
            self._streams.pop(request, None)
            if not ended:
                self._abandon(request)

    def _abandon(self, request: int) -> None:
        """Ask the server to stop a stream nobody reads any more; left alone, it would go on
        pushing to it (a watch until its process ends, a follow for ever) while the connection
        lives. Written without waiting: this runs where a stream is being closed."""
        if self.connected and self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode({"id": next(self._ids), "op": "cancel", "args": {"request": request}}))

    async def spawn(
        self, kind: str, state: dict[str, Any] | None = None, *, name: str | None = None, start: bool = True
    ) -> RemoteHandle:
        """Spawn a process of ``kind`` (``start=False``: held until ``await handle.start()``)."""
        if start:  # a daemon from before held processes knows no "start" argument: send it only when needed
            fields = await self.request("spawn", kind=kind, state=state, name=name)
        else:
            fields = await self.request("spawn", kind=kind, state=state, name=name, start=False)
        return RemoteHandle(self, fields["pid"], fields["name"], fields["kind"])

    async def get(self, pid: str) -> RemoteHandle:
        """A handle to a live process, by id or name."""
        fields = await self.request("state", pid=pid)
        return RemoteHandle(self, fields["pid"], fields["name"], fields["kind"])

    async def list(
        self, *, kind: str | None = None, lifecycle: Lifecycle | None = None, paused: bool | None = None
    ) -> list[Snapshot]:
        """Snapshots of the live processes that match; any number of them (they come in chunks
        that each fit a frame)."""
        lifecycle_name = str(lifecycle) if lifecycle else None
        found = await self.collect("list", kind=kind, lifecycle=lifecycle_name, paused=paused, chunked=True)
        return [snapshot_of(f) for f in found]

    async def placed(
        self, *, kind: str | None = None, lifecycle: Lifecycle | None = None, paused: bool | None = None
    ) -> builtins.list[Placed]:
        """As :meth:`list`, each snapshot with its owner: through a cluster's member, every
        member's processes (and those bound to a member that is down, as last checkpointed)."""
        lifecycle_name = str(lifecycle) if lifecycle else None
        found = await self.collect("list", kind=kind, lifecycle=lifecycle_name, paused=paused, chunked=True)
        return [Placed(snapshot_of(f), f.get("owner"), bool(f.get("reachable", True))) for f in found]

    async def cluster(self) -> dict[str, Any] | None:
        """The cluster as the daemon sees it (its name, this member's node and standing, each
        live member with its lease left and processes, failovers, fenced writes), or None for
        a daemon that is no cluster's member."""
        fields = await self.request("summary")
        found = fields.get("cluster")
        return dict(found) if isinstance(found, dict) else None

    async def summary(self) -> NodeSummary:
        """The daemon's host in counts (as ``Node.summary()``): live processes by kind and
        lifecycle, ended since start, restarts, slots; one small answer however many processes."""
        return NodeSummary.from_fields(await self.request("summary"))

    def __repr__(self) -> str:
        state = "connected" if self._pump is not None and not self._pump.done() else "closed"
        return f"<Client {self.path} {state}, {len(self._waiting)} waiting, {len(self._streams)} streams>"
