"""statevisor: processes as crash-safe state machines on asyncio, and their supervision.

The public API is what this module exports; implementation lives in private modules.
"""

from ._actions import Executor, ExecutorRegistry, FunctionExecutor, TrackedAction, UntrackedAction
from ._clock import Clock, ManualClock, SystemClock, TimerHandle
from ._diagram import mermaid
from ._exceptions import (
    CallTimeout,
    ConfigurationError,
    DiagramError,
    IllegalLifecycleMove,
    IllegalPhaseChange,
    LifecycleError,
    NondeterminismError,
    NotFinished,
    ProcessFailed,
    ProcessFinished,
    ProcessKilled,
    ProcessNotFound,
    ProcessTerminated,
    StateMutationError,
    StateTypeError,
    StatevisorError,
    TransitionError,
    UnknownActionType,
    WouldBlock,
)
from ._handle import Handle
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
from ._runtime import Checkpointer, Runtime, RuntimeObserver, RuntimeStatistics
from ._snapshot import ProcessRecord, ProcessStatistics, Snapshot, TimerRecord

__version__ = "0.1.0"

__all__ = [
    "STATE_TIMEOUT",
    "ActionFailed",
    "ActionResult",
    "ActionSucceeded",
    "Call",
    "CallTimeout",
    "Cast",
    "Checkpointer",
    "Clock",
    "ConfigurationError",
    "Context",
    "Control",
    "ControlEvent",
    "DiagramError",
    "DriveMode",
    "ErrorPolicy",
    "Executor",
    "ExecutorRegistry",
    "FunctionExecutor",
    "Handle",
    "IllegalLifecycleMove",
    "IllegalPhaseChange",
    "Input",
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
    "Runtime",
    "RuntimeObserver",
    "RuntimeStatistics",
    "Snapshot",
    "StateMutationError",
    "StateTypeError",
    "StatevisorError",
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
    "mermaid",
]
