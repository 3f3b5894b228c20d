"""The checkpoint store's SQL: its schema, the multi-row upserts its group commit writes, and
retention's statements.

Kept apart from :mod:`.sqlite` (the store's ownership, writer thread and reads) because the
benchmark's raw-SQLite baseline must write with exactly these statements.
"""

from __future__ import annotations

from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS processes (
    pid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    lifecycle TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    ended REAL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS processes_ended ON processes (ended);
CREATE TABLE IF NOT EXISTS quarantine (
    pid TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    record BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA_VERSION = "1"

WAL_SIZE_LIMIT = 64 << 20
"""Bytes of write-ahead log left on disk after a checkpoint. SQLite keeps the log file at its
high-water mark by default, so one burst (a start that rewrites many checkpoints, processes with
large states) left a log the size of that burst for as long as the daemon ran; it is cut back
to this once the burst is checkpointed."""

EXPIRED = "SELECT pid, record FROM processes WHERE ended IS NOT NULL AND ended < ? ORDER BY ended LIMIT ?"


def delete_ended(count: int) -> str:
    """Deletes the terminal ones of ``count`` pids (a live process's record is never deleted)."""
    return f"DELETE FROM processes WHERE ended IS NOT NULL AND pid IN ({','.join('?' * count)})"


_UPSERT_HEAD = "INSERT INTO processes (pid, name, kind, lifecycle, version, updated, ended, record) VALUES "
_UPSERT_TAIL = """
ON CONFLICT (pid) DO UPDATE SET
    name = excluded.name, kind = excluded.kind, lifecycle = excluded.lifecycle,
    version = excluded.version, updated = excluded.updated, ended = excluded.ended,
    record = excluded.record
WHERE excluded.version >= processes.version
"""
UPSERT = _UPSERT_HEAD + "(?, ?, ?, ?, ?, ?, ?, ?)" + _UPSERT_TAIL

# Rows per multi-row statement. executemany() runs one sqlite3_step per row and gives the GIL
# back and takes it again around each; with the event loop busy on the other thread, every
# re-take can wait for the interpreter's switch interval. One statement per chunk avoids that.
_CHUNKS = (512, 64, 8, 1)
_UPSERTS = {n: _UPSERT_HEAD + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n) + _UPSERT_TAIL for n in _CHUNKS}


def chunk_parameters(rows: list[tuple[Any, ...]]) -> list[tuple[str, list[Any]]]:
    """(statement, flat parameters) pairs covering ``rows`` in as few statements as possible.

    Built on the event loop's thread, so the writer thread only runs C code (binding and
    stepping) and never queues for the GIL behind the loop in Python code.
    """
    out, index = [], 0
    for size in _CHUNKS:
        while len(rows) - index >= size:
            out.append((_UPSERTS[size], [value for row in rows[index : index + size] for value in row]))
            index += size
    return out
