"""The checkpoint format: a process record as msgpack, with a format version.

Layout (format 1), one msgpack array::

    [1, pid, name, kind, version, phase, state(bin), pending, timers, lifecycle, result, error,
     paused, meta]

``pending`` is ``[[id, type, payload], ...]``; ``timers`` is ``[[name, deadline, payload], ...]``.
Decoding validates every field and raises :class:`CorruptCheckpoint` naming what is wrong, so a
bad record is quarantined rather than half-loaded.
"""

from __future__ import annotations

from typing import Any

from ._actions import TrackedAction
from ._exceptions import CorruptCheckpoint
from ._lifecycle import Lifecycle
from ._snapshot import ProcessRecord, TimerRecord
from ._state import pack, unpack

FORMAT_VERSION = 1


def encode_record(record: ProcessRecord) -> bytes:
    return pack(
        [
            FORMAT_VERSION,
            record.pid,
            record.name,
            record.kind,
            record.version,
            record.phase,
            record.state,
            [[a.id, a.type, a.payload] for a in record.pending],
            [[t.name, t.deadline, t.payload] for t in record.timers],
            str(record.lifecycle),
            record.result,
            record.error,
            record.paused,
            record.meta,
        ]
    )


def _expect(condition: bool, what: str, pid: str, path: str) -> None:
    if not condition:
        raise CorruptCheckpoint(path, pid, what)


def decode_record(blob: bytes, *, path: str = "?", pid: str = "?", check_state: bool = True) -> ProcessRecord:
    """Decode and validate one record; ``check_state`` also decodes the state itself."""
    try:
        fields: Any = unpack(blob)
    except Exception as exc:
        raise CorruptCheckpoint(path, pid, f"not msgpack ({exc})") from None
    _expect(isinstance(fields, list) and len(fields) >= 1, "not a checkpoint record", pid, path)
    _expect(fields[0] == FORMAT_VERSION, f"unknown checkpoint format {fields[0]!r}", pid, path)
    _expect(len(fields) == 14, f"format 1 has 14 fields, this record has {len(fields)}", pid, path)
    (_, rpid, name, kind, version, phase, state, pending, timers, lifecycle, result, error, paused, meta) = fields
    pid = rpid if isinstance(rpid, str) else pid
    _expect(isinstance(rpid, str) and bool(rpid), "pid is not a string", pid, path)
    _expect(isinstance(name, str) and isinstance(kind, str) and isinstance(phase, str), "name/kind/phase", pid, path)
    _expect(isinstance(version, int) and version >= 0, f"version {version!r} is not a count", pid, path)
    _expect(isinstance(state, bytes), "state is not bytes", pid, path)
    if check_state:
        try:
            decoded = unpack(state)
        except Exception as exc:
            raise CorruptCheckpoint(path, pid, f"state is not msgpack ({exc})") from None
        _expect(isinstance(decoded, dict), "state is not a map", pid, path)
    try:
        life = Lifecycle(lifecycle)
        actions = tuple(TrackedAction(str(i), str(t), p, rpid) for i, t, p in pending)
        armed = tuple(TimerRecord(str(n), float(d), p) for n, d, p in timers)
    except (TypeError, ValueError) as exc:
        raise CorruptCheckpoint(path, pid, f"bad lifecycle, pending actions or timers ({exc})") from None
    _expect(isinstance(meta, dict), "meta is not a map", pid, path)
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
    )
