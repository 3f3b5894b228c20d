"""The role driver: one side of a protocol run, as plain synchronous code with no I/O of its own.

The driver runs the protocol function over a role, as a coroutine it steps by hand. Whatever
the role's code awaits (an answer, a request, a fence) is yielded to the driver, which resumes
the coroutine when a frame or a tick brings it. Everything else happens inline: frames to send
go to :attr:`RoleDriver.outbox`, records to the sink. The same driver runs in the executor
(sockets, ptys, real time) and in the link simulation (a simulated link, virtual time), which
is why it does no I/O: decisions here, I/O around it.

**Phase lock.** Every frame carries the protocol, its version, the run, the joint step's sequence
number and its name. The host asks step *n* and retransmits until the answer *n* comes (an
adaptive timeout, backing off); the client answers a request *n* it has already answered from its
record, and asks the host to rewind when a request is ahead of it (after the client lost steps
in a crash). A frame of the right number for another step, a message the step does not declare,
another version at the host, or nothing heard within the step's timeout raise a
:class:`StepFailed` into the protocol function at the step, which takes its abort path.

**Replay.** A driver given a record replays it first: each ``ask``, ``receive``, ``answer`` and
``effect`` of the role takes its recorded outcome instead of doing anything (and checks that the
role would have sent the same message), until the record is exhausted; then the run goes on live
from exactly there. A step that the record shows begun but not completed is simply taken again
(its request or answer is sent again), except a ``Resume.ONCE`` step whose effect may have
begun: that one raises :class:`StepInterrupted`.

**Fences.** Before a ``RESTART`` or ``ONCE`` step's answer leaves, and before a ``ONCE`` step's
first effect, the coroutine waits on a fence: the runner makes the role's resources and the
record durable, then calls :meth:`RoleDriver.fenced`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from ._record import DONE, EFFECT, END, IN, INTENT, OUT, RAISE, RUN
from ._spec import (
    ABORT,
    Abort,
    Message,
    Resume,
    Role,
    Specification,
    Step,
    decode_message,
    encode_message,
    message_info,
)
from ._wire import Frame, FrameKind, encode_frame
from .errors import (
    PeerAborted,
    ProtocolDesync,
    ReplayDiverged,
    SpecificationError,
    StepFailed,
    StepInterrupted,
    StepRefused,
    StepTimeout,
    VersionMismatch,
)

REQUEST, ANSWER, ABORT_KIND, HOLD, REWIND = (int(k) for k in FrameKind)

_ERRORS: dict[str, type[StepFailed]] = {
    cls.__name__: cls
    for cls in (StepFailed, ProtocolDesync, VersionMismatch, StepTimeout, StepRefused, PeerAborted, StepInterrupted)
}


class Need(Enum):
    """What the protocol coroutine waits on."""

    ANSWER = "an answer"
    REQUEST = "a request"
    FENCE = "a fence"
    ABORT = "the peer's abort"


class Wait:
    """Yielded by the coroutine to the driver; the value it is resumed with is the await's."""

    __slots__ = ("need",)

    def __init__(self, need: Need) -> None:
        self.need = need

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self)

    def __repr__(self) -> str:
        return f"<Wait for {self.need.value}>"


class Ready:
    """An await that completes at once (replay, or nothing to wait for)."""

    __slots__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return self.value
        yield  # a generator: awaiting it never suspends


class Raise:
    """An await that raises at once (a recorded error, replayed)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __await__(self) -> Generator[Any, Any, Any]:
        raise self.error
        yield


_DONE = Ready(None)


@dataclass(frozen=True, slots=True)
class Timing:
    """A role's timing: ``step_timeout`` (seconds without hearing from the peer while in a step),
    the retransmission timeout's bounds and first value, how long an ended role keeps answering
    its peer's repeats (``linger``) and how long an abort waits for the peer's acknowledgement."""

    step_timeout: float = 10.0
    rto_min: float = 0.002
    rto_max: float = 1.0
    rto_initial: float = 0.05
    linger: float | None = None  # default: step_timeout
    abort_timeout: float | None = None  # default: min(step_timeout, 5)

    @property
    def linger_seconds(self) -> float:
        return self.step_timeout if self.linger is None else self.linger

    @property
    def abort_seconds(self) -> float:
        return min(self.step_timeout, 5.0) if self.abort_timeout is None else self.abort_timeout


class Outcome(NamedTuple):
    """How a run ended: ``done`` (its last step was not the abort), ``aborted`` or ``failed``
    (an error escaped the protocol function); ``terminal`` is the last step, ``reason`` why."""

    outcome: str
    terminal: str
    reason: str


Sink = Callable[[list[Any]], None]


class RoleDriver:
    """One side of one run. Feed it :meth:`deliver` (a frame from the peer), :meth:`tick` (at
    :meth:`next_deadline`), :meth:`fenced` (when :attr:`waiting` is a fence and it was taken)
    and :meth:`link_up`; send what :attr:`outbox` holds; it has ended when :attr:`outcome` is set."""

    def __init__(
        self,
        spec: Specification[Any],
        role: Role,
        *,
        replay: list[list[Any]] | None = None,
        sink: Sink | None = None,
        run: str = "",
        timing: Timing | None = None,
    ) -> None:
        self.spec = spec
        self.role = role
        self.side = role.side
        if self.side not in ("host", "client"):
            raise SpecificationError(type(role).__qualname__, "a role is a Host or a Client")
        self.protocol = spec.name
        self.version = spec.version
        self.timing = timing or Timing()
        role._driver = self
        self._replay = replay or []
        self._pos = 0
        self.replaying = bool(self._replay)
        # In the daemon, a list's append: records are encoded a batch at a time, off the hot path.
        self._sink = sink or (lambda record: None)
        self.run = run
        self.now = 0.0
        self.started_at = 0.0
        self.first_step_at: float | None = None
        self.ended_at: float | None = None
        # where the run stands
        self.seq = 0
        self.step: Step[Any, Any] | None = None
        self.step_name = ""
        self.counts: dict[str, int] = {}
        self.steps_done = 0
        self.bytes = 0
        self.messages = 0
        self.outbox: list[bytes] = []
        self.waiting: Wait | None = None
        self.outcome: Outcome | None = None
        self.linger_until: float | None = None
        self.peer = ("", 0)
        self.heard_at: float | None = None
        self._step_began = 0.0
        self._timeout = self.timing.step_timeout
        self._coro: Coroutine[Any, Any, None] | None = None
        # An error found while the coroutine was not waiting on the peer (during a fence): raised,
        # and recorded, at its next wait on the peer, where replay finds it again.
        self._pending: tuple[StepFailed, list[Any] | None] | None = None
        self._replayed_end = False
        # a step that happens once
        self._intent = False
        self._intent_replayed = False
        # the host's side of retransmission
        self._requests: dict[int, bytes] = {}
        self._resend: bytes | None = None
        self._retx_at: float | None = None
        self._sent_at = 0.0
        self._retried = False
        self._rto = self.timing.rto_initial
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._catchup: int | None = None
        # the client's side
        self._answers: dict[int, bytes] = {}
        self._answered = False
        self._early: Frame | None = None
        self._rewind_at = 0.0
        # the abort
        self._peer_aborted = False
        self._abort_frame: bytes | None = None
        self._abort_deadline: float | None = None
        # counters
        self.retransmissions = 0
        self.duplicates = 0
        self.rejected = 0
        self.rewinds = 0
        self.holds = 0

    # --- running ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin (or, with a record, replay and then resume) the run."""
        self.now = self.started_at = now
        header = {"protocol": self.protocol, "version": self.version, "side": self.side, "run": self.run}
        if self.replaying:
            first = self._replay[0]
            data = first[3] if first[0] == RUN and isinstance(first[3], dict) else {}
            if (data.get("protocol"), data.get("version"), data.get("side")) != (
                self.protocol,
                self.version,
                self.side,
            ):
                raise ReplayDiverged(
                    "record",
                    f"the record is of {data.get('protocol')}@{data.get('version')} {data.get('side')}, "
                    f"this role is {self.protocol}@{self.version} {self.side}",
                )
            self.run = str(data.get("run") or "")
            self._pos = 1
            if self._pos == len(self._replay):
                self.replaying = False
            self.heard_at = now  # a resumed run times out if its peer never comes back
        else:
            self._sink([RUN, 0, "", header])
        self._coro = self.spec.function(self.role)
        self._resume(None)

    def _resume(self, value: Any) -> None:
        """Go on with the protocol coroutine, giving ``value`` to what it awaits."""
        self._advance(value, None)

    def _throw(self, error: BaseException) -> None:
        """Raise ``error`` into the protocol coroutine where it awaits."""
        self._advance(None, error)

    def _advance(self, value: Any, error: BaseException | None) -> None:
        self.waiting = None
        coro: Any = self._coro
        try:
            yielded = coro.send(value) if error is None else coro.throw(error)
        except StopIteration:
            self._finished()
            return
        except Exception as exc:
            self._failed(exc)
            return
        if type(yielded) is not Wait:
            self._not_a_step(yielded)
            return
        self.waiting = yielded

    def _not_a_step(self, yielded: Any) -> None:
        self._failed(
            SpecificationError(
                f"{self.protocol} {self.side}",
                f"the protocol awaited {yielded!r}; a protocol awaits only its steps (no I/O, no sleeps)",
            )
        )

    # --- what the joint steps call (through the role) ----------------------------------------

    def begin(self, step: Step[Any, Any]) -> None:
        if not self.seq:
            self.first_step_at = self.now
        self.seq += 1
        self.step = step
        self.step_name = step.name
        self.counts[step.name] = self.counts.get(step.name, 0) + 1
        self._step_began = self.now
        self._timeout = step.timeout if step.timeout is not None else self.timing.step_timeout
        self._intent = self._intent_replayed = self._answered = False

    def end(self, step: Step[Any, Any]) -> Awaitable[None] | None:
        self.steps_done += 1
        if step.resume is Resume.ONCE and self._intent:
            if self.replaying and self._take_optional(DONE, self.seq) is not None:
                return None
            self._sink([DONE, self.seq, step.name, None])
            return self._wait(Need.FENCE)
        return None

    def ask(self, step: Step[Any, Any], message: Any) -> Awaitable[Any]:
        if step is not self.step or type(message) not in step.sends:
            self._check(step, message, step.sends, "ask")
        seq, name = self.seq, step.name
        body = encode_message(message)
        frame = encode_frame(REQUEST, self.protocol, self.version, self.run, seq, name, body)
        self._requests[seq] = frame
        self.bytes += _data(body)
        self.messages += 1
        if self.replaying:
            record = self._take(OUT, seq)
            if isinstance(record, Raise):
                return record
            if record is not None:
                if record[3] != [REQUEST, body]:
                    raise self._diverged(f"{name} #{seq} would ask {body!r:.80}; the record asked {record[3]!r:.80}")
                reply = self._replayed_reply(seq, step.answer_types())
                if reply is not None:
                    return reply
                self._send_request(frame)  # sent before the crash, perhaps: sent again
                self._retried = True
                return self._wait_on_peer(Need.ANSWER)
        if self._intent_replayed:
            return self._raise_interrupted()
        self._sink([OUT, seq, name, [REQUEST, body]])
        self.outbox.append(frame)
        self._resend = frame
        self._sent_at = now = self.now
        self._retried = False
        self._retx_at = now + self._rto
        return self._wait_on_peer(Need.ANSWER)

    def receive(self, step: Step[Any, Any]) -> Awaitable[Any]:
        if step is not self.step:
            self._check(step, None, (), "receive")
        if self.replaying:
            request = self._replayed_reply(self.seq, step.request_types())
            if request is not None:
                return request
        early = self._early
        if early is not None and early.seq == self.seq:
            self._early = None
            return self._take_request(early)
        return self._wait_on_peer(Need.REQUEST)

    def answer(self, step: Step[Any, Any], message: Any) -> Awaitable[None]:
        if step is not self.step or type(message) not in step.answers:
            self._check(step, message, step.answers, "answer")
        seq, name = self.seq, step.name
        body = encode_message(message)
        frame = encode_frame(ANSWER, self.protocol, self.version, self.run, seq, name, body)
        self._answers[seq] = frame
        self._answered = True
        self.bytes += _data(body)
        self.messages += 1
        if self.replaying:
            record = self._take(OUT, seq)
            if isinstance(record, Raise):
                self._answers.pop(seq, None)
                return record
            if record is not None:
                if record[3] != [ANSWER, body]:
                    raise self._diverged(f"{name} #{seq} would answer {body!r:.80}; the record has {record[3]!r:.80}")
                return _DONE  # sent before the crash, or not: a repeat of the request gets it
        if self._intent_replayed:
            self._answers.pop(seq, None)
            return self._raise_interrupted()
        self._sink([OUT, seq, name, [ANSWER, body]])
        if step.resume is not Resume.REPEAT:
            return self._send_after_fence(frame)
        self.outbox.append(frame)
        return _DONE

    async def _send_after_fence(self, frame: bytes) -> None:
        await self._wait(Need.FENCE)
        self.outbox.append(frame)

    def effect(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Awaitable[Any]:
        step = self.step
        if step is None:
            raise SpecificationError(f"{self.protocol} {self.side}", "an effect belongs to a joint step")
        seq = self.seq
        if step.resume is Resume.ONCE and not self._intent:
            if self.replaying and self._take_optional(INTENT, seq) is not None:
                self._intent = self._intent_replayed = True
            else:
                self._intent = True
                self._sink([INTENT, seq, step.name, None])
                return self._effect_after_fence(function, args, kwargs)
        if self.replaying:
            record = self._take(EFFECT, seq)
            if isinstance(record, Raise):
                return record
            if record is not None:
                return Ready(record[3])
        if self._intent_replayed:
            return self._raise_interrupted()
        result = function(*args, **kwargs)
        self._sink([EFFECT, seq, step.name, result])
        return Ready(result)

    async def _effect_after_fence(
        self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Any:
        await self._wait(Need.FENCE)
        return self._perform(function, args, kwargs)

    def _perform(self, function: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        result = function(*args, **kwargs)
        self._sink([EFFECT, self.seq, self.step_name, result])
        return result

    def abort(self, reason: str) -> Awaitable[None]:
        """The abort step: send our abort (or acknowledge the peer's) and, when we began it,
        await the peer's for up to the abort timeout."""
        where = self.where()
        if self.replaying and not self._peer_aborted and self._take_optional(IN, self.seq) is not None:
            self._peer_aborted = True  # the peer's abort, recorded at the step it came in
        pending = self._pending
        if pending is not None and pending[1] is not None:
            self._pending = None
            self._sink([IN, self.seq, self.step_name, pending[1]])
        self.begin(ABORT)
        seq = self.seq
        body = encode_message(Abort(str(reason), where))
        frame = self._frame(ABORT_KIND, seq, body)
        self._abort_frame = frame
        self.steps_done += 1
        if self.replaying and isinstance(self._take(OUT, seq), list):
            if self._peer_aborted or self._take_optional(IN, seq) is not None or self.replaying or self._replayed_end:
                return _DONE  # acknowledged then, or the record goes on to the end
            return self._await_abort(frame)
        self._sink([OUT, seq, "abort", [ABORT_KIND, body]])
        self.outbox.append(frame)
        if self._peer_aborted:
            return _DONE
        return self._await_abort(frame)

    def _await_abort(self, frame: bytes) -> Wait:
        self._resend = frame
        self._retried = True
        self._retx_at = self.now + self._rto
        self._abort_deadline = self.now + self.timing.abort_seconds
        return self._wait(Need.ABORT)

    # --- frames from the peer ----------------------------------------------------------------

    def deliver(self, frame: Frame, now: float) -> None:
        """A frame from the peer (its checksum already checked)."""
        self.now = now
        if frame.protocol != self.protocol:
            self.rejected += 1
            self._fail_step(ProtocolDesync(f"the peer speaks {frame.protocol!r}, not {self.protocol!r}"))
            return
        if self.run and frame.run != self.run:
            self.rejected += 1  # another run's frame (a stale peer): not this run's business
            return
        kind = frame.kind
        self.heard_at = now
        self.peer = (frame.step, frame.seq)
        if kind == ABORT_KIND:
            self._on_abort(frame)
        elif kind == HOLD:
            self.holds += 1  # the peer is paused: hearing it is what keeps our timeout off
            return
        elif self.side == "host":
            if kind == ANSWER:
                self._on_answer(frame)
            elif kind == REWIND:
                self._on_rewind(frame)
            else:
                self.rejected += 1
        elif kind == REQUEST:
            self._on_request(frame)
        else:
            self.rejected += 1

    def _on_answer(self, frame: Frame) -> None:
        seq = frame.seq
        catchup = self._catchup
        if catchup is not None and catchup <= seq < self.seq:
            # The client is taking again steps a crash made it lose: the next recorded request.
            following = seq + 1
            if following < self.seq:
                self._catchup = following
                self._resend = self._requests.get(following)
            else:
                self._catchup = None
                self._resend = self._requests.get(self.seq)
            if self._resend is not None:
                self.outbox.append(self._resend)
                self._retx_at = self.now + self._rto
            return
        waiting = self.waiting
        step = self.step
        if self.outcome is not None or waiting is None or waiting.need is not Need.ANSWER or seq != self.seq:
            self.duplicates += 1  # an answer taken already, repeated
            return
        assert step is not None
        if frame.version != self.version:
            self._fail_step(
                VersionMismatch(
                    f"the client speaks {self.protocol} version {frame.version}; "
                    f"this host speaks version {self.version}"
                )
            )
            return
        if frame.step != step.name:
            self._fail_step(
                ProtocolDesync(f"the client answered {frame.step} #{seq}; the host asked {step.name} #{seq}")
            )
            return
        try:
            message = decode_message(frame.body, step.answer_types(), lambda: f"answer to {step.name} #{seq}")
        except ProtocolDesync as exc:
            self._fail_step(exc)
            return
        if not self._retried:
            self._sample_rtt(self.now - self._sent_at)
        self._retx_at = None
        self._resend = None
        self._catchup = None
        self._sink([IN, seq, step.name, [ANSWER, frame.body]])
        self.bytes += _data(frame.body)
        self.messages += 1
        self._resume(message)

    def _on_rewind(self, frame: Frame) -> None:
        body = frame.body
        target = body[0] if isinstance(body, list) and body and isinstance(body[0], int) else None
        if target is None or self.outcome is not None or self.waiting is None or self.waiting.need is not Need.ANSWER:
            self.rejected += 1
            return
        if target < self.seq and target in self._requests:
            self.rewinds += 1
            self._catchup = target
            self._resend = self._requests[target]
        elif target == self.seq:
            self._resend = self._requests.get(self.seq)
        else:
            self.rejected += 1
            return
        if self._resend is not None:
            self.outbox.append(self._resend)
            self._retx_at = self.now + self._rto

    def _on_request(self, frame: Frame) -> None:
        seq = frame.seq
        waiting = self.waiting
        if self.outcome is None and waiting is not None and waiting.need is Need.REQUEST and seq == self.seq:
            taken = self._take_request(frame)
            if type(taken) is Ready:
                self._resume(taken.value)
            else:
                self._throw(taken.error)  # type: ignore[union-attr]
            return
        if seq < self.seq or (seq == self.seq and self._answered) or self.outcome is not None:
            self.duplicates += 1
            answer = self._answers.get(seq)
            if answer is not None:
                self.outbox.append(answer)
            return
        if seq == self.seq:
            return  # the step is under way here (a fence): the answer will come
        if (waiting is None or waiting.need is Need.FENCE) and seq == self.seq + 1:
            self._early = frame
            return
        # Ahead of us: we lost steps in a crash. Ask the host for its requests again from ours.
        if self.now >= self._rewind_at:
            wanted = self.seq if waiting is not None and waiting.need is Need.REQUEST else self.seq + 1
            # Stamped with the host's run: a client that lost its whole record has not taken it yet.
            self.outbox.append(self._frame(REWIND, wanted, [wanted], run=frame.run))
            self._rewind_at = self.now + self._rto
            self.rewinds += 1

    def _take_request(self, frame: Frame) -> Ready | Raise:
        step = self.step
        assert step is not None
        seq = frame.seq
        if frame.step != step.name:
            return self._error_now(
                ProtocolDesync(f"the host asked {frame.step} #{seq}; the client is at {step.name} #{seq}")
            )
        try:
            message = decode_message(frame.body, step.request_types(), lambda: f"request of {step.name} #{seq}")
        except ProtocolDesync as exc:
            return self._error_now(exc)
        data: list[Any] = [REQUEST, frame.body]
        if not self.run:
            self.run = frame.run
            data.append(frame.run)
        self._sink([IN, seq, step.name, data])
        self.bytes += _data(frame.body)
        self.messages += 1
        return Ready(message)

    def _on_abort(self, frame: Frame) -> None:
        waiting = self.waiting
        if self.outcome is not None:
            if self.outcome.outcome == "aborted" and self._abort_frame is not None:
                self.outbox.append(self._abort_frame)  # our acknowledgement, again
            return
        reason, where = _abort_fields(frame.body)
        if waiting is not None and waiting.need is Need.ABORT:
            self._retx_at = self._resend = self._abort_deadline = None
            self._sink([IN, self.seq, "abort", [ABORT_KIND, frame.body]])
            self._resume(None)
            return
        if self._peer_aborted:
            return  # a repeat
        self._peer_aborted = True
        error = PeerAborted(reason, step=self.where(), peer_step=where)
        data = [ABORT_KIND, frame.body]
        if waiting is not None and waiting.need in (Need.ANSWER, Need.REQUEST):
            self._sink([IN, self.seq, self.step_name, data])
            self._retx_at = self._resend = None
            self._throw(error)
        else:
            self._pending = (error, data)

    # --- time, fences, the link --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None: nothing until a frame comes)."""
        waiting = self.waiting
        if waiting is None or self.outcome is not None:
            return None
        deadline = self._retx_at
        need = waiting.need
        if need is Need.ANSWER or (need is Need.REQUEST and self.heard_at is not None):
            heard = self.heard_at
            began = self._step_began
            step_deadline = (began if heard is None or heard < began else heard) + self._timeout
            if deadline is None or step_deadline < deadline:
                deadline = step_deadline
        abort = self._abort_deadline
        if abort is not None and (deadline is None or abort < deadline):
            deadline = abort
        return deadline

    def _step_deadline(self) -> float | None:
        waiting = self.waiting
        if waiting is None or waiting.need not in (Need.ANSWER, Need.REQUEST):
            return None
        if waiting.need is Need.REQUEST and self.heard_at is None:
            return None  # a client waits for its host to turn up as long as it takes
        return max(self._step_began, self.heard_at or 0.0) + self._timeout

    def tick(self, now: float) -> None:
        self.now = now
        waiting = self.waiting
        if self.outcome is not None or waiting is None:
            return
        deadline = self._step_deadline()
        if deadline is not None and now >= deadline:
            heard = "nothing heard" if self.heard_at is None else f"last heard {now - self.heard_at:.3g} s ago"
            self._fail_step(StepTimeout(f"nothing from the peer in time, waiting for {waiting.need.value} ({heard})"))
            return
        if waiting.need is Need.ABORT and self._abort_deadline is not None and now >= self._abort_deadline:
            self._retx_at = self._resend = self._abort_deadline = None
            self._resume(None)  # the peer is silent: the abort ends here, alone
            return
        if self._retx_at is not None and now >= self._retx_at and self._resend is not None:
            self.outbox.append(self._resend)
            self.retransmissions += 1
            self._retried = True
            self._rto = min(self._rto * 2, self.timing.rto_max)
            self._retx_at = now + self._rto

    def fenced(self, now: float) -> None:
        """The fence the coroutine waits on was taken (resources and record are durable)."""
        self.now = now
        waiting = self.waiting
        if waiting is None or waiting.need is not Need.FENCE:
            return
        self._resume(None)

    def link_up(self, now: float) -> None:
        """The link came (back) up: what the host waits on an answer for goes again at once."""
        self.now = now
        if self._resend is not None and self.waiting is not None and self.outcome is None:
            self.outbox.append(self._resend)
            self._retx_at = now + self._rto

    def hold_frame(self) -> bytes:
        """A frame saying "paused, keep waiting" (it resets the peer's step timeout)."""
        return self._frame(HOLD, self.seq, [])

    def abort_frame(self, reason: str) -> bytes:
        """An abort to send when the run is killed from outside (not a step of the protocol)."""
        return self._frame(ABORT_KIND, self.seq, encode_message(Abort(reason, self.where())))

    # --- helpers -----------------------------------------------------------------------------

    def where(self) -> str:
        return f"{self.step_name} #{self.seq}" if self.step_name else ""

    def peer_where(self) -> str:
        name, seq = self.peer
        return f"{name} #{seq}" if name else ""

    def _check(self, step: Step[Any, Any], message: Any, allowed: tuple[type[Message], ...], what: str) -> None:
        if step is not self.step:
            current = self.step.name if self.step is not None else "no step"
            raise SpecificationError(
                f"{self.protocol} {self.side}",
                f"{what}({step.name or '?'}) inside {current}: a role acts in its own step",
            )
        if message is not None and type(message) not in allowed:
            names = " or ".join(message_info(c).tag for c in allowed)
            raise SpecificationError(
                f"{self.protocol} {self.side}", f"{step.name} {what}s {names}, not {type(message).__name__}"
            )

    def _frame(self, kind: int, seq: int, body: Any, *, run: str | None = None) -> bytes:
        return encode_frame(
            kind, self.protocol, self.version, self.run if run is None else run, seq, self.step_name, body
        )

    def _wait(self, need: Need) -> Wait:
        wait = Wait(need)
        self.waiting = wait
        return wait

    def _wait_on_peer(self, need: Need) -> Wait | Raise:
        """Wait for the peer, unless an error found meanwhile is to be raised here instead."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            error, data = pending
            if data is None:
                return self._error_now(error)
            self._sink([IN, self.seq, self.step_name, data])
            return Raise(self._placed(error))
        wait = self.waiting = Wait(need)
        return wait

    def _send_request(self, frame: bytes) -> None:
        self.outbox.append(frame)
        self._resend = frame
        self._sent_at = self.now
        self._retried = False
        self._retx_at = self.now + self._rto

    def _sample_rtt(self, rtt: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = rtt, rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        self._rto = min(max(self._srtt + 4 * self._rttvar, self.timing.rto_min), self.timing.rto_max)

    def _error_now(self, error: StepFailed) -> Raise:
        error = self._placed(error)
        self._sink([RAISE, self.seq, self.step_name, [type(error).__name__, error.reason, error.step, error.peer_step]])
        return Raise(error)

    def _placed(self, error: StepFailed) -> StepFailed:
        if error.step:
            return error
        return type(error)(error.reason, step=self.where(), peer_step=self.peer_where())

    def _fail_step(self, error: StepFailed) -> None:
        """An error the driver found at the current step: raised into the protocol there
        (recorded, so that replay raises it at the same place)."""
        waiting = self.waiting
        if self.outcome is not None:
            return
        if waiting is not None and waiting.need in (Need.ANSWER, Need.REQUEST, Need.ABORT):
            self._retx_at = self._resend = self._abort_deadline = None
            self._throw(self._error_now(error).error)
        elif self._pending is None:
            self._pending = (error, None)

    def _raise_interrupted(self) -> Raise:
        return self._error_now(
            StepInterrupted(f"a crash interrupted {self.step_name} #{self.seq}, which happens once, after it began")
        )

    # --- replay ------------------------------------------------------------------------------

    def _take(self, kind: str, seq: int) -> list[Any] | Raise | None:
        """The next record, which must be ``kind`` at ``seq``, or the error raised there (None:
        the record is exhausted)."""
        if not self.replaying:
            return None
        record = self._replay[self._pos]
        if record[0] == RAISE and record[1] == seq:
            self._advance_replay()
            return _raised(record[3])
        if record[0] != kind or record[1] != seq:
            raise self._diverged(
                f"{self.step_name} #{self.seq} expects {kind} #{seq}; "
                f"the record has {record[0]} #{record[1]} ({record[2]})"
            )
        self._advance_replay()
        return record

    def _take_optional(self, kind: str, seq: int) -> list[Any] | None:
        """The next record if it is ``kind`` at ``seq``."""
        if not self.replaying:
            return None
        record = self._replay[self._pos]
        if record[0] != kind or record[1] != seq:
            return None
        self._advance_replay()
        return record

    def _advance_replay(self) -> None:
        self._pos += 1
        while self._pos < len(self._replay) and self._replay[self._pos][0] == END:
            self._pos += 1  # the run's end is replayed by the coroutine's own return
            self._replayed_end = True
        if self._pos >= len(self._replay):
            self.replaying = False

    def _replayed_reply(self, seq: int, allowed: Mapping[str, Any]) -> Ready | Raise | None:
        """What the peer's side of step ``seq`` was, from the record (None: exhausted there)."""
        if not self.replaying:
            return None
        record = self._replay[self._pos]
        if record[1] != seq or record[0] not in (IN, RAISE):
            raise self._diverged(
                f"{self.step_name} #{seq} awaits the peer; the record has {record[0]} #{record[1]} ({record[2]})"
            )
        self._advance_replay()
        data = record[3]
        if record[0] == RAISE:
            return _raised(data)
        kind, body = data[0], data[1]
        if len(data) > 2 and not self.run:
            self.run = str(data[2])
        self.messages += 1
        if kind == ABORT_KIND:
            reason, where = _abort_fields(body)
            self._peer_aborted = True
            return Raise(PeerAborted(reason, step=self.where(), peer_step=where))
        message = decode_message(body, allowed, lambda: f"recorded {record[2]} #{seq}")
        self.bytes += _data(body)
        return Ready(message)

    def _diverged(self, problem: str) -> ReplayDiverged:
        return ReplayDiverged("record", f"replay diverged at record {self._pos}: {problem}")

    # --- the end -----------------------------------------------------------------------------

    def _finished(self) -> None:
        terminal = self.step_name
        if terminal == "abort":
            self._end("aborted", terminal, self._abort_reason())
        else:
            self._end("done", terminal, "")

    def _failed(self, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}"
        if self._abort_frame is None:
            # The protocol did not take its abort path: tell the peer anyway, so it does not
            # wait for a timeout to find out.
            self._abort_frame = self.abort_frame(reason)
            self.outbox.append(self._abort_frame)
        self._end("failed", self.step_name, reason)

    def _abort_reason(self) -> str:
        frame = self._abort_frame
        if frame is None:
            return ""
        from ._wire import decode_frame

        reason, _ = _abort_fields(decode_frame(frame).body)
        return reason

    def _end(self, outcome: str, terminal: str, reason: str) -> None:
        self.outcome = Outcome(outcome, terminal, reason)
        self.ended_at = self.now
        self.waiting = None
        self._retx_at = self._resend = self._abort_deadline = None
        if not self._replayed_end:
            self._sink([END, self.seq, terminal, [outcome, reason]])
        self.linger_until = self.now + self.timing.linger_seconds
        self.replaying = False

    def statistics(self) -> dict[str, Any]:
        """Where the run stands, as the role's process shows it."""
        return {
            "step": self.step_name,
            "seq": self.seq,
            "index": self.counts.get(self.step_name, 0),
            "steps": self.steps_done,
            "bytes": self.bytes,
            "messages": self.messages,
            "peer_step": self.peer_where(),
            "retransmissions": self.retransmissions,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rewinds": self.rewinds,
            "holds_heard": self.holds,
            # From this side's first step to its end (or to now): how long the run took here.
            "run_seconds": (
                round((self.ended_at if self.ended_at is not None else self.now) - self.first_step_at, 6)
                if self.first_step_at is not None
                else 0.0
            ),
        }

    def __repr__(self) -> str:
        state = (
            f"ended {self.outcome.outcome} at {self.outcome.terminal}"
            if self.outcome
            else f"waiting for {self.waiting.need.value}"
            if self.waiting
            else "running"
        )
        mode = " replaying" if self.replaying else ""
        return (
            f"<RoleDriver {self.protocol}@{self.version} {self.side}{mode} at {self.where() or 'start'}: {state}, "
            f"{self.steps_done} steps, {self.bytes} bytes, {self.retransmissions} retransmitted>"
        )


def _data(body: list[Any]) -> int:
    """The data a message body carries: the length of its bytes fields (what "bytes moved" counts)."""
    total = 0
    for value in body:
        if type(value) is bytes:
            total += len(value)
    return total


def _raised(data: Any) -> Raise:
    """A recorded error, to raise again where it was raised."""
    cls = _ERRORS.get(str(data[0]), StepFailed)
    return Raise(cls(str(data[1]), step=str(data[2]), peer_step=str(data[3])))


def _abort_fields(body: Any) -> tuple[str, str]:
    if isinstance(body, list) and len(body) == 3 and body[0] == "Abort":
        return str(body[1]), str(body[2])
    return "the peer aborted", ""
