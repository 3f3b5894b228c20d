"""The checkpoint format: a process record as one msgpack array, with a format version.

Layout (format 2)::

    [2, pid, name, kind, version, phase, state, pending, timers, lifecycle, result, error,
     paused, meta, since, schema, next_events]

``state`` is the state map itself (inline, so a checkpoint costs one msgpack pass); ``pending``
is ``[[id, type, payload], ...]``; ``timers`` is ``[[name, deadline, payload], ...]``; ``paused``
is false, true (an operator's pause) or the reason the process paused itself (``ctx.pause``);
``since`` is when the process's lifecycle last began (wall clock), so a revived process does not
seem to have just started; ``schema`` is the version of the machine's state schema the state was
written under (``Machine.schema``); ``next_events`` are the internal events queued and not yet
handled (``ctx.next_event``). Format 1 records (the first 14 fields) still load: their
``since`` is unknown, their schema 1, and no internal event is queued. Decoding validates every field and raises
:class:`CorruptCheckpoint` naming what is wrong, so a bad record is quarantined rather than
half-loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import CorruptCheckpoint
from .actions import TrackedAction
from .lifecycle import Lifecycle
from .snapshot import ProcessRecord, TimerRecord
from .state import pack, unpack

FORMAT_VERSION = 2
_FIELDS = {1: 14, 2: 17}  # fields by format
_LIFECYCLES = {member.value: member for member in Lifecycle}  # Lifecycle(value) costs 1 µs a call


@dataclass(slots=True)
class Checkpoint:
    """An encoded record with the columns a store indexes. Treat as immutable (not frozen only
    because a frozen dataclass costs 4x as much to build, once per effectful transition)."""

    pid: str
    name: str
    kind: str
    lifecycle: Lifecycle
    version: int
    blob: bytes


def encode_fields(
    pid: str,
    name: str,
    kind: str,
    version: int,
    phase: str,
    state: Any,
    pending: list[list[Any]],
    timers: list[list[Any]],
    lifecycle: Lifecycle,
    result: Any,
    error: str | None,
    paused: bool | str,
    meta: dict[str, Any],
    since: float | None,
    schema: int,
    next_events: list[Any],
) -> Checkpoint:
    blob = pack(
        [
            FORMAT_VERSION,
            pid,
            name,
            kind,
            version,
            phase,
            state,
            pending,
            timers,
            str(lifecycle),
            result,
            error,
            paused,
            meta,
            since,
            schema,
            next_events,
        ]
    )
    return Checkpoint(pid, name, kind, lifecycle, version, blob)


def encode_record(record: ProcessRecord) -> Checkpoint:
    r = record
    return encode_fields(
        r.pid, r.name, r.kind, r.version, r.phase, r.state,
        [[a.id, a.type, a.payload] for a in r.pending], [[t.name, t.deadline, t.payload] for t in r.timers],
        r.lifecycle, r.result, r.error, r.pause_reason if r.paused and r.pause_reason else r.paused, r.meta,
        r.since, r.schema, list(r.next_events),
    )  # fmt: skip


def _expect(condition: bool, what: str, pid: str, path: str) -> None:
    if not condition:
        raise CorruptCheckpoint(path, pid, what)


def decode_record(blob: bytes, *, path: str = "?", pid: str = "?") -> ProcessRecord:
    """Decode and validate one record."""
    try:
        fields: Any = unpack(blob)
    except Exception as exc:
        raise CorruptCheckpoint(path, pid, f"not msgpack ({exc})") from None
    # Messages are formatted only for a record that fails its check: a start decodes one
    # record per live process.
    _expect(isinstance(fields, list) and len(fields) >= 1, "not a checkpoint record", pid, path)
    expected = _FIELDS.get(fields[0])
    if expected is None:
        raise CorruptCheckpoint(path, pid, f"unknown checkpoint format {fields[0]!r}")
    if len(fields) != expected:
        raise CorruptCheckpoint(path, pid, f"format {fields[0]} has {expected} fields, this record has {len(fields)}")
    (_, rpid, name, kind, version, phase, state, pending, timers, lifecycle, result, error, paused, meta) = fields[:14]
    since, schema, next_events = fields[14:] if expected == 17 else (None, 1, [])
    pid = rpid if isinstance(rpid, str) else pid
    _expect(isinstance(rpid, str) and bool(rpid), "pid is not a string", pid, path)
    _expect(isinstance(name, str) and isinstance(kind, str) and isinstance(phase, str), "name/kind/phase", pid, path)
    if not (isinstance(version, int) and version >= 0):
        raise CorruptCheckpoint(path, pid, f"version {version!r} is not a count")
    _expect(isinstance(state, dict), "state is not a map", pid, path)
    try:
        life = _LIFECYCLES.get(lifecycle) or Lifecycle(lifecycle)
        actions = tuple(TrackedAction(str(i), str(t), p, rpid) for i, t, p in pending)
        armed = tuple(TimerRecord(str(n), float(d), p) for n, d, p in timers)
    except (TypeError, ValueError) as exc:
        raise CorruptCheckpoint(path, pid, f"bad lifecycle, pending actions or timers ({exc})") from None
    _expect(isinstance(meta, dict), "meta is not a map", pid, path)
    if not isinstance(paused, bool | str):
        raise CorruptCheckpoint(path, pid, f"paused is {type(paused).__name__}, not a flag or a reason")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
        raise CorruptCheckpoint(path, pid, f"since is {type(since).__name__}, not a time")
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise CorruptCheckpoint(path, pid, f"schema {schema!r} is not a version >= 1")
    _expect(isinstance(next_events, list), "next_events is not a list", pid, path)
    return ProcessRecord(
        pid=rpid,
        name=name,
        kind=kind,
        version=version,
        phase=phase,
        state=state,
        pending=actions,
        timers=armed,
        lifecycle=life,
        result=result,
        error=error if isinstance(error, str) else None,
        paused=bool(paused),
        meta=meta,
        pause_reason=paused if isinstance(paused, str) else None,
        since=None if since is None else float(since),
        schema=schema,
        next_events=tuple(next_events),
    )
