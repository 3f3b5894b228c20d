"""What a checkpoint store says went wrong, beyond the core's own :class:`StoreError` (any
store's failure: a process pauses on it and retries) and :class:`CorruptCheckpoint` (a record
that will not decode)::

    StoreError
    ├── StoreLocked                  another statevisor (or writer) holds the store
    ├── StoreFull                    the disk or the database is full
    └── CheckpointRejected           a record would not load back, so it was not written
"""

from __future__ import annotations

from .._errors import StoreError


class StoreLocked(StoreError):
    """Another process holds the store (a second daemon, or a writer keeping a lock too long)."""


class StoreFull(StoreError):
    """The disk or the database is full; the state in memory is kept and the write retried."""


class CheckpointRejected(StoreError):
    """A record failed the round-trip check and was not written."""
