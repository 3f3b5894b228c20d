"""The protocol kind: phase-locked two-party protocols, written once, run as two roles.

A protocol is one async function over an abstract :class:`Party`, whose async methods are the
joint steps (declared with a :class:`Step`: what the host sends, what the client answers, how a
crash may resume it) and whose plain methods are the decisions both sides compute alike. A
:class:`Host` and a :class:`Client` role implement each step their own way; a
:class:`Specification` puts the function and the roles together, and the kind runs either role
as a statevisor process (``kind = "protocol"``) over an in-process channel, a unix or TCP
socket, or a pty. Each role records its run and, after a crash, replays the record through the
same function before it goes on live. The state diagram of each role is drawn from the
specification, the sequence diagram of a run from its record, and :class:`LinkSimulation` runs
both roles over a faulty simulated link with crashes and invariants.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import Executor
from supervisor.lowlevel import KindSetup

from ._diagram import check_run, flow, run_sequence, sequence_diagram, state_diagram
from ._driver import Outcome, RoleDriver, Timing
from ._executor import ACTION_TYPES, ProtocolExecutor, executors
from ._links import Faults
from ._machine import ProtocolRole, RolePhase
from ._record import read_records
from ._sim import LinkFaults, LinkSimulation, same_terminal_step
from ._spec import (
    ABORT,
    Abort,
    Client,
    Host,
    Message,
    Party,
    Resume,
    Role,
    Specification,
    Step,
    lookup,
    register,
    registered,
)
from ._transcript import events, summarize
from .errors import (
    LinkFailed,
    PeerAborted,
    ProtocolDesync,
    RecordError,
    ReplayDiverged,
    SpecificationError,
    StepFailed,
    StepInterrupted,
    StepRefused,
    StepTimeout,
    UnknownProtocol,
    VersionMismatch,
)

__all__ = [
    "KIND",
    "ProtocolKind",
    # writing a protocol
    "Message",
    "Step",
    "Resume",
    "Party",
    "Role",
    "Host",
    "Client",
    "Specification",
    "Abort",
    "ABORT",
    "register",
    "lookup",
    "registered",
    # running it
    "ProtocolRole",
    "RolePhase",
    "ProtocolExecutor",
    "ACTION_TYPES",
    "executors",
    "RoleDriver",
    "Timing",
    "Outcome",
    "Faults",
    # pictures and records
    "flow",
    "state_diagram",
    "sequence_diagram",
    "run_sequence",
    "check_run",
    "read_records",
    "events",
    "summarize",
    # simulation
    "LinkSimulation",
    "LinkFaults",
    "same_terminal_step",
    # errors
    "SpecificationError",
    "UnknownProtocol",
    "StepFailed",
    "ProtocolDesync",
    "VersionMismatch",
    "StepTimeout",
    "StepRefused",
    "PeerAborted",
    "StepInterrupted",
    "LinkFailed",
    "RecordError",
    "ReplayDiverged",
]


class ProtocolKind:
    """The protocol kind as a daemon builds it: records under ``<run_dir>/protocol``, each
    role's transcript in ``<log_dir>/<name>.protocol.log``."""

    machine = ProtocolRole
    tables: tuple[str, ...] = ()
    action_types = ACTION_TYPES

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        return None

    def build(self, setup: KindSetup) -> tuple[ProtocolRole, Mapping[str, Executor]]:
        return ProtocolRole(), executors(setup.run_dir / "protocol", setup.log_dir)


KIND = ProtocolKind()
"""The entry point of group ``statevisor.kinds`` named ``protocol``."""
