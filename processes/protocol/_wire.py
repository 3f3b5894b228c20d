"""Frames on the wire: what each one carries, its checksum, and its framing on a byte stream.

A frame is msgpack ``[kind, protocol, version, run, seq, step, body]`` followed by the CRC-32 of
those bytes (4 bytes, big-endian). ``kind`` says what it is (a step's request or answer, an
abort, a hold, a rewind); ``protocol`` and ``version`` name the protocol; ``run`` tells one run
of it from another (the host draws it when a run begins); ``seq`` and ``step`` are the joint
step's sequence number and name, which keep both sides phase-locked.

On a byte stream (a socket, a serial line) frames are delimited SLIP-style: each frame is
``END``-terminated, with ``END`` and ``ESC`` bytes inside escaped. A corrupted byte fails the
checksum and only that frame is lost; the next ``END`` resynchronises the reader, so line noise
or a frame cut short by a reconnect never desynchronises the stream. The in-process channel
carries the same frames without the stuffing.
"""

from __future__ import annotations

import zlib
from enum import IntEnum
from typing import Any, NamedTuple

from supervisor.lowlevel import pack, unpack

END = 0xC0
ESC = 0xDB
_END = bytes([END])
_ESC = bytes([ESC])
_ESCAPED_END = bytes([ESC, 0xDC])
_ESCAPED_ESC = bytes([ESC, 0xDD])

MAX_FRAME = 1 << 20
"""The largest frame a reader accepts (bytes between two ``END`` bytes, escaped)."""


class FrameKind(IntEnum):
    REQUEST = 0  # the host's message of a step
    ANSWER = 1  # the client's answer to it
    ABORT = 2  # either side's abort, and the other side's acknowledgement
    HOLD = 3  # "I am paused; keep waiting" (resets the peer's step timeout)
    REWIND = 4  # the client lost steps in a crash: "send your requests again from seq N"


class Frame(NamedTuple):
    kind: int
    protocol: str
    version: int
    run: str
    seq: int
    step: str
    body: Any


class FrameError(ValueError):
    """Bytes that are not a frame: a wrong checksum, or not the frame's shape."""


def encode_frame(kind: int, protocol: str, version: int, run: str, seq: int, step: str, body: Any) -> bytes:
    payload = pack([kind, protocol, version, run, seq, step, body])
    return payload + zlib.crc32(payload).to_bytes(4, "big")


def decode_frame(data: bytes) -> Frame:
    if len(data) < 5:
        raise FrameError(f"{len(data)} bytes is too short for a frame")
    payload = data[:-4]
    if zlib.crc32(payload) != int.from_bytes(data[-4:], "big"):
        raise FrameError("checksum mismatch")
    try:
        fields = unpack(payload)
        kind, protocol, version, run, seq, step, body = fields
    except Exception as exc:  # msgpack's errors are several classes; a bad frame is one thing
        raise FrameError(f"not a frame: {exc}") from exc
    if type(kind) is not int or type(seq) is not int or type(version) is not int or type(step) is not str:
        raise FrameError(f"not a frame: {fields!r:.80}")
    if type(protocol) is not str or type(run) is not str:
        raise FrameError(f"not a frame: {fields!r:.80}")
    return Frame(kind, protocol, version, run, seq, step, body)


def stuff(frame: bytes) -> bytes:
    """A frame as it goes on a byte stream: escaped and ``END``-delimited."""
    if ESC in frame:
        frame = frame.replace(_ESC, _ESCAPED_ESC)
    if END in frame:
        frame = frame.replace(_END, _ESCAPED_END)
    return _END + frame + _END


class Deframer:
    """Cuts a byte stream back into frames (their escaped bytes undone; checksums are checked
    by :func:`decode_frame`). ``dropped`` counts runs of bytes longer than :data:`MAX_FRAME`."""

    __slots__ = ("_buffer", "dropped")

    def __init__(self) -> None:
        self._buffer = b""
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        if END not in data:
            if len(buffer) > MAX_FRAME:
                self.dropped += 1
                buffer = b""
            self._buffer = buffer
            return []
        *parts, self._buffer = buffer.split(_END)
        frames = []
        for part in parts:
            if part:
                if ESC in part:
                    part = part.replace(_ESCAPED_END, _END).replace(_ESCAPED_ESC, _ESC)
                frames.append(part)
        return frames

    def reset(self) -> None:
        """Forget a partial frame (the stream was reconnected)."""
        self._buffer = b""

    def __repr__(self) -> str:
        return f"<Deframer {len(self._buffer)} bytes pending, {self.dropped} dropped>"
