"""The log-apply kind's errors, on the core's bases::

ConfigurationError
└── EntryRejected            an entry that is neither bytes nor a msgpack value, or too large
StatevisorError
└── ApplyFailed              a proposed entry was committed, but apply raised on it; ``index`` names it
BackendError
└── EntryLogError            the entry log failed or cannot be trusted; ``log`` names it
    ├── LogGap               entries the machine needs were compacted away with no snapshot covering them
    ├── StaleWriter          an append was fenced off: another writer appended under this writer's id
    ├── AckLost              an append landed but its acknowledgement was lost; retry with the same id
    └── SnapshotError        no snapshot could be loaded and the log does not start at index 1
"""

from __future__ import annotations

from supervisor import BackendError, ConfigurationError, StatevisorError


class EntryRejected(ConfigurationError, ValueError):
    """A log entry that cannot go on a log: neither bytes nor a msgpack value, or larger than the
    log takes. ``where`` says which."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class ApplyFailed(StatevisorError):
    """A proposed entry is in the log at ``index``, but the machine's apply raised on it.

    The state is unchanged by that entry, on every replica alike; the entry stays in the log.
    """

    def __init__(self, index: int, error: str) -> None:
        super().__init__(f"entry {index} was committed but apply raised {error}")
        self.index = index
        self.error = error


class EntryLogError(BackendError):
    """A log-apply machine's entry log failed or cannot be trusted; ``log`` names it."""

    def __init__(self, log: str, message: str) -> None:
        super().__init__(f"log {log}: {message}")
        self.log = log


class LogGap(EntryLogError):
    """Entries the machine needs are gone from the log and no snapshot covers them.

    Applying on from the next available entry would silently diverge from every other replica,
    so the machine stops instead.
    """


class StaleWriter(EntryLogError):
    """An append was fenced off: the log holds a newer append under this writer's id."""


class AckLost(EntryLogError):
    """An append landed but its acknowledgement was lost (the simulated log injects this):
    retry with the same message id, and deduplication keeps the entry single."""


class SnapshotError(EntryLogError):
    """No snapshot could be loaded, and the log no longer starts at index 1."""
