"""The log-apply kind: deterministic ``apply(state, entry)`` over a committed, ordered log.

statevisor owns the log (embedded SQLite, or NATS JetStream replicated with Raft), the order,
the applied index, the snapshots and recovery; the user owns a deterministic :class:`Applier`.
"""

from supervisor import AckLost

from ._apply import APPLIERS, Applier, KeyValue, decode_entry, encode_entry, register, state_hash
from ._executor import ACTION_TYPES, LogApplyExecutor, executors
from ._jetstream import JetStreamLog
from ._log import Entry, Log
from ._machine import LogApply, LogApplyClient
from ._replica import OnError, Replica, ReplicaPhase
from ._sim import SimulatedLog, SimulatedLogApply
from ._snapshots import SnapshotStore
from ._sqlite_log import SQLiteLog

__all__ = [
    "ACTION_TYPES",
    "JetStreamLog",
    "LogApply",
    "LogApplyClient",
    "LogApplyExecutor",
    "executors",
    "APPLIERS",
    "Applier",
    "Entry",
    "KeyValue",
    "Log",
    "OnError",
    "Replica",
    "ReplicaPhase",
    "SQLiteLog",
    "SimulatedLog",
    "SimulatedLogApply",
    "AckLost",
    "SnapshotStore",
    "decode_entry",
    "encode_entry",
    "register",
    "state_hash",
]
