"""Read-only views of a checkpoint store for operators (works while a daemon owns the store)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .._core.codec import decode_record
from .._core.secrets import redact
from .._errors import CorruptCheckpoint, ProcessNotFound, StoreError


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
    record, problem, _ = _decoded(blob, path, pid)
    return record, problem


def _decoded(blob: bytes, path: str, pid: str) -> tuple[dict[str, Any] | None, str | None, str]:
    """The record as plain fields, or why it cannot be decoded; and its kind."""
    try:
        record = decode_record(blob, path=path, pid=pid)
    except CorruptCheckpoint as exc:
        return None, exc.reason, ""
    return (
        {
            "phase": record.phase,
            "state": record.state,
            "pending": [{"id": a.id, "type": a.type, "payload": a.payload} for a in record.pending],
            "timers": [{"name": t.name, "deadline": t.deadline, "payload": t.payload} for t in record.timers],
            "result": record.result,
            "error": record.error,
            "paused": record.paused,
            "meta": record.meta,
        },
        None,
        record.kind,
    )


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


def inspect(path: str, process: str, secrets: Mapping[str, frozenset[str]] | None = None) -> StoredProcess:
    """One process's full checkpoint, by id or name (a live process before ended ones of the
    same name, then the latest): state, pending actions, timers (live, ended or quarantined).

    ``secrets`` maps each kind installed here to its ``Machine.secret_keys``: their values are
    masked. The record of a kind not in it is withheld, its secrets being unknown; None shows
    every record as stored.
    """
    db = open_read_only(path)
    try:
        row = db.execute(
            "SELECT pid, name, kind, lifecycle, version, updated, record FROM processes WHERE pid = ? OR name = ? "
            "ORDER BY pid = ? DESC, ended IS NULL DESC, updated DESC LIMIT 1",
            (process, process, process),
        ).fetchone()
        held = db.execute("SELECT pid, reason, at, record FROM quarantine WHERE pid = ?", (process,)).fetchone()
    except sqlite3.Error as exc:
        raise StoreError(path, str(exc)) from exc
    finally:
        db.close()
    if row is not None:
        pid, name, kind, lifecycle, version, updated, blob = row
        record, problem = _describe(blob, path, pid)
        found = StoredProcess(pid, name, kind, lifecycle, version, updated, False, problem, record, len(blob))
    elif held is not None:
        pid, reason, at, blob = held
        record, _, kind = _decoded(blob, path, pid) if blob is not None else (None, None, "")
        found = StoredProcess(pid, "", kind, "quarantined", -1, at, True, reason, record, len(blob or b""))
    else:
        raise ProcessNotFound(f"no process {process!r} (id or name) in store {path}")
    return found if secrets is None else _masked(found, secrets)


def _masked(found: StoredProcess, secrets: Mapping[str, frozenset[str]]) -> StoredProcess:
    if found.record is None:
        return found
    keys = secrets.get(found.kind)
    if keys is None:
        why = f"kind {found.kind!r} is not installed here, so which of its values are secret is unknown"
        return replace(found, record=None, reason=f"record withheld: {why} (--raw shows it)")
    return replace(found, record=redact(found.record, keys))
