"""The checkpoint store's reads and retention deletes: recovery, quarantine, inspection.

Apart from the group commit (``_sqlite.py``) because they share nothing with it but the
connection; each runs on the store's writer thread (``SQLiteStore._run``), one at a time with
the writes.
"""

from __future__ import annotations

import contextlib
import time

from .._core.codec import decode_record
from .._core.snapshot import ProcessRecord
from .._errors import CorruptCheckpoint
from .protocol import Expired, Quarantined, Recovery
from .schema import EXPIRED, delete_ended
from .sqlite_file import StoreFiles


def load(files: StoreFiles) -> Recovery:
    """Every live (non-terminal) record; undecodable ones are moved to the quarantine."""
    db = files.db()
    records, quarantined = [], []
    with files.errors():
        rows = db.execute("SELECT pid, record FROM processes WHERE ended IS NULL").fetchall()
    for pid, blob in rows:
        try:
            records.append(decode_record(blob, path=files.path, pid=pid))
        except CorruptCheckpoint as exc:
            quarantined.append(quarantine(files, pid, exc.reason, blob))
    return Recovery(records, quarantined)


def quarantine(files: StoreFiles, pid: str, reason: str, blob: bytes | None) -> Quarantined:
    """Move a process out of the live set, in one transaction; its checkpoint stays for inspection."""
    entry = Quarantined(pid, reason, time.time(), blob)
    db = files.db()
    with files.errors():
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?)", (pid, reason, entry.at, blob))
        db.execute("DELETE FROM processes WHERE pid = ?", (pid,))
        db.execute("COMMIT")
    return entry


def record(files: StoreFiles, pid: str) -> ProcessRecord | None:
    with files.errors():
        row = files.db().execute("SELECT record FROM processes WHERE pid = ?", (pid,)).fetchone()
    return None if row is None else decode_record(row[0], path=files.path, pid=pid)


def quarantined(files: StoreFiles) -> list[Quarantined]:
    with files.errors():
        rows = files.db().execute("SELECT pid, reason, at, record FROM quarantine ORDER BY at").fetchall()
    return [Quarantined(*row) for row in rows]


def expired(files: StoreFiles, ended_before: float, limit: int) -> Expired:
    """Up to ``limit`` terminal records that ended before ``ended_before``, oldest first."""
    with files.errors():
        rows = files.db().execute(EXPIRED, (ended_before, limit)).fetchall()
    records: list[ProcessRecord] = []
    for pid, blob in rows:
        with contextlib.suppress(CorruptCheckpoint):
            records.append(decode_record(blob, path=files.path, pid=pid))
    return Expired([pid for pid, _ in rows], records)


def delete_ended_records(files: StoreFiles, pids: list[str]) -> int:
    """Delete the records of ``pids`` that are terminal (a live process's never); how many."""
    deleted = 0
    with files.errors():
        for start in range(0, len(pids), 500):
            chunk = pids[start : start + 500]
            deleted += files.db().execute(delete_ended(len(chunk)), chunk).rowcount
    return deleted
