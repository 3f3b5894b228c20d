"""The core's errors, and the bases every layer and process kind derives its own from.

The core's hierarchy, split by meaning (whose fault it is and what to do about it). Each layer
and each process kind adds its own errors on these bases, drawn at the top of the module that
defines them (``supervisor._store.errors``, ``supervisor.control``, the simulation, the
configuration, ``processes.shell.errors`` and the other kinds)::

    StatevisorError
    ├── WouldBlock                   a try_* operation found no room; the await form would wait
    ├── ConfigurationError           a process type or argument is wrong before anything ran
    │   ├── StateTypeError           a state value that does not round-trip through msgpack
    │   ├── UnknownActionType        an action names a type no executor is registered for
    │   ├── DiagramError             a process type declares no phases to draw
    │   └── SettingsError            a process's settings are invalid; ``key`` names which
    ├── LifecycleError               an operation that the process's lifecycle does not allow
    │   ├── IllegalLifecycleMove     e.g. finished -> running; a runtime bug if ever seen
    │   ├── ProcessPaused            the process is paused: a call would only wait until it is resumed
    │   └── ProcessTerminated        the process is finished, failed or killed (base of the three below)
    │       ├── ProcessFinished      ... it finished normally
    │       ├── ProcessFailed        ... its machine failed it (or its error policy did)
    │       └── ProcessKilled        ... it was killed; ``reason`` says why
    ├── ProcessNotFound (also LookupError)  no live process has that id or name
    ├── LogNotFound (also LookupError)  the process keeps no log of that stream
    ├── NotFinished                  result() asked of a process that is still alive
    ├── TransitionError              a transition raised; the process's state is as before the input
    │   ├── IllegalPhaseChange       goto() to a phase without a declared edge to it, or in an enter call
    │   ├── StateMutationError       state mutated outside a transition
    │   └── NondeterminismError      check mode re-ran a transition and got a different outcome
    ├── CallTimeout (also TimeoutError)  call() got no reply in time
    ├── Unavailable                  the process cannot be reached just now (moving between daemons); retry
    ├── StoreError                   the checkpoint store failed; ``path`` names it
    │   └── CorruptCheckpoint        a stored record cannot be decoded (it is quarantined)
    └── BackendError                 an executor's backend failed (reaches the process as ActionFailed)
        └── TransportError           a remote end could not be reached or talked to; ``host`` names it

Errors raised *by user transitions* reach callers as :class:`TransitionError` whose
``error_type`` and ``message`` name the original; in-process the original is also its
``__cause__``. Remote handles (which cannot rebuild arbitrary exception types) raise the same
class with the same fields, so code written against one works against the other.
"""

from __future__ import annotations


class StatevisorError(Exception):
    """Base of every error statevisor raises on purpose."""


class WouldBlock(StatevisorError):
    """A ``try_*`` operation could not proceed without waiting."""


class ConfigurationError(StatevisorError):
    """A process type, executor or argument is invalid; nothing was started."""


class StateTypeError(ConfigurationError, TypeError):
    """A state value that msgpack cannot carry exactly; ``path`` says where it is."""

    def __init__(self, path: str, problem: str, root: str = "state") -> None:
        super().__init__(f"{root}{path}: {problem}")
        self.path = path
        self.problem = problem
        self.root = root


class UnknownActionType(ConfigurationError, LookupError):
    """An action was emitted whose type has no registered executor."""


class DiagramError(ConfigurationError):
    """A diagram was asked of a process type that declares no phases."""


class SettingsError(ConfigurationError, ValueError):
    """A process's settings are invalid: ``key`` is the setting's path, the message says what is wrong."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.problem = message


class LifecycleError(StatevisorError):
    """The process's lifecycle does not allow the operation."""


class IllegalLifecycleMove(LifecycleError):
    """A lifecycle move outside the allowed graph (e.g. finished -> running)."""


class ProcessPaused(LifecycleError):
    """The process is paused, so the operation (a call from the command line) would only wait
    until someone resumes it; the message names the process and why it is paused."""


class ProcessTerminated(LifecycleError):
    """The process has ended; the subclass says how."""

    def __init__(self, pid: str, message: str) -> None:
        super().__init__(f"process {pid}: {message}")
        self.pid = pid


class ProcessFinished(ProcessTerminated):
    """The process finished normally and accepts no more input."""


class ProcessFailed(ProcessTerminated):
    """The process failed; ``reason`` is what its machine (or error policy) said."""

    def __init__(self, pid: str, reason: str) -> None:
        super().__init__(pid, f"failed: {reason}")
        self.reason = reason


class ProcessKilled(ProcessTerminated):
    """The process was killed; ``reason`` is what the killer said."""

    def __init__(self, pid: str, reason: str) -> None:
        super().__init__(pid, f"killed: {reason}")
        self.reason = reason


class ProcessNotFound(StatevisorError, LookupError):
    """No process with that id or name is known."""


class LogNotFound(StatevisorError, LookupError):
    """The process's kind keeps no log file for the stream asked for."""


class NotFinished(StatevisorError):
    """``result()`` was asked of a process that has not ended yet."""


class TransitionError(StatevisorError):
    """A transition raised. The process's state, actions and timers are as before the input."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.message = message

    @classmethod
    def from_exception(cls, exc: BaseException) -> TransitionError:
        if isinstance(exc, TransitionError):
            return exc
        err = cls(type(exc).__qualname__, str(exc))
        err.__cause__ = exc
        return err


class IllegalPhaseChange(TransitionError):
    """``ctx.goto`` named a phase with no declared edge from the current one (or was called in
    an enter call, which may not change the phase)."""

    def __init__(self, source: str, target: str, why: str = "") -> None:
        super().__init__("IllegalPhaseChange", why or f"no declared edge {source} -> {target}")
        self.source = source
        self.target = target


class StateMutationError(TransitionError):
    """Process state was mutated outside a transition; only transitions may change it."""

    def __init__(self, message: str) -> None:
        super().__init__("StateMutationError", message)


class NondeterminismError(TransitionError):
    """Check mode re-ran a transition on a copy of the state and the outcomes differ."""

    def __init__(self, message: str) -> None:
        super().__init__("NondeterminismError", message)


class CallTimeout(StatevisorError, TimeoutError):
    """``call()`` received no reply within its timeout (the input may still be processed)."""


class Unavailable(StatevisorError):
    """The process cannot be reached just now, through no fault of the request: it is moving
    from one daemon of a cluster to another, or its daemon does not answer. ``retryable`` is
    true: the same request may succeed after ``retry_after`` seconds. The message says whether
    the request reached the process (a call whose daemon died before answering may have been
    handled; a request refused before it was sent was not)."""

    retryable = True

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreError(StatevisorError):
    """The checkpoint store failed. Nothing half-written: the batch's transaction rolled back."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"checkpoint store {path}: {message}")
        self.path = path


class CorruptCheckpoint(StoreError):
    """A stored record cannot be decoded; its process is quarantined, the others start."""

    def __init__(self, path: str, pid: str, reason: str) -> None:
        super().__init__(path, f"process {pid}: {reason}")
        self.pid = pid
        self.reason = reason


class BackendError(StatevisorError):
    """An executor's backend failed; the process receives it as ``ActionFailed``."""


class TransportError(BackendError):
    """A remote end (an SSH host, an API server, a message broker) could not be reached or
    talked to; ``host`` names it."""

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"host {host!r}: {problem}")
        self.host = host
        self.problem = problem
