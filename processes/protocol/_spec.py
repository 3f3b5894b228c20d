"""A protocol's specification: its messages, its joint steps, the party both roles share, the two
roles, and the one async function that is the protocol.

The protocol is written once, as ``async def protocol(p: Party) -> None``: it calls the party's
async methods, which are the **joint steps** (each one is taken by both sides together: the host
asks and awaits the answer, the client awaits the question and answers), and its plain methods,
the **decisions** both sides compute alike from what they both know. The host and client role
classes implement each joint step their own way; the driver (``_driver``) runs the same function
over either role, checks that both sides stay in the same step, and records the run.

A step is declared once, with what it carries, as a typed :class:`Step`::

    ERASE = Step(Erase, Erased, resume=Resume.RESTART)

so that mypy checks what each role sends and receives (``self.ask(ERASE, Erase(...))`` returns an
``Erased``); what the type system cannot see (the step being the current one, a message from
the wire) is checked at run time.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import operator
import types
import typing
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar, overload

from supervisor import SettingsError

from .errors import ProtocolDesync, SpecificationError, StepRefused, UnknownProtocol

if TYPE_CHECKING:
    from typing import Self

    from ._driver import RoleDriver

Req = TypeVar("Req")
Ans = TypeVar("Ans")
R = TypeVar("R")
P = ParamSpec("P")
PartyT = TypeVar("PartyT", bound="Party")

ENTRY_POINT_GROUP = "statevisor.protocols"
"""Installed packages register their protocols as entry points of this group (a
:class:`Specification` object each)."""


# --- messages --------------------------------------------------------------------------------


class Message:
    """A protocol message: subclass it as a frozen dataclass whose fields are msgpack values
    (int, float, str, bytes, bool, None, lists and maps of them). On the wire a message is its
    class name and its fields in order; fields coming from the wire are checked against their
    annotations (the basic types, lists, maps, unions with None)."""

    __slots__ = ()

    @classmethod
    def tag(cls) -> str:
        return cls.__name__


_Check = Callable[[Any], bool]


def _checker(annotation: Any) -> type | _Check | None:
    """A run-time check for a field's annotation: a type the value must be exactly (msgpack
    gives exact types), a predicate, or None (anything goes)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        checks = [_checker(a) for a in typing.get_args(annotation)]
        if any(c is None for c in checks):
            return None
        return lambda v: any((type(v) is c) if isinstance(c, type) else c(v) for c in checks if c is not None)
    if annotation is type(None) or annotation is None:
        return type(None)
    if annotation in (bool, int, str, bytes):
        return annotation  # type: ignore[no-any-return]
    if annotation is float:
        return lambda v: type(v) is float or type(v) is int
    if annotation is list or origin is list:
        return list
    if annotation is dict or origin is dict:
        return dict
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class MessageInfo:
    """What encoding and decoding a message class needs, worked out once per class: its tag,
    its fields' names, a getter of their values, the checks of the fields that have one, and
    which fields are bytes (the data a message moves)."""

    cls: type[Message]
    tag: str
    names: tuple[str, ...]
    values: Callable[[Message], tuple[Any, ...]]
    checks: tuple[tuple[int, type | _Check], ...]
    data: tuple[int, ...]


_INFO: dict[type[Message], MessageInfo] = {}


def message_info(cls: type[Message]) -> MessageInfo:
    info = _INFO.get(cls)
    if info is not None:
        return info
    if not (isinstance(cls, type) and issubclass(cls, Message)) or not dataclasses.is_dataclass(cls):
        raise SpecificationError(
            getattr(cls, "__qualname__", repr(cls)), "a message is a dataclass derived from Message"
        )
    hints = typing.get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    checks = tuple((i, c) for i, n in enumerate(names) if (c := _checker(hints.get(n, Any))) is not None)
    data = tuple(i for i, n in enumerate(names) if hints.get(n) is bytes)
    values: Callable[[Message], tuple[Any, ...]]
    if len(names) >= 2:
        values = operator.attrgetter(*names)
    elif names:
        only = names[0]
        values = lambda message: (getattr(message, only),)  # noqa: E731 - one field: attrgetter gives no tuple
    else:
        values = lambda message: ()  # noqa: E731
    info = _INFO[cls] = MessageInfo(cls, cls.tag(), names, values, checks, data)
    return info


def encode_message(message: Message) -> list[Any]:
    """``[tag, field, field...]``: what a frame's body carries."""
    info = _INFO.get(type(message)) or message_info(type(message))
    return [info.tag, *info.values(message)]


def decode_message(body: Any, allowed: Mapping[str, MessageInfo], where: Callable[[], str]) -> Message:
    """A message from a frame's body, of one of the ``allowed`` classes (by tag), fields checked;
    ``where()`` says where, for the error (made only when there is one)."""
    info = allowed.get(body[0]) if type(body) is list and body and type(body[0]) is str else None
    if info is None:
        if not isinstance(body, list) or not body or not isinstance(body[0], str):
            raise ProtocolDesync(f"{where()}: a message that is not [tag, fields...]: {body!r:.80}")
        raise ProtocolDesync(f"{where()}: a {body[0]} message, where the step declares {' or '.join(allowed)}")
    if len(body) != len(info.names) + 1:
        raise ProtocolDesync(f"{where()}: {info.tag} has {len(info.names)} fields, the frame {len(body) - 1}")
    for index, check in info.checks:
        value = body[index + 1]
        if type(value) is not check and (isinstance(check, type) or not check(value)):
            raise ProtocolDesync(f"{where()}: {info.tag}.{info.names[index]} = {value!r:.40} has the wrong type")
    return info.cls(*body[1:])


def message_bytes(message: Message) -> int:
    """The data a message carries: the length of its ``bytes`` fields (what "bytes moved" counts)."""
    info = _INFO.get(type(message)) or message_info(type(message))
    total = 0
    for index in info.data:
        total += len(getattr(message, info.names[index]))
    return total


# --- steps -----------------------------------------------------------------------------------


class Resume(StrEnum):
    """What a crash in the middle of a step may do to it (declared per step)."""

    REPEAT = "repeat"
    """Idempotent: after a crash the step may be taken again (writing a chunk again)."""
    RESTART = "restart"
    """Taken again if a crash interrupted it before it completed, never once it completed: the
    answering side makes its record durable before its answer leaves (erasing a sector again is
    harmless before any chunk was written into it, and ruinous after)."""
    ONCE = "once"
    """Never taken twice: the record is durable before the step's first effect and before its
    answer leaves; a crash in between leaves the outcome unknown, so on resume the role raises
    :class:`StepInterrupted` there and the protocol takes its abort path (a boot)."""


class Step(Generic[Req, Ans]):
    """A joint step's declaration: what the host sends (``sends``), what the client may answer
    (``answers``), how a crash may resume it, and its timeout (None: the role's ``step_timeout``).

    Used as a decorator on the party's async method of the step, which names it::

        WRITE = Step(Chunk, Written)

        class Bootloader(Party, protocol="bootloader", version=2):
            @WRITE
            async def write_next_chunk(self) -> int: ...
    """

    __slots__ = ("_answers", "_sends", "answers", "name", "resume", "sends", "timeout")

    @overload
    def __init__(
        self: Step[Req, Ans],
        sends: type[Req],
        answers: type[Ans],
        *,
        resume: Resume = Resume.REPEAT,
        timeout: float | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        sends: type[Req] | tuple[type[Message], ...],
        answers: tuple[type[Message], ...],
        *,
        resume: Resume = Resume.REPEAT,
        timeout: float | None = None,
    ) -> None: ...

    def __init__(
        self,
        sends: Any,
        answers: Any,
        *,
        resume: Resume = Resume.REPEAT,
        timeout: float | None = None,
    ) -> None:
        self.name = ""
        self.sends: tuple[type[Message], ...] = tuple(sends) if isinstance(sends, tuple) else (sends,)
        self.answers: tuple[type[Message], ...] = tuple(answers) if isinstance(answers, tuple) else (answers,)
        if not self.sends or not self.answers:
            raise SpecificationError("Step", "a step sends one message type or more and answers one or more")
        self._sends = {message_info(c).tag: message_info(c) for c in self.sends}
        self._answers = {message_info(c).tag: message_info(c) for c in self.answers}
        self.resume = Resume(resume)
        if timeout is not None and not timeout > 0:
            raise SpecificationError("Step", f"timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout

    def __call__(self, method: Callable[P, R]) -> Callable[P, R]:
        name = getattr(method, "__name__", "")
        if self.name and self.name != name:
            raise SpecificationError(name, f"this step is already the party's {self.name!r}")
        self.name = name
        method.__protocol_step__ = self  # type: ignore[attr-defined]
        return method

    def request_types(self) -> Mapping[str, MessageInfo]:
        return self._sends

    def answer_types(self) -> Mapping[str, MessageInfo]:
        return self._answers

    def describe(self, side: str) -> str:
        """What ``side`` does in this step, for diagrams: ``sends Erase, awaits Erased``."""
        sends = " | ".join(c.tag() for c in self.sends)
        answers = " | ".join(c.tag() for c in self.answers)
        if side == "host":
            return f"sends {sends}, awaits {answers}"
        return f"awaits {sends}, answers {answers}"

    def __repr__(self) -> str:
        sends = "|".join(c.tag() for c in self.sends)
        answers = "|".join(c.tag() for c in self.answers)
        return f"<Step {self.name or '?'} {sends} -> {answers} resume={self.resume}>"


@dataclasses.dataclass(frozen=True, slots=True)
class Abort(Message):
    """Either side's abort: the reason, and the step it was in (``name #seq``)."""

    reason: str
    step: str


ABORT: Step[Abort, Abort] = Step(Abort, Abort, resume=Resume.REPEAT)
ABORT.name = "abort"


def _joint(step: Step[Any, Any], implementation: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Any]:
    """A role's implementation of ``step``, taken as a joint step: numbered, phase-locked and
    recorded by the driver around the role's own code."""

    async def joint(self: Party, *args: Any, **kwargs: Any) -> Any:
        driver = self._driver
        driver.begin(step)
        result = await implementation(self, *args, **kwargs)
        end = driver.end(step)
        if end is not None:
            await end
        return result

    joint.__name__ = implementation.__name__
    joint.__qualname__ = implementation.__qualname__
    joint.__doc__ = implementation.__doc__
    joint.__protocol_step__ = step  # type: ignore[attr-defined]
    joint.__wrapped__ = implementation  # type: ignore[attr-defined]
    return joint


# --- the party and its two roles ---------------------------------------------------------------


class Party:
    """What both sides of a protocol share: its joint steps (async methods declared with a
    :class:`Step`), its decisions (plain methods), and the state both compute alike.

    Declare the protocol's name and version as class keywords::

        class Bootloader(Party, protocol="bootloader", version=2): ...

    ``abort(reason)`` is every protocol's abort step: either side may take it first; the other
    side's current step then raises :class:`PeerAborted`, and its protocol function takes the
    abort path too, so both end in ``abort``.
    """

    protocol: ClassVar[str] = ""
    version: ClassVar[int] = 0
    steps: ClassVar[Mapping[str, Step[Any, Any]]] = {}
    party: ClassVar[type[Party] | None] = None
    _driver: RoleDriver

    def __init_subclass__(cls, *, protocol: str | None = None, version: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if protocol is not None:
            if not protocol or not protocol.replace("-", "").replace("_", "").isalnum():
                raise SpecificationError(cls.__qualname__, f"protocol name {protocol!r}: letters, digits, - and _")
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise SpecificationError(cls.__qualname__, f"version must be a whole number >= 1, got {version!r}")
            cls.protocol, cls.version, cls.party = protocol, version, cls
        elif version is not None:
            raise SpecificationError(cls.__qualname__, "version= goes with protocol=")
        steps: dict[str, Step[Any, Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                step = getattr(value, "__protocol_step__", None)
                if isinstance(step, Step):
                    steps[name] = step
        cls.steps = steps
        for name, value in list(vars(cls).items()):
            if name in steps and name != "abort" and callable(value) and not hasattr(value, "__protocol_step__"):
                if not inspect.iscoroutinefunction(value):
                    raise SpecificationError(f"{cls.__qualname__}.{name}", "a joint step is an async method")
                setattr(cls, name, _joint(steps[name], value))

    @ABORT
    async def abort(self, reason: str) -> None:
        """The abort step: tell the peer why (or acknowledge its abort) and end the run."""
        await self._driver.abort(reason)

    @property
    def side(self) -> str:
        return "party"

    # --- what role code raises ---------------------------------------------------------------

    def refused(self, reason: str) -> StepRefused:
        """The error a role raises when the step's answer said no (both sides raise it, so both
        protocol functions take the abort path)."""
        return StepRefused(reason, step=self._driver.where(), peer_step=self._driver.peer_where())

    def desync(self, why: str) -> ProtocolDesync:
        """The error a role raises when the peer's message does not fit this step (an erase of
        another sector than the one both sides computed)."""
        return ProtocolDesync(why, step=self._driver.where(), peer_step=self._driver.peer_where())


class Role(Party):
    """A side of a protocol: the host or the client implementation of its party.

    A role the daemon runs is built from its process's ``options`` by :meth:`open` (checked
    first by :meth:`check_options`; the option keys in ``local_options`` are file paths,
    relative to the configuration file). :meth:`sync` makes the role's own resources durable
    (it runs at each fence, before the record is), :meth:`close` releases them.
    """

    side_name: ClassVar[str] = ""
    local_options: ClassVar[tuple[str, ...]] = ()

    @property
    def side(self) -> str:
        return self.side_name

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise :class:`~supervisor.SettingsError` (``options.KEY``) for options this role cannot take."""
        if options:
            raise SettingsError("options", f"{cls.__qualname__} takes no options; got {sorted(options)}")

    @classmethod
    def open(cls, options: Mapping[str, Any]) -> Self:
        """The role, built from its process's (checked) options. May do I/O (read an image)."""
        return cls()

    def sync(self) -> None:
        """Make this role's own resources durable (a flash file): called at every fence, before
        the record is made durable, so the record never claims more than the resources hold."""

    def close(self) -> None:
        """Release what :meth:`open` took."""

    def effect(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        """Perform ``function(*args, **kwargs)``, a local effect (a flash write), and record its
        result; on replay the recorded result comes back and the function is not called again.
        A plain, quick function: anything slow belongs to a process of its own."""
        return self._driver.effect(function, args, kwargs)


class Host(Role):
    """The asking side: each joint step sends its request and awaits the answer."""

    side_name = "host"

    def ask(self, step: Step[Req, Ans], message: Req) -> Awaitable[Ans]:
        """Send ``message`` as ``step``'s request and await the client's answer (retransmitted
        until it comes or the step times out)."""
        return self._driver.ask(step, message)


class Client(Role):
    """The answering side: each joint step awaits the host's request and answers it."""

    side_name = "client"

    def receive(self, step: Step[Req, Ans]) -> Awaitable[Req]:
        """Await the host's request of ``step``."""
        return self._driver.receive(step)

    def answer(self, step: Step[Req, Ans], message: Ans) -> Awaitable[None]:
        """Answer ``step``'s request with ``message`` (sent again whenever the host repeats it)."""
        return self._driver.answer(step, message)


# --- the specification -----------------------------------------------------------------------


ProtocolFunction = Callable[[Any], Coroutine[Any, Any, None]]


class Specification(Generic[PartyT]):
    """A protocol as the kind runs it: the async function, and the host and client roles of
    its party. ``name`` and ``version`` come from the party."""

    def __init__(
        self, function: Callable[[PartyT], Coroutine[Any, Any, None]], *, host: type[Host], client: type[Client]
    ) -> None:
        if not inspect.iscoroutinefunction(function):
            raise SpecificationError(
                getattr(function, "__qualname__", repr(function)), "the protocol is an async function"
            )
        party = host.party if isinstance(host, type) and issubclass(host, Party) else None
        if party is None or not issubclass(host, Host) or not issubclass(client, Client):
            raise SpecificationError(
                host.__qualname__, "host derives from the party and Host, client from the party and Client"
            )
        if client.party is not party:
            raise SpecificationError(
                client.__qualname__, f"the client's party is {client.party!r}, the host's {party!r}"
            )
        assert party is not None
        for role in (host, client):
            for name in party.steps:
                implementation = getattr(role, name)
                if name != "abort" and not hasattr(implementation, "__wrapped__"):
                    raise SpecificationError(
                        f"{role.__qualname__}.{name}", "the role does not implement this joint step"
                    )
        self.function = function
        self.party = party
        self.name = party.protocol
        self.version = party.version
        self.steps: Mapping[str, Step[Any, Any]] = dict(party.steps)
        self.roles: dict[str, type[Role]] = {"host": host, "client": client}

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def role(self, side: str) -> type[Role]:
        try:
            return self.roles[side]
        except KeyError:
            raise SpecificationError(self.key, f"no role {side!r}; the roles are host and client") from None

    def __repr__(self) -> str:
        steps = ", ".join(self.steps)
        return f"<Specification {self.key} steps: {steps}>"


# --- the registry ----------------------------------------------------------------------------

_REGISTRY: dict[tuple[str, int], Specification[Any]] = {}
_loaded = False


def register(spec: Specification[Any]) -> Specification[Any]:
    """Make ``spec`` known by name and version (registering the same object again does nothing)."""
    known = _REGISTRY.get((spec.name, spec.version))
    if known is not None and known is not spec:
        raise SpecificationError(spec.key, "another specification is registered under this name and version")
    _REGISTRY[(spec.name, spec.version)] = spec
    return spec


def _load_entry_points() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        spec = entry.load()
        if not isinstance(spec, Specification):
            raise SpecificationError(f"entry point {entry.name}", f"{entry.value} is not a Specification")
        register(spec)


def lookup(name: str) -> Specification[Any]:
    """The specification ``name`` names: ``bootloader`` (its newest version) or ``bootloader@1``."""
    _load_entry_points()
    base, _, version = name.partition("@")
    if version:
        if not version.isdigit() or (base, int(version)) not in _REGISTRY:
            raise UnknownProtocol(name, f"no such protocol; registered: {', '.join(registered()) or 'none'}")
        return _REGISTRY[(base, int(version))]
    versions = [v for (n, v) in _REGISTRY if n == base]
    if not versions:
        raise UnknownProtocol(name, f"no such protocol; registered: {', '.join(registered()) or 'none'}")
    return _REGISTRY[(base, max(versions))]


def registered() -> list[str]:
    """Every registered protocol, as ``name@version``."""
    _load_entry_points()
    return sorted(f"{n}@{v}" for n, v in _REGISTRY)
