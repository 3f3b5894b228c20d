"""Read-only views of a checkpoint store for operators (works while a daemon owns the store)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ._codec import decode_record
from ._exceptions import CorruptCheckpoint, ProcessNotFound, StoreError


@dataclass(frozen=True, slots=True)
class StoredProcess:
    pid: str
    name: str
    kind: str
    lifecycle: str
    version: int
    updated: float
    quarantined: bool
    reason: str | None
    record: dict[str, Any] | None
    raw_size: int


def open_read_only(path: str) -> sqlite3.Connection:
    """A connection that only reads the store (safe beside the daemon that owns it)."""
    try:
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(path, f"cannot open read-only: {exc}") from exc


def _describe(blob: bytes, path: str, pid: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        record = decode_record(blob, path=path, pid=pid)
    except CorruptCheckpoint as exc:
        return None, exc.reason
    return {
        "phase": record.phase,
        "state": record.state,
        "pending": [{"id": a.id, "type": a.type, "payload": a.payload} for a in record.pending],
        "timers": [{"name": t.name, "deadline": t.deadline, "payload": t.payload} for t in record.timers],
        "result": record.result,
        "error": record.error,
        "paused": record.paused,
        "meta": record.meta,
    }, None


def list_quarantined(path: str) -> list[StoredProcess]:
    """Every quarantined process with the reason it was quarantined."""
    db = open_read_only(path)
    try:
        rows = db.execute("SELECT pid, reason, at, record FROM quarantine ORDER BY at").fetchall()
    except sqlite3.Error as exc:
        raise StoreError(path, str(exc)) from exc
    finally:
        db.close()
    found = []
    for pid, reason, at, blob in rows:
        record, _ = _describe(blob, path, pid) if blob is not None else (None, None)
        found.append(StoredProcess(pid, "", "", "quarantined", -1, at, True, reason, record, len(blob or b"")))
    return found


def inspect(path: str, pid: str) -> StoredProcess:
    """One process's full checkpoint: state, pending actions, timers (live, ended or quarantined)."""
    db = open_read_only(path)
    try:
        row = db.execute(
            "SELECT name, kind, lifecycle, version, updated, record FROM processes WHERE pid = ?", (pid,)
        ).fetchone()
        held = db.execute("SELECT reason, at, record FROM quarantine WHERE pid = ?", (pid,)).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(path, str(exc)) from exc
    finally:
        db.close()
    if row is not None:
        name, kind, lifecycle, version, updated, blob = row
        record, problem = _describe(blob, path, pid)
        return StoredProcess(pid, name, kind, lifecycle, version, updated, False, problem, record, len(blob))
    if held is not None:
        reason, at, blob = held
        record, _ = _describe(blob, path, pid) if blob is not None else (None, None)
        return StoredProcess(pid, "", "", "quarantined", -1, at, True, reason, record, len(blob or b""))
    raise ProcessNotFound(f"no process {pid!r} in store {path}")
