"""Noticing that the store's files were deleted or replaced under the running daemon.

SQLite keeps writing to the file it opened, whatever happens to its name. A store file deleted
under a daemon (a cleanup job, ``rm -r var/``, tmpfiles on ``/tmp``) loses every checkpoint
at the next start, silently: the new daemon finds no file and starts empty, while the commands
and jobs of the old processes run on, unowned. A deleted lock file lets a second daemon take
the same store, and both run the same processes. Neither says anything when it happens.

So the store compares, every :data:`WATCH_INTERVAL` seconds, what its two names point at with
the files it holds open. The comparison is here, in plain code; the store acts on the verdicts:
a deleted database is written back from the open connection (:func:`copy_out`, :func:`publish`), a deleted or
replaced lock file is made and locked again, and a replaced database (someone else's now) is
left alone and reported.
"""

from __future__ import annotations

import os
import sqlite3

from .._files.private import private_directory, private_file

WATCH_INTERVAL = 10.0


def copy_out(connection: sqlite3.Connection, path: str) -> str:
    """Copy the database open on ``connection`` next to ``path``, whole and durable, under a
    temporary name (so ``path`` never holds half a copy); returns that name."""
    private_directory(os.path.dirname(os.path.abspath(path)))  # `rm -r` of its directory
    partial = f"{path}.restoring"
    if os.path.exists(partial):
        os.unlink(partial)  # left by a write-back that did not finish
    private_file(partial)  # owner-only before SQLite writes a page of it
    target = sqlite3.connect(partial)
    try:
        connection.backup(target)
    finally:
        target.close()
    _fsync(partial, 0)
    return partial


def publish(partial: str, path: str) -> str:
    """Give the copy at ``partial`` the name ``path``, unless something took that name meanwhile
    (that file is left alone, and the copy keeps its name); returns where the copy is."""
    try:
        os.link(partial, path)
    except FileExistsError:
        return partial
    os.unlink(partial)
    _fsync(os.path.dirname(os.path.abspath(path)), os.O_DIRECTORY)
    return path


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
