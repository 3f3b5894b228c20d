"""Files that hold state or secrets are their owner's alone: 0600 files, 0700 directories,
whatever the umask says.

A umask of 022 (the usual one) makes files 0644: another local user could read a checkpoint,
and a shell process's environment with it. SQLite creates a database's ``-wal`` and ``-shm``
with the database file's own permissions, so a database created owner-only keeps its companions
owner-only too. Files found open to others are tightened, and the caller is told which, so it
can say so in its log; a directory that exists already is never changed (it may be shared, as
``/tmp`` or ``/var/lib`` are), only reported.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def private_directory(path: str | os.PathLike[str]) -> bool:
    """Make ``path`` (and missing parents) owner-only when this call creates it; True when
    an existing one can be read by others (for the caller to report; it is left as it is)."""
    directory = Path(path)
    if directory.is_dir():
        return bool(directory.stat().st_mode & 0o077)
    missing = []
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        missing.append(parent)
    directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIRECTORY_MODE)  # mkdir's mode is cut by the umask
    return False


def private_file(path: str | os.PathLike[str], *, create: bool = True) -> bool:
    """Create ``path`` empty and owner-only if it is missing (``create``), or tighten it to
    0600 if others may read or write it; True when an existing file was tightened."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0), FILE_MODE)
    except FileNotFoundError:
        return False
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode) or stat.S_IMODE(mode) == FILE_MODE:
            return False
        os.fchmod(descriptor, FILE_MODE)
        # A file just created had FILE_MODE cut by the umask: it was never open to others.
        return bool(mode & 0o077)
    finally:
        os.close(descriptor)


def tighten(paths: list[str]) -> list[str]:
    """Tighten each existing file of ``paths`` to 0600; those that were open to others."""
    return [path for path in paths if private_file(path, create=False)]
