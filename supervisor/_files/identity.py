"""A file as opposed to its name: what a name points at now, against the file held open.

Daemons hold files open for months (the store, its lock, the control socket) while names can
be deleted or replaced under them by anyone; these tell which happened.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A file, as opposed to a name: the device and inode behind a path or descriptor."""

    device: int
    inode: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileIdentity:
        return cls(stat.st_dev, stat.st_ino)


class FileFate(enum.Enum):
    INTACT = "intact"  # the name still points at the file held open
    DELETED = "deleted"  # nothing at the name
    REPLACED = "replaced"  # another file at the name


def identity_at(path: str) -> FileIdentity | None:
    try:
        return FileIdentity.of(os.stat(path))
    except FileNotFoundError:
        return None


def fate(path: str, held: FileIdentity) -> FileFate:
    """What became of the file held open as ``held`` under the name ``path``."""
    found = identity_at(path)
    if found is None:
        return FileFate.DELETED
    return FileFate.INTACT if found == held else FileFate.REPLACED
