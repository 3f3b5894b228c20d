"""The checkpoint store's file: owning it, opening it, and what its errors mean.

Kept apart from the group commit (``_sqlite.py``) because none of it is on the write path: it
runs once at open, and the error translation is shared by every statement the store runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator

from ._exceptions import StoreError, StoreFull, StoreLocked
from ._sqlite_sql import SCHEMA, SCHEMA_VERSION, WAL_SIZE_LIMIT


def take_ownership(path: str) -> int:
    """Lock ``<path>.lock`` for this process and write its pid there; the descriptor to close
    to let go. Raises :class:`StoreLocked` naming the holder when another process owns it."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(path, f"directory {directory} does not exist")
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(path, f"in use by another statevisor (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def connect(path: str, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the store (WAL, the given durability), creating its schema or checking its version."""
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        with sqlite_errors(path, busy_timeout):
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={synchronous}")
            connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            connection.executescript(SCHEMA)
            found = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if found is None:
                connection.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif found[0] != SCHEMA_VERSION:
                raise StoreError(path, f"schema version {found[0]}, this statevisor reads {SCHEMA_VERSION}")
    except BaseException:
        connection.close()
        raise
    return connection


@contextlib.contextmanager
def sqlite_errors(path: str, busy_timeout: float) -> Iterator[None]:
    """Translate sqlite3's errors into ours, by meaning."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreLocked(path, f"locked by another writer for over {busy_timeout} s") from exc
        if "full" in text:
            raise StoreFull(path, f"disk or database full ({text})") from exc
        raise StoreError(path, text) from exc
    except sqlite3.DatabaseError as exc:
        raise StoreError(path, f"{type(exc).__name__}: {exc}") from exc
