"""Every error statevisor raises, in one place.

The hierarchy, split by meaning (whose fault it is and what to do about it)::

    StatevisorError
    ├── WouldBlock                   a try_* operation found no room; the await form would wait
    ├── ConfigurationError           a process type or argument is wrong before anything ran
    │   ├── StateTypeError           a state value that does not round-trip through msgpack
    │   ├── UnknownActionType        an action names a type no executor is registered for
    │   ├── DiagramError             a process type declares no phases to draw
    │   ├── SettingsError            a process's settings are invalid; ``key`` names which
    │   ├── EntryRejected            a log entry that is neither bytes nor a msgpack value
    │   └── ConfigError              an invalid configuration file; ``file``, ``key``, ``line`` say where
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
    │   ├── IllegalPhaseChange       goto() to a phase the type does not declare an edge to
    │   ├── StateMutationError       state mutated outside a transition
    │   └── NondeterminismError      check mode re-ran a transition and got a different outcome
    ├── CallTimeout (also TimeoutError)  call() got no reply in time
    ├── DaemonNotAnswering (also TimeoutError)  a daemon took the connection but did not answer in time
    ├── ProtocolError                a control frame or message that does not follow the protocol
    │   └── ConnectionDenied         the daemon refused the connection (token, protocol version)
    ├── RemoteError                  a daemon's error that has no class of its own on the client's side
    ├── ApplyFailed                  a proposed log entry was committed, but apply raised on it; ``index`` names it
    ├── SimulationError              a simulation cannot go on (e.g. a transition awaited real I/O)
    │   └── InvariantViolation       an invariant failed; carries seed, step and how to replay
    ├── StoreError                   the checkpoint store failed; ``path`` names it
    │   ├── StoreLocked              another statevisor (or writer) holds the store
    │   ├── StoreFull                the disk or the database is full
    │   ├── CheckpointRejected       a record would not load back, so it was not written
    │   └── CorruptCheckpoint        a stored record cannot be decoded (it is quarantined)
    └── BackendError                 an executor's backend failed (reaches the process as ActionFailed)
        ├── CommandNotFound          the executable does not exist or is not executable
        ├── CommandLost              a detached command ended without recording its exit status
        ├── SecretUnreadable         a secret's file (env_files) is missing, unreadable or open to others
        ├── RunMonitorError          the run monitor (which starts local commands) cannot be started or reached
        ├── TransportError           a remote host could not be reached or talked to; ``host`` names it
        │   ├── HostUnreachable      connecting failed (refused, timed out, auth); retried with backoff
        │   └── HostKeyMismatch      the host's key is not the one known_hosts holds; never retried
        ├── SchedulerError           a batch scheduler refused a command (sbatch, qsub...); ``command`` names it
        └── LogError                 a log-apply machine's log failed or cannot be trusted; ``log`` names it
            ├── LogGap               entries the machine needs were compacted away with no snapshot covering them
            ├── StaleWriter          an append was fenced off: another writer appended under this writer's id
            ├── AckLost              an append landed but its acknowledgement was lost; retry with the same id
            └── SnapshotError        no snapshot could be loaded and the log does not start at index 1

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


class EntryRejected(ConfigurationError, ValueError):
    """A log entry that cannot go on a log: neither bytes nor a msgpack value, or larger than the
    log takes. ``where`` says which."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


class ConfigError(ConfigurationError):
    """An invalid configuration file; ``file``, ``key``, ``line`` say where, the message what.

    A file with several mistakes is reported whole: ``errors`` holds every one (this error
    first, in the order of the file's checks), and the message has a line for each.
    """

    def __init__(self, file: str, key: str, line: int | None, message: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.file = file
        self.key = key
        self.line = line
        self.problem = message
        self.errors: list[ConfigError] = [self]

    @classmethod
    def several(cls, errors: list[ConfigError]) -> ConfigError:
        """One error that reports all of ``errors`` (at least one)."""
        first = errors[0]
        combined = cls(first.file, first.key, first.line, first.problem)
        combined.errors = list(errors)
        combined.args = ("\n".join(str(error.args[0]) for error in errors),)
        return combined


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
    """``ctx.goto`` named a phase with no declared edge from the current one."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__("IllegalPhaseChange", f"no declared edge {source} -> {target}")
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


class DaemonNotAnswering(StatevisorError, TimeoutError):
    """A daemon accepted the connection (the kernel does, for a stopped or stuck daemon too) but
    did not answer within the client's time: its event loop may be blocked."""


class StoreError(StatevisorError):
    """The checkpoint store failed. Nothing half-written: the batch's transaction rolled back."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"checkpoint store {path}: {message}")
        self.path = path


class StoreLocked(StoreError):
    """Another process holds the store (a second daemon, or a writer keeping a lock too long)."""


class StoreFull(StoreError):
    """The disk or the database is full; the state in memory is kept and the write retried."""


class CheckpointRejected(StoreError):
    """A record failed the round-trip check and was not written."""


class CorruptCheckpoint(StoreError):
    """A stored record cannot be decoded; its process is quarantined, the others start."""

    def __init__(self, path: str, pid: str, reason: str) -> None:
        super().__init__(path, f"process {pid}: {reason}")
        self.pid = pid
        self.reason = reason


class SimulationError(StatevisorError):
    """A simulation cannot go on (a transition awaited real I/O, an unknown process...)."""


class InvariantViolation(SimulationError, AssertionError):
    """An invariant failed after a transition. Everything needed to replay it exactly is here."""

    def __init__(
        self, *, invariant: str, message: str, seed: int, step: int, pid: str, input: str, replay: str
    ) -> None:
        super().__init__(
            f"invariant {invariant!r} violated at step {step} (seed {seed}) after {pid} handled {input}: "
            f"{message}\nreplay: {replay}"
        )
        self.invariant = invariant
        self.seed = seed
        self.step = step
        self.pid = pid
        self.input = input
        self.replay = replay


class BackendError(StatevisorError):
    """An executor's backend failed; the process receives it as ``ActionFailed``."""


class CommandNotFound(BackendError):
    """A command's executable does not exist, or is not an executable file."""


class SecretUnreadable(BackendError):
    """A secret a command needs could not be read from its file (missing, not owner-only, not
    text); the message names the setting and the file, never the value."""


class CommandLost(BackendError):
    """A detached command ended while nobody watched it and left no exit status behind."""


class RunMonitorError(BackendError):
    """The run monitor, the process that starts local commands and outlives the daemon, could
    not be started or reached; its log (``<run_dir>/.monitor.log``) says why."""


class TransportError(BackendError):
    """A remote host could not be reached or talked to; ``host`` names it."""

    def __init__(self, host: str, problem: str) -> None:
        super().__init__(f"host {host!r}: {problem}")
        self.host = host
        self.problem = problem


class HostUnreachable(TransportError):
    """Connecting to a host failed (refused, timed out, authentication); retried with backoff."""


class HostKeyMismatch(TransportError):
    """The host presented a key that known_hosts does not hold for it. Never retried: fix
    known_hosts (or the address), then resume the process."""


class SchedulerError(BackendError):
    """A batch scheduler's command failed; ``command`` is what ran, ``output`` what it said."""

    def __init__(self, command: str, exit_status: int | None, output: str) -> None:
        super().__init__(f"{command!r} failed (exit status {exit_status}): {output.strip()[:500]}")
        self.command = command
        self.exit_status = exit_status
        self.output = output


class ProtocolError(StatevisorError):
    """A frame or message that does not follow the control protocol."""


class ConnectionDenied(ProtocolError):
    """The daemon refused the connection: a missing or wrong token, or a protocol version it
    does not speak. Retrying with the same credentials cannot help."""


class RemoteError(StatevisorError):
    """An error from the daemon that has no class of its own on this side."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class ApplyFailed(StatevisorError):
    """A proposed entry is in the log at ``index``, but the machine's apply raised on it.

    The state is unchanged by that entry, on every replica alike; the entry stays in the log.
    """

    def __init__(self, index: int, error: str) -> None:
        super().__init__(f"entry {index} was committed but apply raised {error}")
        self.index = index
        self.error = error


class LogError(BackendError):
    """A log-apply machine's log failed or cannot be trusted; ``log`` names it."""

    def __init__(self, log: str, message: str) -> None:
        super().__init__(f"log {log}: {message}")
        self.log = log


class LogGap(LogError):
    """Entries the machine needs are gone from the log and no snapshot covers them.

    Applying on from the next available entry would silently diverge from every other replica,
    so the machine stops instead.
    """


class StaleWriter(LogError):
    """An append was fenced off: the log holds a newer append under this writer's id."""


class AckLost(LogError):
    """An append landed but its acknowledgement was lost (the simulated log injects this):
    retry with the same message id, and deduplication keeps the entry single."""


class SnapshotError(LogError):
    """No snapshot could be loaded, and the log no longer starts at index 1."""
