"""A role's recorded run: every message it sent and received, every effect's result, in order.

The record is what a role replays after a crash (through the same protocol function, until it
is exhausted, then the role goes on live), what its peer's repeats are answered from, and what
the sequence diagram of the run is drawn from. Each record is a list ``[type, seq, step, data]``:

* ``run``: the header (``data``: protocol, version, side, the run's id);
* ``out`` / ``in``: a frame sent / accepted (``data``: ``[kind, body]``; a client's first
  ``in`` adds the run's id);
* ``effect``: an effect's result; ``intent``: a step that happens once is about to take its
  first effect; ``done``: such a step completed;
* ``raise``: an error the driver raised into the protocol at a step (a timeout, a desync), so
  that replay raises it at the same place;
* ``end``: the run ended (``data``: outcome, terminal step, reason).

On disk (:class:`RecordFile`) records go to one owner-only file in **batches**: appending is a
list append (the hot path of a run pays nothing more), and each flush writes the records
appended since as one entry, ``length | crc32 | msgpack array of records``. A torn entry (a crash
in the middle of a write) is cut off when the file is opened again. Batches are written at
every fence, every flush interval and at the end; a fence also fsyncs. A tail the daemon did
not live to write is harmless by construction: the steps it held are taken again
(``Resume.REPEAT``), and the steps that must not be were fenced.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

from supervisor.lowlevel import pack, private_file, unpack

from .errors import RecordError

MAGIC = b"statevisor-protocol-record 2\n"
_HEAD = struct.Struct(">II")

RUN, OUT, IN, EFFECT, INTENT, DONE, RAISE, END = "run", "out", "in", "effect", "intent", "done", "raise", "end"


def read_records(path: str | Path) -> tuple[list[list[Any]], int]:
    """The records of ``path`` that are whole (a torn or corrupt tail is left out), and the
    offset where the whole ones end. A missing file is an empty record."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise RecordError(str(path), f"cannot read: {exc}") from exc
    if not data:
        return [], 0
    if not data.startswith(MAGIC):
        raise RecordError(str(path), "not a protocol record (its first line is not statevisor's)")
    records: list[list[Any]] = []
    offset = len(MAGIC)
    while offset + _HEAD.size <= len(data):
        length, crc = _HEAD.unpack_from(data, offset)
        start = offset + _HEAD.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break  # torn by a crash mid-write: what follows was never acknowledged
        batch = unpack(payload)
        if not isinstance(batch, list) or not all(isinstance(r, list) and len(r) == 4 for r in batch):
            raise RecordError(str(path), f"the batch at byte {offset} is not records [type, seq, step, data]")
        records.extend(batch)
        offset = start + length
    return records, offset


def encode_batch(records: list[list[Any]]) -> bytes:
    payload = pack(records)
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


class RecordFile:
    """The append side of a role's record: :meth:`append` (a list append), ``flush`` (the
    records appended since, written to the OS as one batch: a killed daemon loses nothing
    flushed) and ``sync`` (fsynced: a power cut loses nothing synced)."""

    def __init__(self, path: str | Path, *, valid_length: int) -> None:
        self.path = Path(path)
        self.pending: list[list[Any]] = []
        self.append = self.pending.append
        self.written = 0
        self.batches = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RecordError(str(self.path), f"cannot open for writing: {exc}") from exc
        private_file(self.path)
        self._fd: int | None = fd
        if valid_length == 0:
            os.ftruncate(fd, 0)
            self._write(MAGIC)
        else:
            os.ftruncate(fd, valid_length)  # cut a torn tail off, so new batches follow whole ones
        os.lseek(fd, 0, os.SEEK_END)

    def flush(self) -> None:
        if self._fd is None or not self.pending:
            return
        batch = encode_batch(self.pending)
        self.pending.clear()
        self._write(batch)
        self.batches += 1

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            raise RecordError(str(self.path), f"cannot write: {exc}") from exc
        self.written += len(data)

    def sync(self) -> None:
        self.flush()
        self.fsync()

    def fsync(self) -> None:
        """Make what was written durable (what is still pending is not: :meth:`flush` first)."""
        if self._fd is not None:
            try:
                os.fdatasync(self._fd)  # the data and the length that reads it back: enough
            except OSError as exc:
                raise RecordError(str(self.path), f"cannot sync: {exc}") from exc

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.flush()
        finally:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"{len(self.pending)} pending"
        return f"<RecordFile {self.path} {self.batches} batches written, {state}>"
