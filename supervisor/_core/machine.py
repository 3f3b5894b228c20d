"""The machine model: a process type (:class:`Machine`) and its per-transition :class:`Context`.

A transition is a deterministic, atomic function of (state, input). It mutates ``state`` in
place and *describes* effects through ``ctx``; nothing described takes effect unless the
transition returns normally, and then all of it does, in this order: phase change (which
cancels the state timeout and re-delivers postponed inputs), timers, postpone, internal
events, tracked actions (after the checkpoint, when there is a store), untracked actions,
replies, finish/fail.

Event handling follows Erlang's gen_statem: state timeouts (cancelled by a phase change), event
timeouts (cancelled by any input), named timeouts, postpone (re-delivered after the next phase
change), internal events (``ctx.next_event``, handled before anything in the mailbox) and, for
a machine with ``state_enter = True``, an enter call whenever it enters a phase (:meth:`Machine.enter`),
in the same atomic transition.
"""

from __future__ import annotations

import random as _random
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from .._errors import ConfigurationError, IllegalPhaseChange
from .actions import ExecutorRegistry, TrackedAction, UntrackedAction
from .inputs import EVENT_TIMEOUT, STATE_TIMEOUT, Call, Input
from .lifecycle import ErrorPolicy
from .secrets import redact
from .state import check_value

S = TypeVar("S", bound=Mapping[str, Any])

DEFAULT_PHASE = "main"


class Machine(Generic[S]):
    """A process type. Subclass it, implement :meth:`transition`, optionally declare phases.

    Class attributes:

    * ``kind``: the name metrics, logs and listings use (default: the class name, lower case).
    * ``phases``: a StrEnum of the machine's phases (gen_statem's "states"); optional.
    * ``initial_phase``: where a new process starts (default: the first phase).
    * ``edges``: ``{source: {target: label}}``; when declared, ``ctx.goto`` outside them raises
      and :func:`supervisor.mermaid` draws them.
    * ``error_policy``: what a raising transition does to the process (continue or fail).
    * ``local_paths``: the settings that are local file paths; in a configuration file a
      relative one is relative to that file (see :meth:`resolve_paths`).
    * ``state_enter``: call :meth:`enter` whenever the process enters a phase (gen_statem's
      state enter calls), the initial one included.
    * ``entry_notes`` and ``timeout_notes``: ``{phase: text}``, what entering a phase does and
      which timeouts it arms, drawn by :func:`supervisor.mermaid` beside the phase (the code is
      :meth:`enter` and the transitions; these say it for the diagram).
    * ``action_types``: the action types its transitions describe: a daemon checks before
      anything starts that each has an executor (others are found out at ``ctx.track``).
    * ``schema``: the version of this kind's state schema (a whole number from 1); checkpoints
      record it. A checkpoint of an older schema is brought up to date by :meth:`migrate` when
      it is loaded; one of a newer schema (written by newer code) is quarantined, not misread.
    * ``secret_keys``: keys whose values are secret wherever they appear in the state, an
      action's payload or a result: snapshots, listings and ``store inspect`` show them masked.
    * ``movable``: whether a process of this kind may continue on another daemon of a cluster
      when its own is gone (its work is reached over the network: a batch job, a pod, a
      replica of a log). False for kinds bound to their machine (a local command): such a
      process waits, shown unreachable, for its daemon to come back.
    """

    kind: ClassVar[str] = ""
    phases: ClassVar[type[StrEnum] | None] = None
    initial_phase: ClassVar[str] = ""
    edges: ClassVar[Mapping[str, Mapping[str, str]]] = {}
    error_policy: ClassVar[ErrorPolicy] = ErrorPolicy.CONTINUE
    local_paths: ClassVar[tuple[str, ...]] = ()
    secret_keys: ClassVar[frozenset[str]] = frozenset()
    schema: ClassVar[int] = 1
    action_types: ClassVar[tuple[str, ...]] = ()
    state_enter: ClassVar[bool] = False
    entry_notes: ClassVar[Mapping[str, str]] = {}
    timeout_notes: ClassVar[Mapping[str, str]] = {}
    movable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("kind"):
            cls.kind = cls.__name__.lower()
        if cls.phases is not None:
            names = {str(p) for p in cls.phases}
            if not names:
                raise ConfigurationError(f"{cls.__name__}.phases declares no phases")
            if not cls.initial_phase:
                cls.initial_phase = str(next(iter(cls.phases)))
            if cls.initial_phase not in names:
                raise ConfigurationError(
                    f"{cls.__name__}.initial_phase {cls.initial_phase!r} is not one of its phases {sorted(names)}"
                )
            for source, targets in cls.edges.items():
                for phase in (source, *targets):
                    if str(phase) not in names:
                        raise ConfigurationError(
                            f"{cls.__name__}.edges names phase {str(phase)!r}, which is not one of {sorted(names)}"
                        )
            for attribute in ("entry_notes", "timeout_notes"):
                for phase in getattr(cls, attribute):
                    if str(phase) not in names:
                        known = sorted(names)
                        raise ConfigurationError(
                            f"{cls.__name__}.{attribute} names phase {str(phase)!r}, which is not one of {known}"
                        )
        elif not cls.initial_phase:
            cls.initial_phase = DEFAULT_PHASE

    def initial_state(self) -> S:
        """The state of a process spawned without one."""
        return {}  # type: ignore[return-value]

    async def transition(self, state: S, input: Input, ctx: Context) -> None:
        """Handle one input: mutate ``state``, describe effects through ``ctx``."""
        raise NotImplementedError(f"{type(self).__name__} must implement transition()")

    def enter(self, state: S, ctx: Context) -> None:
        """With ``state_enter = True``: the process has entered ``ctx.phase`` (from
        ``ctx.entered_from``; the same phase for the initial one, before the first input).

        It runs inside the transition that changed the phase (and, for the initial phase, the
        one that handles the first input), so it commits or rolls back with it. It may arm
        timeouts, describe actions, queue internal events, pause, finish or fail; it may not
        change the phase again (:class:`IllegalPhaseChange`), as in gen_statem.
        """

    def restore(self, state: S, ctx: Context) -> None:
        """Called once after a crash, before any input: re-emit the tracked actions to resume.

        ``ctx.pending`` holds the tracked actions that were in flight at the last checkpoint.
        The default re-issues all of them under their original ids (their executors see the
        same idempotency keys). Pending actions not re-issued here are dropped.
        """
        for action in ctx.pending.values():
            ctx.reissue(action)

    def migrate(self, state: dict[str, Any], from_version: int) -> Mapping[str, Any]:
        """The state of a checkpoint written under schema ``from_version`` (older than
        :attr:`schema`), brought up to :attr:`schema`.

        Called when a node loads the checkpoint, before :meth:`restore`; the migrated state is
        written back (all migrated processes in one transaction) before the process runs again.
        Migrate through each version in turn if you like (``if from_version < 2: ...``). Raise to
        refuse a state: that process is quarantined with the error, the others run. Pending
        actions and timers keep their payloads as written. The default refuses every state.
        """
        raise NotImplementedError(
            f"{type(self).__name__} is at schema {self.schema} and defines no migration from schema {from_version}"
        )

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Validate settings a configuration gives this kind, before anything starts.

        Raise :class:`SettingsError` naming the key; the configuration loader adds the file,
        line and process. The default accepts anything.
        """

    @classmethod
    def resolve_paths(cls, settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
        """Settings from a configuration file (already checked), with relative local paths made
        absolute against ``base``, the file's directory, so that the daemon finds the same files
        wherever it was started. The default resolves the string settings named in
        ``local_paths``; override it for paths nested deeper.
        """
        resolved = dict(settings)
        for key in cls.local_paths:
            value = resolved.get(key)
            if isinstance(value, str) and value:
                resolved[key] = cls.local_path(value, base)
        return resolved

    @staticmethod
    def local_path(value: str, base: Path) -> str:
        """``value`` (``~`` expanded) made absolute against ``base``; an absolute one stays."""
        return str(base / Path(value).expanduser())

    def moves(self, state: S) -> bool:
        """Whether this process may continue on another daemon of a cluster when its own is
        gone (its kind's :attr:`movable`, by default). A kind whose processes are bound to their
        machine only under some settings (a log kept in a local file) says so here."""
        return self.movable

    def on_kill(self, state: S) -> Sequence[tuple[str, Any]]:
        """Untracked actions ``(type, payload)`` to run when the process is killed while no
        tracked action is in flight whose executor could cancel the external work (e.g. it is
        paused after a failure, with a job still queued somewhere). Default: none."""
        return ()

    def log_files(self, state: S) -> Mapping[str, str]:
        """The files this process's output goes to, by stream (``stdout``, ``stderr``...).

        Handles, the control API and ``statevisor logs`` tail these. Default: none.
        """
        return {}

    def owned_logs(self, state: S) -> Sequence[str]:
        """Log files that belong to this process alone: when its record is pruned (``retention``
        after it ended) they are deleted, with their rotated backups. Default: none. Leave out
        files another process may write (a name's logs, reused by the next process of that name).
        """
        return ()

    def end_details(self, state: S) -> Mapping[str, Any]:
        """Facts about how a process of this kind ended, for its supervisor's log lines
        (``child_restarting``, ``child_given_up``) beside its error: a command's exit code and
        signal, say. Plain values; default none."""
        return {}

    def view(self, state: S) -> Any:
        """What snapshots show of the state (default: all of it). Override for large states;
        values under :attr:`secret_keys` are masked in what this returns, whatever it is."""
        return state

    def redacted(self, value: Any) -> Any:
        """``value`` (a state, a payload, a result) with this kind's secret values masked."""
        return redact(value, self.secret_keys)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r}>"


class ContextOwner(Protocol):
    """What a :class:`Context` reads of the process whose transition it serves."""

    pid: str
    name: str
    phase: str
    version: int
    machine: Machine[Any]

    @property
    def pending_view(self) -> Mapping[str, TrackedAction]: ...

    @property
    def executors(self) -> ExecutorRegistry: ...


class Context:
    """What a transition may read (``now``, ``random``, ``phase``, ``pending``) and do (effects)."""

    __slots__ = (
        "_process",
        "_random",
        "_seq",
        "end",
        "entered_from",
        "goto_phase",
        "name",
        "next_events",
        "now",
        "pause_reason",
        "phase",
        "pid",
        "postponed",
        "replies",
        "timer_ops",
        "tracked",
        "untracked",
        "version",
    )

    def __init__(self, process: ContextOwner, now: float) -> None:
        self._process = process
        self.pid: str = process.pid
        self.name: str | None = process.name
        """The process's name, if it was given one (names are unique among live processes)."""
        self.now = now
        """The runtime clock when this transition began: the only time a transition may read."""
        self.phase: str = process.phase
        self.version: int = process.version
        self._seq = 0
        self._random: _random.Random | None = None
        self.tracked: list[TrackedAction] | None = None
        self.untracked: list[UntrackedAction] | None = None
        self.replies: list[tuple[int, Any]] | None = None
        self.timer_ops: list[tuple[str, float | None, Any]] | None = None
        self.goto_phase: str | None = None
        self.postponed = False
        self.end: tuple[str, Any] | None = None
        self.pause_reason: str | None = None
        self.next_events: list[Any] | None = None
        self.entered_from: str | None = None
        """In :meth:`Machine.enter`: the phase the process left (the same one for the initial)."""

    # --- what a transition may read -------------------------------------------------

    @property
    def random(self) -> _random.Random:
        """A random source seeded by (process id, version): the same on every re-run."""
        if self._random is None:
            self._random = _random.Random(f"{self.pid}:{self.version}")
        return self._random

    @property
    def pending(self) -> Mapping[str, TrackedAction]:
        """Tracked actions in flight (their results have not been delivered yet)."""
        return self._process.pending_view

    # --- effects ------------------------------------------------------------------------

    def track(self, action_type: str, payload: Any = None, *, key: str | None = None) -> str:
        """Describe a tracked action; returns its id (the idempotency key).

        The id defaults to ``"<pid>:<version>:<n>"``, deterministic across re-runs; pass
        ``key`` to choose one (it must be unique among this process's pending actions).
        """
        self._process.executors.get(action_type)
        check_value(payload, f"payload of action {action_type!r}")
        action_id = key if key is not None else f"{self.pid}:{self.version + 1}:{self._seq}"
        self._seq += 1
        if self.tracked is None:
            self.tracked = []
        elif any(a.id == action_id for a in self.tracked):
            raise ConfigurationError(f"action id {action_id!r} is emitted twice in one transition")
        if action_id in self._process.pending_view:
            raise ConfigurationError(f"action id {action_id!r} is already pending")
        self.tracked.append(TrackedAction(action_id, action_type, payload, self.pid))
        return action_id

    def reissue(self, action: TrackedAction) -> None:
        """Re-emit a pending tracked action under its original id (in :meth:`Machine.restore`)."""
        if self.tracked is None:
            self.tracked = []
        self.tracked.append(action)

    def emit(self, action_type: str, payload: Any = None) -> None:
        """Describe an untracked (fire-and-forget) action."""
        self._process.executors.get(action_type)
        if self.untracked is None:
            self.untracked = []
        self.untracked.append(UntrackedAction(action_type, payload, self.pid))

    def reply(self, call: Call | int, value: Any) -> None:
        """Answer a call, now or later (keep ``call.ref`` in state to answer after other inputs)."""
        if self.replies is None:
            self.replies = []
        self.replies.append((call if isinstance(call, int) else call.ref, value))

    def goto(self, phase: str) -> None:
        """Move to another phase: cancels the state timeout and re-delivers postponed inputs."""
        phase = str(phase)
        if self.entered_from is not None:
            raise IllegalPhaseChange(self.phase, phase, "an enter call may not change the phase")
        machine = self._process.machine
        if machine.phases is not None:
            if phase not in machine.phases.__members__.values():
                raise IllegalPhaseChange(self.phase, phase)
            if machine.edges and phase != self.phase and phase not in machine.edges.get(self.phase, {}):
                raise IllegalPhaseChange(self.phase, phase)
        self.goto_phase = phase

    def state_timeout(self, seconds: float, payload: Any = None) -> None:
        """Fire ``TimerFired(STATE_TIMEOUT, payload)`` after ``seconds`` unless the phase changes."""
        self._timer(STATE_TIMEOUT, seconds, payload)

    def event_timeout(self, seconds: float, payload: Any = None) -> None:
        """Fire ``TimerFired(EVENT_TIMEOUT, payload)`` after ``seconds`` unless an input comes
        first: any input cancels it (gen_statem's event timeout: "nothing happened for a while")."""
        self._timer(EVENT_TIMEOUT, seconds, payload)

    def timeout(self, name: str, seconds: float, payload: Any = None) -> None:
        """Arm (or re-arm) the named timeout ``name``."""
        if name in (STATE_TIMEOUT, EVENT_TIMEOUT):
            raise ConfigurationError(f"timer name {name!r} is reserved for the {name.replace('_', ' ')}")
        self._timer(name, seconds, payload)

    def cancel_timeout(self, name: str) -> None:
        """Disarm a named timeout (or the state timeout); no effect if it is not armed."""
        if self.timer_ops is None:
            self.timer_ops = []
        self.timer_ops.append((name, None, None))

    def _timer(self, name: str, seconds: float, payload: Any) -> None:
        if not seconds >= 0:
            raise ConfigurationError(f"timeout {name!r}: seconds must be >= 0, got {seconds!r}")
        check_value(payload, f"payload of timer {name!r}")
        if self.timer_ops is None:
            self.timer_ops = []
        self.timer_ops.append((name, self.now + seconds, payload))

    def next_event(self, message: Any) -> None:
        """Handle ``Internal(message)`` next, before anything waiting in the mailbox (gen_statem's
        internal events; several are handled in the order they were queued). Committed with
        this transition: a crash after it keeps them, a rollback drops them."""
        check_value(message, "internal event")
        if self.next_events is None:
            self.next_events = []
        self.next_events.append(message)

    def postpone(self) -> None:
        """Re-deliver this input after the next phase change (gen_statem's postpone)."""
        self.postponed = True

    def pause(self, reason: str) -> None:
        """Pause this process after the transition commits, with ``reason`` for everyone to see
        (snapshots, ``statevisor ps``). It takes no input until resumed; the resume arrives as
        ``Control(ControlEvent.RESUMED)``, so the machine can retry what made it stop (a host
        that was unreachable past its retry budget, say). In-flight actions go on."""
        self.pause_reason = str(reason)

    def finish(self, result: Any = None) -> None:
        """End the process normally with ``result``."""
        check_value(result, "result")
        self.end = ("finished", result)

    def fail(self, reason: str) -> None:
        """End the process as failed."""
        self.end = ("failed", str(reason))

    def effects(self) -> tuple[Any, ...]:
        """Everything this transition described, comparable across re-runs."""
        return (
            self.tracked,
            self.untracked,
            self.replies,
            self.timer_ops,
            self.goto_phase,
            self.postponed,
            self.end,
            self.pause_reason,
            self.next_events,
        )

    def __repr__(self) -> str:
        return (
            f"<Context {self.pid} v{self.version} phase={self.phase} "
            f"{len(self.tracked or ())} tracked, {len(self.untracked or ())} untracked>"
        )
