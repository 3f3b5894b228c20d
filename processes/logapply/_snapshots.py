"""Snapshots of a log-apply machine's state, one file per snapshot, written atomically.

A file is ``snapshot-<index>.bin``: a magic line, then msgpack ``[index, sha256(body), body]``
where ``body`` is the packed state (and the recent results, so a retried proposal still gets
its answer). It is written to a temporary name, fsynced, renamed into place, and the directory
fsynced, so a crash leaves either the old set of snapshots or the new one. Loading verifies the
checksum; a snapshot that fails to load is reported and the previous one is used instead (the
log is only ever compacted behind the *previous* snapshot, so that replay from it is possible).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]

from supervisor.lowlevel import private_directory

_MAGIC = b"statevisor-snapshot 1\n"


@dataclass(slots=True)
class Loaded:
    """The newest snapshot that loaded, and what was wrong with newer ones."""

    index: int
    state: dict[Any, Any] | None
    results: list[Any]
    rejected: list[str] = field(default_factory=list)


class SnapshotStore:
    """The snapshots of one machine in ``directory``; keeps the newest ``keep``."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = max(2, keep)

    def indexes(self) -> list[int]:
        """Indexes of the snapshots on disk, newest first."""
        found = []
        for path in self.directory.glob("snapshot-*.bin"):
            stem = path.stem.removeprefix("snapshot-")
            if stem.isdigit():
                found.append(int(stem))
        return sorted(found, reverse=True)

    def path(self, index: int) -> Path:
        return self.directory / f"snapshot-{index:020d}.bin"

    def write(self, index: int, body: bytes) -> int:
        """Write a snapshot durably; returns its size. Prunes beyond ``keep``."""
        private_directory(self.directory)
        blob = _MAGIC + msgpack.packb([index, hashlib.sha256(body).hexdigest(), body], use_bin_type=True)
        target = self.path(index)
        temporary = target.with_suffix(".tmp")
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        for old in self.indexes()[self.keep :]:
            self.path(old).unlink(missing_ok=True)
        return len(blob)

    def read(self, index: int) -> bytes:
        """The body of one snapshot; raises ValueError saying what is wrong with it."""
        blob = self.path(index).read_bytes()
        if not blob.startswith(_MAGIC):
            raise ValueError("not a statevisor snapshot (bad magic)")
        try:
            stored_index, digest, body = msgpack.unpackb(blob[len(_MAGIC) :], raw=False)
        except Exception as exc:
            raise ValueError(f"undecodable ({type(exc).__name__}: {exc})") from None
        if stored_index != index:
            raise ValueError(f"holds index {stored_index}, its name says {index}")
        if hashlib.sha256(body).hexdigest() != digest:
            raise ValueError("checksum mismatch (torn or corrupted)")
        return bytes(body)

    def previous(self, index: int) -> int:
        """The index of the newest snapshot older than ``index`` (0: none)."""
        return next((i for i in self.indexes() if i < index), 0)

    def __repr__(self) -> str:
        return f"<SnapshotStore {self.directory} {len(self.indexes())} snapshots>"
