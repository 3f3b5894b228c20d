"""statevisor: processes as crash-safe state machines on asyncio, and their supervision.

The public API is what this module exports; implementation lives in private modules.
"""

from ._actions import Executor, ExecutorRegistry, FunctionExecutor, TrackedAction, UntrackedAction
from ._clock import Clock, ManualClock, SystemClock, TimerHandle
from ._codec import FORMAT_VERSION, decode_record, encode_record
from ._diagram import mermaid
from ._exceptions import (
    CallTimeout,
    CheckpointRejected,
    ConfigurationError,
    CorruptCheckpoint,
    DiagramError,
    IllegalLifecycleMove,
    IllegalPhaseChange,
    InvariantViolation,
    LifecycleError,
    NondeterminismError,
    NotFinished,
    ProcessFailed,
    ProcessFinished,
    ProcessKilled,
    ProcessNotFound,
    ProcessTerminated,
    SimulationError,
    StateMutationError,
    StateTypeError,
    StatevisorError,
    StoreError,
    StoreFull,
    StoreLocked,
    TransitionError,
    UnknownActionType,
    WouldBlock,
)
from ._handle import Handle
from ._host import Host, StartReport
from ._inputs import (
    STATE_TIMEOUT,
    ActionFailed,
    ActionResult,
    ActionSucceeded,
    Call,
    Cast,
    Control,
    ControlEvent,
    Input,
    TimerFired,
)
from ._lifecycle import DriveMode, ErrorPolicy, Lifecycle
from ._machine import Context, Machine
from ._policy import Backoff, Budget, Restart, Strategy
from ._runtime import Checkpointer, Runtime, RuntimeObserver, RuntimeStatistics
from ._sim import Invariant, Simulation
from ._simparts import SimCall, SimExecutor
from ._slots import SlotPool, SlotStatistics
from ._snapshot import ProcessRecord, ProcessStatistics, Snapshot, TimerRecord
from ._sqlite import Quarantined, Recovery, SQLiteStore, StoreStatistics
from ._supervisor import ChildSpec, Supervisor, SupervisorSpec, SupervisorState, SupervisorStatistics

__version__ = "0.1.0"

__all__ = [
    "ActionFailed",
    "ActionResult",
    "ActionSucceeded",
    "Backoff",
    "Budget",
    "Call",
    "CallTimeout",
    "Cast",
    "CheckpointRejected",
    "Checkpointer",
    "ChildSpec",
    "Clock",
    "ConfigurationError",
    "Context",
    "Control",
    "ControlEvent",
    "CorruptCheckpoint",
    "DiagramError",
    "DriveMode",
    "ErrorPolicy",
    "Executor",
    "ExecutorRegistry",
    "FORMAT_VERSION",
    "FunctionExecutor",
    "Handle",
    "Host",
    "IllegalLifecycleMove",
    "IllegalPhaseChange",
    "Input",
    "Invariant",
    "InvariantViolation",
    "Lifecycle",
    "LifecycleError",
    "Machine",
    "ManualClock",
    "NondeterminismError",
    "NotFinished",
    "ProcessFailed",
    "ProcessFinished",
    "ProcessKilled",
    "ProcessNotFound",
    "ProcessRecord",
    "ProcessStatistics",
    "ProcessTerminated",
    "Quarantined",
    "Recovery",
    "Restart",
    "Runtime",
    "RuntimeObserver",
    "RuntimeStatistics",
    "SQLiteStore",
    "STATE_TIMEOUT",
    "SimCall",
    "SimExecutor",
    "Simulation",
    "SimulationError",
    "SlotPool",
    "SlotStatistics",
    "Snapshot",
    "StartReport",
    "StateMutationError",
    "StateTypeError",
    "StatevisorError",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreStatistics",
    "Strategy",
    "Supervisor",
    "SupervisorSpec",
    "SupervisorState",
    "SupervisorStatistics",
    "SystemClock",
    "TimerFired",
    "TimerHandle",
    "TimerRecord",
    "TrackedAction",
    "TransitionError",
    "UnknownActionType",
    "UntrackedAction",
    "WouldBlock",
    "__version__",
    "decode_record",
    "encode_record",
    "mermaid",
]
