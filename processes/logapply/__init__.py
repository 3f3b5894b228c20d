"""The log-apply kind: deterministic ``apply(state, entry)`` over a committed, ordered log.

statevisor owns the entry log (embedded SQLite, or NATS JetStream replicated with Raft), the
order, the applied index, the snapshots and recovery; the user owns a deterministic
:class:`Applier`. ("Entry log" is this kind's word for its replicated log, apart from the
daemon's own log and a process's output logs.)
"""

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Executor
from supervisor.lowlevel import KindSetup

from ._apply import APPLIERS, Applier, KeyValue, decode_entry, encode_entry, register, state_hash
from ._entry_log import Entry, EntryLog
from ._executor import ACTION_TYPES, LogApplyExecutor, executors
from ._jetstream import JetStreamEntryLog
from ._machine import LogApply, LogApplyClient
from ._replica import OnError, Replica, ReplicaPhase
from ._sim import SimulatedLog, SimulatedLogApply
from ._snapshots import SnapshotStore
from ._sqlite_log import SQLiteEntryLog
from .errors import AckLost, ApplyFailed, EntryLogError, EntryRejected, LogGap, SnapshotError, StaleWriter

__all__ = [
    "KIND",
    "LogApplyKind",
    # errors
    "AckLost",
    "ApplyFailed",
    "EntryLogError",
    "EntryRejected",
    "LogGap",
    "SnapshotError",
    "StaleWriter",
    "ACTION_TYPES",
    "JetStreamEntryLog",
    "LogApply",
    "LogApplyClient",
    "LogApplyExecutor",
    "executors",
    "APPLIERS",
    "Applier",
    "Entry",
    "KeyValue",
    "EntryLog",
    "OnError",
    "Replica",
    "ReplicaPhase",
    "SQLiteEntryLog",
    "SimulatedLog",
    "SimulatedLogApply",
    "SnapshotStore",
    "decode_entry",
    "encode_entry",
    "register",
    "state_hash",
]


class LogApplyKind:
    """The log-apply kind as a daemon builds it: embedded entry logs and snapshots under
    ``<run_dir>/logapply`` unless a process's settings name its own ``path``."""

    machine = LogApply
    tables: tuple[str, ...] = ()
    action_types = ACTION_TYPES

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        return None

    def build(self, setup: KindSetup) -> tuple[LogApply, Mapping[str, Executor]]:
        return LogApply(), executors(setup.run_dir / "logapply")


KIND = LogApplyKind()
"""The entry point of group ``statevisor.kinds`` named ``logapply``."""

_RENAMED = {
    "Log": "EntryLog",
    "SQLiteLog": "SQLiteEntryLog",
    "JetStreamLog": "JetStreamEntryLog",
    "LogError": "EntryLogError",
}


def __getattr__(name: str) -> Any:
    """The old names of the entry log's classes, with a DeprecationWarning."""
    new = _RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module 'processes.logapply' has no attribute {name!r}")
    warnings.warn(f"processes.logapply.{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
    return globals()[new]
