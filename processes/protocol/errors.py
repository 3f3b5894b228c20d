"""The protocol kind's errors, on the core's bases::

    ConfigurationError
    └── SpecificationError       a protocol, party, role or message declared wrongly; ``where`` names it
        └── UnknownProtocol      settings name a protocol nobody registered
    StatevisorError
    └── StepFailed               a joint step could not complete; ``step`` and ``peer_step`` say where each side was
        ├── ProtocolDesync       the peer sent a message for another step, of another kind, or not declared by the step
        │   └── VersionMismatch  the peer speaks another version of the protocol (refused at start)
        ├── StepTimeout (also TimeoutError)  nothing from the peer within the step's timeout
        ├── StepRefused          the peer's answer to the step said no; ``reason`` says why
        ├── PeerAborted          the peer took the abort path; ``reason`` is its reason
        └── StepInterrupted      a crash interrupted a step that happens once; its outcome is unknown
    BackendError
    ├── TransportError
    │   └── LinkFailed           the link could not be opened (a bad address, a pty that cannot be made)
    └── RecordError              a role's recorded run cannot be read or written; ``path`` names it
        └── ReplayDiverged       replaying the record through the protocol gave another message than recorded

What a protocol function sees at a joint step is a :class:`StepFailed`: its ``except`` takes the
declared abort path, on both sides. The others fail the role's process.
"""

from __future__ import annotations

from supervisor import BackendError, ConfigurationError, StatevisorError, TransportError


class SpecificationError(ConfigurationError):
    """A protocol, a party, a role or a message is declared wrongly; ``where`` names it."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class UnknownProtocol(SpecificationError, LookupError):
    """No protocol of that name (and version) is registered."""


class StepFailed(StatevisorError):
    """A joint step could not complete. ``step`` is this side's step (``"name #seq"``),
    ``peer_step`` the peer's as last heard (empty when nothing was heard)."""

    def __init__(self, message: str, *, step: str = "", peer_step: str = "") -> None:
        where = f" [here: {step or 'no step'}; peer: {peer_step or 'nothing heard'}]"
        super().__init__(message + where)
        self.reason = message
        self.step = step
        self.peer_step = peer_step


class ProtocolDesync(StepFailed):
    """The two sides are no longer in the same step: the peer sent a message for another step,
    of another kind, or one the step does not declare."""


class VersionMismatch(ProtocolDesync):
    """The peer speaks another version of the protocol; the host refuses it at ``start``."""


class StepTimeout(StepFailed, TimeoutError):
    """Nothing came from the peer within the step's timeout."""


class StepRefused(StepFailed):
    """The peer answered the step, and its answer said no (a client refusing an image)."""


class PeerAborted(StepFailed):
    """The peer took the abort path; ``reason`` is the reason it gave."""


class StepInterrupted(StepFailed):
    """A crash interrupted a step declared to happen once (``Resume.ONCE``) after its effect
    may have begun: it is not performed again, and the protocol takes its abort path."""


class LinkFailed(TransportError):
    """The link could not be opened: an address that cannot be listened on, a pty that cannot
    be made. (A peer that is not there yet is no error: the link keeps trying.)"""


class RecordError(BackendError):
    """A role's recorded run cannot be read or written; ``path`` names it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ReplayDiverged(RecordError):
    """Replaying the recorded run through the protocol function gave another message (or another
    step) than the one recorded: the protocol's code, the role's settings or its inputs (an image)
    changed since the run began. The run cannot be resumed; it is never silently re-done."""
