"""statevisor: processes as crash-safe state machines on asyncio, and their supervision.

This namespace is what users write process types with and drive them by: the machine model,
the runtime and its handles, the node with its store and supervisors, simulation testing,
and the errors all of these raise. Process kinds build on it and on :mod:`supervisor.lowlevel`;
the daemon, its control API and its command line are :mod:`supervisor.daemon`,
:mod:`supervisor.control` and :mod:`supervisor.cli`. Implementation lives in private modules,
one folder a layer (see the manual's architecture page).
"""

import importlib
import warnings
from typing import Any

from ._core.actions import Executor, ExecutorRegistry, FunctionExecutor, TrackedAction, UntrackedAction
from ._core.atomic import AtomicValue
from ._core.checkpointer import Checkpointer
from ._core.clock import Clock, ManualClock, SystemClock, TimerHandle
from ._core.codec import FORMAT_VERSION, decode_record, encode_record
from ._core.diagram import mermaid
from ._core.handle import Handle, HandleAPI
from ._core.inputs import (
    EVENT_TIMEOUT,
    STATE_TIMEOUT,
    ActionFailed,
    ActionResult,
    ActionSucceeded,
    Call,
    Cast,
    Control,
    ControlEvent,
    Input,
    Internal,
    TimerFired,
)
from ._core.lifecycle import DriveMode, ErrorPolicy, Lifecycle
from ._core.machine import Context, Machine
from ._core.runtime import Runtime, RuntimeObserver, RuntimeStatistics
from ._core.slots import SlotPool, SlotStatistics
from ._core.snapshot import ProcessRecord, ProcessStatistics, Snapshot, TimerRecord
from ._errors import (
    BackendError,
    CallTimeout,
    ConfigurationError,
    CorruptCheckpoint,
    DiagramError,
    IllegalLifecycleMove,
    IllegalPhaseChange,
    LifecycleError,
    LogNotFound,
    NondeterminismError,
    NotFinished,
    ProcessFailed,
    ProcessFinished,
    ProcessKilled,
    ProcessNotFound,
    ProcessPaused,
    ProcessTerminated,
    SettingsError,
    StateMutationError,
    StateTypeError,
    StatevisorError,
    StoreError,
    TransitionError,
    TransportError,
    Unavailable,
    UnknownActionType,
    WouldBlock,
)
from ._simulation.errors import InvariantViolation, SimulationError
from ._simulation.simulation import Invariant, SimCall, SimExecutor, Simulation
from ._store.errors import CheckpointRejected, StoreFull, StoreLocked
from ._store.protocol import Quarantined, Recovery, Store, StoreStatistics
from ._store.sqlite import SQLiteStore
from ._supervision.node import Node, StartReport
from ._supervision.policy import Backoff, Budget, Restart, Strategy
from ._supervision.summary import KindCounts, NodeSummary, SlotCounts
from ._supervision.supervisor import ChildSpec, Supervisor, SupervisorSpec, SupervisorState, SupervisorStatistics
from ._version import __version__
from .control._errors import ConnectionDenied, DaemonNotAnswering, ProtocolError, RemoteError

__all__ = [
    # writing a process type: the machine, what it receives, what it describes
    "Machine",
    "Context",
    "Input",
    "Control",
    "ControlEvent",
    "Cast",
    "Call",
    "ActionResult",
    "ActionSucceeded",
    "ActionFailed",
    "TimerFired",
    "Internal",
    "STATE_TIMEOUT",
    "EVENT_TIMEOUT",
    "ErrorPolicy",
    "AtomicValue",
    "mermaid",
    # actions and the executors that perform them
    "TrackedAction",
    "UntrackedAction",
    "Executor",
    "FunctionExecutor",
    "ExecutorRegistry",
    # running processes and driving them through handles
    "Runtime",
    "RuntimeObserver",
    "RuntimeStatistics",
    "Handle",
    "HandleAPI",
    "Snapshot",
    "ProcessStatistics",
    "Lifecycle",
    "DriveMode",
    "Clock",
    "SystemClock",
    "ManualClock",
    "TimerHandle",
    "SlotPool",
    "SlotStatistics",
    # a node: the runtime, its checkpoint store and its supervision tree
    "Node",
    "StartReport",
    "NodeSummary",
    "KindCounts",
    "SlotCounts",
    "Supervisor",
    "SupervisorSpec",
    "ChildSpec",
    "SupervisorState",
    "SupervisorStatistics",
    "Restart",
    "Strategy",
    "Backoff",
    "Budget",
    # checkpoints and stores
    "Checkpointer",
    "Store",
    "SQLiteStore",
    "StoreStatistics",
    "Recovery",
    "Quarantined",
    "ProcessRecord",
    "TimerRecord",
    "encode_record",
    "decode_record",
    "FORMAT_VERSION",
    # simulation testing
    "Simulation",
    "SimExecutor",
    "SimCall",
    "Invariant",
    # errors (each layer's and each kind's own derive from these)
    "StatevisorError",
    "WouldBlock",
    "ConfigurationError",
    "StateTypeError",
    "UnknownActionType",
    "DiagramError",
    "SettingsError",
    "LifecycleError",
    "IllegalLifecycleMove",
    "ProcessPaused",
    "ProcessTerminated",
    "ProcessFinished",
    "ProcessFailed",
    "ProcessKilled",
    "ProcessNotFound",
    "LogNotFound",
    "NotFinished",
    "TransitionError",
    "IllegalPhaseChange",
    "StateMutationError",
    "NondeterminismError",
    "CallTimeout",
    "Unavailable",
    "StoreError",
    "StoreLocked",
    "StoreFull",
    "CheckpointRejected",
    "CorruptCheckpoint",
    "BackendError",
    "TransportError",
    "SimulationError",
    "InvariantViolation",
    "ProtocolError",
    "ConnectionDenied",
    "RemoteError",
    "DaemonNotAnswering",
    "__version__",
]

_MOVED = {
    # old name: (module, name, why it moved)
    "Host": ("supervisor", "Node", "the runtime bundle is a node (a host is a batch job's SSH host)"),
    "HostSummary": ("supervisor", "NodeSummary", "the runtime bundle is a node"),
    "ConfigError": ("supervisor.daemon", "ConfigFileError", "the daemon's configuration file owns its error"),
    "pack": ("supervisor.lowlevel", "pack", "encoding checkpoints is the extension API's"),
    "unpack": ("supervisor.lowlevel", "unpack", "encoding checkpoints is the extension API's"),
    "rotate_log": ("supervisor.lowlevel", "rotate_log", "a tool for process kinds"),
    "tail_lines": ("supervisor.lowlevel", "tail_lines", "a tool for process kinds"),
    "follow_lines": ("supervisor.lowlevel", "follow_lines", "a tool for process kinds"),
    "OpenFilesLimit": ("supervisor.lowlevel", "OpenFilesLimit", "a tool for process kinds"),
    "open_files_for_children": ("supervisor.lowlevel", "open_files_for_children", "a tool for process kinds"),
    "raise_open_files_limit": ("supervisor.lowlevel", "raise_open_files_limit", "a tool for process kinds"),
    "LoopWatchdog": ("supervisor.daemon", "LoopWatchdog", "the daemon's"),
    "CommandNotFound": ("processes.shell", "CommandNotFound", "each kind owns its errors"),
    "CommandLost": ("processes.shell", "CommandLost", "each kind owns its errors"),
    "RunMonitorError": ("processes.shell", "RunMonitorError", "each kind owns its errors"),
    "SecretUnreadable": ("processes.shell", "SecretUnreadable", "each kind owns its errors"),
    "HostUnreachable": ("processes.batch", "HostUnreachable", "each kind owns its errors"),
    "HostKeyMismatch": ("processes.batch", "HostKeyMismatch", "each kind owns its errors"),
    "SchedulerError": ("processes.batch", "SchedulerError", "each kind owns its errors"),
    "EntryRejected": ("processes.logapply", "EntryRejected", "each kind owns its errors"),
    "ApplyFailed": ("processes.logapply", "ApplyFailed", "each kind owns its errors"),
    "LogError": ("processes.logapply", "EntryLogError", "each kind owns its errors"),
    "LogGap": ("processes.logapply", "LogGap", "each kind owns its errors"),
    "StaleWriter": ("processes.logapply", "StaleWriter", "each kind owns its errors"),
    "AckLost": ("processes.logapply", "AckLost", "each kind owns its errors"),
    "SnapshotError": ("processes.logapply", "SnapshotError", "each kind owns its errors"),
}


def __getattr__(name: str) -> Any:
    """The old names, kept working with a DeprecationWarning that says where each went."""
    moved = _MOVED.get(name)
    if moved is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    module, new, why = moved
    warnings.warn(f"supervisor.{name} is deprecated: use {module}.{new} ({why})", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module(module), new)
