"""Framing and messages of the control protocol (version 1).

A frame is a 4-byte big-endian length, then that many bytes of msgpack. Frames larger than
``MAX_FRAME`` are refused (the connection is closed: past a bad length nothing can be trusted).

* client hello:  ``{"op": "hello", "v": 1, "id": 0}`` (``"token"`` too, when the server wants one)
* request:       ``{"id": N, "op": "cast", "args": {...}}``
* response:      ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false, "error": {...}}``
* stream item:   ``{"id": N, "item": ...}``, ended by the request's response (watch, follow,
  and ``list`` with ``chunked``, whose items are lists of snapshots that each fit a frame)

Errors carry ``type`` (the exception class name), ``message`` and, where the class has them,
its fields (``pid``, ``reason``, ``error_type``, ``key``, ``problem``), so the client raises the
same class. A client that stops reading a stream sends ``cancel`` with its request id.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack  # type: ignore[import-untyped]

from .._core.state import pack, unpack
from ._errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME = 1 << 20
_LENGTH = struct.Struct(">I")


def encode(message: dict[str, Any]) -> bytes:
    body = pack(message)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> dict[str, Any] | None:
    """The next message, or None at end of stream. Raises ProtocolError for a bad frame."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    (length,) = _LENGTH.unpack(header)
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes is over the {limit}-byte limit")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    try:
        message = unpack(body)
    except Exception as exc:
        raise ProtocolError(f"frame is not msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a map, got {type(message).__name__}")
    return message


def error_fields(error: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    for name in ("pid", "reason", "error_type", "key", "problem"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            fields[name] = value
    if getattr(error, "retryable", False):  # Unavailable and its kin: the client may try again
        fields["retryable"] = True
        fields["retry_after"] = float(getattr(error, "retry_after", 1.0))
    if hasattr(error, "error_type"):  # TransitionError and its kin: the bare message, not the prefixed str()
        fields["message"] = getattr(error, "message", str(error))
    return fields


def encode_item(request: int, item_body: bytes) -> bytes:
    """A stream-item frame ``{"id": request, "item": ...}`` around an already-encoded item.

    One snapshot goes to many watchers: it is encoded once and spliced into each frame (a
    msgpack map of two entries is its header byte followed by the keys and values).
    """
    request_id: bytes = msgpack.packb(request)
    body = b"\x82" + _ID_KEY + request_id + _ITEM_KEY + item_body
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return _LENGTH.pack(len(body)) + body


_ID_KEY: bytes = msgpack.packb("id")
_ITEM_KEY: bytes = msgpack.packb("item")
