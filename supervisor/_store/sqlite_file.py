"""The checkpoint store's files: owning them, opening them, keeping them at their names, and
what their errors mean.

Kept apart from the group commit (``_sqlite.py``) because none of it is on the write path: it
runs at open and in the store's periodic check of its files (every 10 s, see ``_store_watch``),
and the error translation is shared by every statement the store runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

from .._errors import StoreError, StoreFull, StoreLocked
from .._files.identity import FileFate, FileIdentity, fate, identity_at
from .._files.private import FILE_MODE, private_file, tighten
from .schema import SCHEMA, SCHEMA_VERSION, WAL_SIZE_LIMIT
from .sqlite_watch import copy_out, publish


def take_ownership(path: str) -> int:
    """Lock ``<path>.lock`` for this process and write its pid there; the descriptor to close
    to let go. Raises :class:`StoreLocked` naming the holder when another process owns it."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StoreError(path, f"directory {directory} does not exist")
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(path, f"in use by another statevisor (pid {holder})") from None
    os.fchmod(fd, FILE_MODE)  # whatever the umask made of it, or an older file's mode
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def connect(path: str, *, synchronous: str, busy_timeout: float) -> sqlite3.Connection:
    """Open the store (WAL, the given durability), creating its schema or checking its version."""
    connection = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        with sqlite_errors(path, busy_timeout):
            # Before any table exists (it applies to new files only): free pages can then be
            # given back to the file system, so a burst of processes pruned later does not
            # leave the file at its high-water mark for good (see StoreFiles.reclaim).
            connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
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


RECLAIM_PAGES = 4096
"""Free pages given back per housekeeping round (16 MiB at 4 KiB pages): a large freelist goes
back over several rounds, without holding the writer for long in any one."""

Finding = tuple[str, str, dict[str, Any]]
"""Something the file check found, to be logged on the event loop: level, event, fields."""


class StoreFiles:
    """The store's database and lock file, held open, and kept at their names.

    :meth:`check` runs on the writer thread (as every use of the connection does), so a
    write-back never interleaves with a group commit. See ``_store_watch`` for why it exists.
    """

    def __init__(self, path: str, *, synchronous: str, busy_timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.connection: sqlite3.Connection | None = None
        self.serving = path  # where the connection's file is: ``path``, unless a write-back found it taken
        self.problem = ""  # what is wrong with the files now, for the status and the metrics
        self._file: FileIdentity | None = None
        self._lock_fd: int | None = None
        self._lock_file: FileIdentity | None = None
        self.size_bytes = 0  # the database's pages, free ones included, at the last reclaim
        self.free_bytes = 0  # of them, free
        self._reopening: str | None = None  # a written-back copy that did not open yet
        self._said: set[str] = set()  # problems already logged, once each while they last

    def own(self) -> list[Finding]:
        """Lock the store for this process and make its files owner-only: the database is
        created 0600 before SQLite creates it (its ``-wal`` and ``-shm`` take its mode), and
        files others could read are tightened. What was found, for the log."""
        self._lock_fd = take_ownership(self.path)
        self._lock_file = FileIdentity.of(os.fstat(self._lock_fd))
        findings: list[Finding] = []
        tightened = tighten([self.path + suffix for suffix in ("", "-wal", "-shm")])
        private_file(self.path)
        if tightened:
            note = "the store's files could be read by other users; they are now its owner's alone (0600)"
            findings.append(("warning", "store_permissions_tightened", {"files": tightened, "note": note}))
        directory = os.path.dirname(os.path.abspath(self.path))
        if os.stat(directory).st_mode & 0o077:
            note = "others may list the store's directory (its files are owner-only); it is left as it is"
            findings.append(("warning", "store_directory_open", {"directory": directory, "note": note}))
        return findings

    def open(self, where: str | None = None) -> None:
        where = where or self.path
        self.connection = connect(where, synchronous=self.synchronous, busy_timeout=self.busy_timeout)
        self.serving = where
        self._file = identity_at(where)

    def check(self) -> list[Finding]:
        """Compare the two names with the files held open and mend what can be mended; what was
        mended, and the problems that are new since the last check (each is said once while
        it lasts, and ``problem`` names the ones there now)."""
        mended: list[Finding] = []
        problems: dict[str, Finding] = {}
        if self._reopening is not None:  # written back, but the copy did not open: again
            _sort(self._reopen(self._reopening, "store_file_reopened", {"at": self._reopening}), mended, problems)
        if self.connection is not None and self._file is not None:
            verdict = fate(self.serving, self._file)
            if verdict is FileFate.DELETED:
                _sort(self._write_back(self.connection), mended, problems)
            elif verdict is FileFate.REPLACED:
                note = (
                    "another file is at the store's name: this daemon writes to the one it opened, which the next "
                    "start will not find; stop it and put the right file back"
                )
                problems["store_file_replaced"] = ("error", "store_file_replaced", {"at": self.serving, "note": note})
        if (
            self._lock_fd is not None
            and self._lock_file is not None
            and fate(self.path + ".lock", self._lock_file) is not FileFate.INTACT
        ):
            _sort(self._relock(self._lock_fd), mended, problems)
        self.problem = ", ".join(problems)
        new = [finding for event, finding in problems.items() if event not in self._said]
        self._said = set(problems)
        return mended + new

    def _write_back(self, connection: sqlite3.Connection) -> Finding:
        try:
            partial = copy_out(connection, self.path)
        except (OSError, sqlite3.Error) as exc:
            # Nothing changed: the connection goes on writing to the deleted file; the next
            # check tries again.
            note = "checkpoints go to a deleted file, lost at exit; the write-back is tried again"
            return ("error", "store_file_not_restored", {"error": str(exc), "note": note})
        self.connection = None  # while it moves: a failure below leaves the store closed, not half-open
        connection.close()
        where = publish(partial, self.path)
        note = "the store's file was deleted; written back from the one held open"
        if where != self.path:
            note += f", to {where}: another file took its name meanwhile"
        return self._reopen(where, "store_file_restored", {"at": where, "note": note})

    def _reopen(self, where: str, event: str, fields: dict[str, Any]) -> Finding:
        try:
            self.open(where)
        except (OSError, StoreError) as exc:
            self._reopening = where
            note = "written back, but it does not open: checkpoints fail (processes pause) until it does"
            return ("error", "store_file_not_reopened", {"at": where, "error": str(exc), "note": note})
        self._reopening = None
        return ("warning", event, fields)

    def _relock(self, old: int) -> Finding:
        try:
            fd = take_ownership(self.path)
        except StoreError as exc:
            note = "its lock file was removed and another statevisor took the store: two daemons run its processes"
            return ("error", "store_lock_lost", {"error": str(exc), "note": note})
        os.close(old)
        self._lock_fd, self._lock_file = fd, FileIdentity.of(os.fstat(fd))
        return (
            "warning",
            "store_lock_restored",
            {"note": "its lock file was removed or replaced; made and locked again"},
        )

    def db(self) -> sqlite3.Connection:
        """The open connection (on the writer thread: a write-back may replace it)."""
        if self.connection is None:
            raise StoreError(self.path, "the store is closed")
        return self.connection

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return sqlite_errors(self.path, self.busy_timeout)

    def reclaim(self, pages: int = RECLAIM_PAGES) -> None:
        """Give up to ``pages`` free pages back to the file system (a store made with
        incremental auto-vacuum; older ones keep theirs for reuse), and note the database's size
        and free space. Housekeeping: a store busy right now is left for the next time."""
        connection = self.connection
        if connection is None:
            return
        with contextlib.suppress(StoreError), sqlite_errors(self.path, self.busy_timeout):
            free = connection.execute("PRAGMA freelist_count").fetchone()[0]
            if free and connection.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL
                # Each step of this pragma frees one page and returns no row, so execute() (one
                # step) would free one page a round; executescript steps it to the end.
                connection.executescript(f"PRAGMA incremental_vacuum({int(pages)});")
            page_size = connection.execute("PRAGMA page_size").fetchone()[0]
            self.size_bytes = connection.execute("PRAGMA page_count").fetchone()[0] * page_size
            self.free_bytes = connection.execute("PRAGMA freelist_count").fetchone()[0] * page_size

    def close_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None


def _sort(finding: Finding, mended: list[Finding], problems: dict[str, Finding]) -> None:
    if finding[0] == "error":
        problems[finding[1]] = finding
    else:
        mended.append(finding)
