"""The control protocol's operations: one coroutine per ``op``, over a connection's host.

Each takes the requesting connection (as a :class:`Requester`), the request's ``args`` map and
its id, checks its arguments by name and type (:func:`argument`, which names a missing or
mistyped one in its error), and returns the response's result. :mod:`._server` owns framing,
the hello and token check, and running these concurrently per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import msgpack  # type: ignore[import-untyped]
import structlog

from .._core.handle import Handle
from .._core.lifecycle import DriveMode, Lifecycle
from .._core.snapshot import Snapshot
from .._core.state import pack
from .._errors import StatevisorError
from .._supervision.node import Node
from ._errors import ProtocolError
from ._fanout import WatchFanout
from ._protocol import MAX_FRAME, encode_item, error_fields

log = structlog.get_logger("statevisor.control")


class Requester(Protocol):
    """What an operation uses of the connection its request came on."""

    node: Node
    fanout: WatchFanout
    tasks: dict[int, asyncio.Task[None]]

    def handle(self, args: dict[str, Any]) -> Handle: ...

    async def send(self, message: dict[str, Any]) -> None: ...

    async def send_frame(self, frame: bytes) -> None: ...

    def write_now(self, frame: bytes) -> None: ...

    def backlog(self) -> int: ...


Op = Callable[[Requester, dict[str, Any], int], Awaitable[Any]]


class Router(Protocol):
    """Sends requests elsewhere: a cluster's daemon routes a request for a process another
    daemon owns to that daemon (and lists, spawns and sums up across the cluster)."""

    def routes(self, op: str, args: dict[str, Any]) -> bool:
        """Whether this request is the router's to answer rather than this node's."""
        ...

    async def route(self, c: Requester, op: str, args: dict[str, Any], request_id: int) -> None:
        """Answer the request: its stream items, if any, then its response, sent on ``c``."""
        ...


async def answer(
    c: Requester, handler: Op, args: dict[str, Any], request_id: int, on_bug: Callable[[], None] = lambda: None
) -> dict[str, Any] | None:
    """Run one request's operation: its response message, or None when it was cancelled
    (a stream the client stopped: the cancel answered it). A bug in an operation costs that
    request (``InternalError``, logged, ``on_bug`` told), never the daemon."""
    try:
        result = await handler(c, args, request_id)
    except asyncio.CancelledError:
        return None
    except (StatevisorError, TimeoutError) as exc:
        return {"id": request_id, "ok": False, "error": error_fields(exc)}
    except Exception as exc:
        on_bug()
        log.exception("control_request_failed", op=getattr(handler, "__name__", repr(handler)))
        return {"id": request_id, "ok": False, "error": {"type": "InternalError", "message": repr(exc)}}
    return {"id": request_id, "ok": True, "result": result}


def snapshot_fields(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "pid": snapshot.pid, "name": snapshot.name, "kind": snapshot.kind, "version": snapshot.version,
        "lifecycle": str(snapshot.lifecycle), "paused": snapshot.paused, "pause_reason": snapshot.pause_reason,
        "phase": snapshot.phase, "state": snapshot.state, "waiting_on": list(snapshot.waiting_on),
        "since": snapshot.since, "result": snapshot.result, "error": snapshot.error,
    }  # fmt: skip


def argument(args: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True) -> Any:
    if name not in args:
        if required:
            raise ProtocolError(f"argument {name!r} is missing")
        return None
    value = args[name]
    if value is None:
        if required:
            raise ProtocolError(f"argument {name!r} must be {getattr(kind, '__name__', kind)}, not nil")
        return None
    if not isinstance(value, kind):
        raise ProtocolError(f"argument {name!r} must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}")
    return value


async def op_spawn(c: Requester, args: dict[str, Any], _: int) -> Any:
    kind = argument(args, "kind", str)
    state = argument(args, "state", dict, required=False)
    mode = DriveMode(argument(args, "mode", str, required=False) or "auto")
    start = argument(args, "start", bool, required=False)
    name = argument(args, "name", str, required=False)
    pid = argument(args, "pid", str, required=False)
    handle = await c.node.spawn(kind, state, name=name, mode=mode, start=start is not False, pid=pid)
    return fitting_fields(handle.snapshot())


async def op_start(c: Requester, args: dict[str, Any], _: int) -> Any:
    await c.handle(args).start()


async def op_state(c: Requester, args: dict[str, Any], _: int) -> Any:
    return fitting_fields(c.handle(args).snapshot())


async def op_list(c: Requester, args: dict[str, Any], request_id: int) -> Any:
    """Snapshots of the live processes that match the filters. ``chunked``: streamed as items,
    each a list of snapshots that fits a frame, however many processes there are (a client from
    before chunking gets them all in the response, which holds a few thousand at most)."""
    lifecycle = argument(args, "lifecycle", str, required=False)
    handles = c.node.list(
        kind=argument(args, "kind", str, required=False),
        lifecycle=Lifecycle(lifecycle) if lifecycle else None,
        paused=argument(args, "paused", bool, required=False),
    )
    if not argument(args, "chunked", bool, required=False):
        return [snapshot_fields(h.snapshot()) for h in handles]
    for chunk in snapshot_chunks(handles):
        await c.send_frame(encode_item(request_id, chunk))
        await asyncio.sleep(0)  # a long listing lets the processes run between its frames
    return None


def snapshot_chunks(handles: Iterable[Handle]) -> Iterator[bytes]:
    """Snapshot fields in encoded msgpack arrays, each small enough for one stream-item frame.

    A snapshot that alone is too large goes with its state (and, if need be, its result and
    error) left out and a note saying so, rather than failing the whole listing.
    """
    return array_chunks(_snapshot_body(handle.snapshot()) for handle in handles)


def array_chunks(bodies: Iterable[bytes]) -> Iterator[bytes]:
    """Encoded values joined into msgpack arrays that each fit a stream-item frame."""
    chunk: list[bytes] = []
    size = 0
    for body in bodies:
        if chunk and size + len(body) > _BUDGET:
            yield _ARRAY_HEADERS.pack_array_header(len(chunk)) + b"".join(chunk)
            chunk, size = [], 0
        chunk.append(body)
        size += len(body)
    if chunk:
        yield _ARRAY_HEADERS.pack_array_header(len(chunk)) + b"".join(chunk)


def encoded_snapshot(snapshot: Snapshot) -> bytes:
    """A snapshot's fields, msgpack-encoded (the watch fan-out encodes each version once)."""
    return pack(snapshot_fields(snapshot))


def _snapshot_body(snapshot: Snapshot) -> bytes:
    body = encoded_snapshot(snapshot)
    return body if len(body) <= _BUDGET else pack(_trimmed(snapshot, len(body)))


def fitting_fields(snapshot: Snapshot) -> dict[str, Any]:
    """A response's snapshot fields; if they would not fit a frame, with the largest parts left
    out and a note saying so (``statevisor inspect`` of a huge state says why it shows none)."""
    fields = snapshot_fields(snapshot)
    size = len(pack(fields))
    return fields if size <= _BUDGET else _trimmed(snapshot, size)


def _trimmed(snapshot: Snapshot, size: int) -> dict[str, Any]:
    """A snapshot too large for a frame, its largest parts left out, each with a note saying so."""
    fields = snapshot_fields(snapshot)
    for key in ("state", "result", "error"):
        fields[key] = f"({key} left out: the snapshot is {size} bytes, over a frame; see Machine.view())"
        if len(pack(fields)) <= _BUDGET:
            break
    return fields


# What an item may take of a frame: the rest is the frame's map, "id", the request id, "item"
# and the array header.
_BUDGET = MAX_FRAME - 64
_ARRAY_HEADERS = msgpack.Packer()


async def op_cast(c: Requester, args: dict[str, Any], _: int) -> Any:
    await c.handle(args).cast(args.get("message"))


async def op_try_cast(c: Requester, args: dict[str, Any], _: int) -> Any:
    c.handle(args).try_cast(args.get("message"))


async def op_call(c: Requester, args: dict[str, Any], _: int) -> Any:
    return await c.handle(args).call(args.get("message"), argument(args, "timeout", (int, float), required=False))


async def op_nudge(c: Requester, args: dict[str, Any], _: int) -> Any:
    await c.handle(args).nudge()


async def op_try_nudge(c: Requester, args: dict[str, Any], _: int) -> Any:
    c.handle(args).try_nudge()


async def op_pause(c: Requester, args: dict[str, Any], _: int) -> Any:
    await c.handle(args).pause()


async def op_resume(c: Requester, args: dict[str, Any], _: int) -> Any:
    await c.handle(args).resume()


async def op_kill(c: Requester, args: dict[str, Any], _: int) -> Any:
    return fitting_fields(await c.handle(args).kill(argument(args, "reason", str, required=False) or "killed"))


async def op_wait(c: Requester, args: dict[str, Any], _: int) -> Any:
    return fitting_fields(await c.handle(args).wait(argument(args, "timeout", (int, float), required=False)))


async def op_statistics(c: Requester, args: dict[str, Any], _: int) -> Any:
    from dataclasses import asdict

    return asdict(c.handle(args).statistics())


async def op_summary(c: Requester, args: dict[str, Any], _: int) -> Any:
    """The host in counts: one small answer however many processes it runs."""
    return c.node.summary().to_fields()


async def op_watch(c: Requester, args: dict[str, Any], request_id: int) -> Any:
    """Stream snapshots until the terminal one (or a cancel), paced: the current one at once,
    then at most one push per ``watch_interval``, always the latest version, the terminal one
    always sent (see ``_fanout``: one ticker serves every stream). Remote watchers count in the
    process's ``statistics().watchers``."""
    await c.fanout.watch(c, request_id, c.handle(args)._process)
    return None  # the response that ends the stream


async def op_logs(c: Requester, args: dict[str, Any], request_id: int) -> Any:
    """A log's last lines. ``chunked``: streamed as items, each a list of lines that fits a
    frame, however many lines are asked for (a client from before gets them in the response)."""
    lines = argument(args, "lines", int, required=False)
    found = await c.handle(args).logs(
        argument(args, "stream", str, required=False) or "stdout", 20 if lines is None else lines
    )
    if not argument(args, "chunked", bool, required=False):
        return found
    for chunk in array_chunks(pack(line) for line in found):
        await c.send_frame(encode_item(request_id, chunk))
    return None


async def op_follow(c: Requester, args: dict[str, Any], request_id: int) -> Any:
    """Stream a log's last lines, then its new lines, until the client cancels. With
    ``positions``, items are ``[line, offset after it]`` and ``start`` resumes after an offset
    (a client that reconnects misses nothing and repeats nothing)."""
    lines = argument(args, "lines", int, required=False)
    stream = argument(args, "stream", str, required=False) or "stdout"
    positions = argument(args, "positions", bool, required=False)
    start = argument(args, "start", int, required=False) if positions else None
    async for line, offset in c.handle(args).follow_positions(stream, 10 if lines is None else lines, start):
        item = [line, offset] if positions else line
        await c.send_frame(encode_item(request_id, msgpack.packb(item)))
    return None


async def op_cancel(c: Requester, args: dict[str, Any], _: int) -> Any:
    stream = argument(args, "request", int)
    task = c.tasks.get(stream)
    if task is not None:
        task.cancel()
        await c.send({"id": stream, "ok": True, "result": None})
    return None


OPS: dict[str, Op] = {
    "spawn": op_spawn, "start": op_start, "state": op_state, "list": op_list, "cast": op_cast, "try_cast": op_try_cast,
    "call": op_call, "nudge": op_nudge, "try_nudge": op_try_nudge, "pause": op_pause, "resume": op_resume,
    "kill": op_kill, "wait": op_wait, "statistics": op_statistics, "summary": op_summary, "watch": op_watch,
    "cancel": op_cancel, "logs": op_logs, "follow": op_follow,
}  # fmt: skip
