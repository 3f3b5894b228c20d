"""What a user writes for a log-apply machine: an :class:`Applier`, and how entries are encoded.

``apply(state, entry)`` must be deterministic (the same entries in the same order give the same
state on every replica) and is made atomic by the runtime: it runs inside an
:class:`supervisor.AtomicValue` change, so an apply that raises leaves the state exactly as it
was, and that entry's result is an error on every replica alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar

from supervisor.lowlevel import pack, unpack

from .errors import EntryRejected


def encode_entry(entry: Any, where: str = "entry") -> bytes:
    """An entry as it goes on the log: bytes or any msgpack value, packed."""
    try:
        data = pack(entry)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EntryRejected(where, f"{type(entry).__name__} is neither bytes nor a msgpack value ({exc})") from None
    return data


def decode_entry(data: bytes) -> Any:
    return unpack(data)


def state_hash(state: Any) -> str:
    """A hash of the applied state: equal on replicas that applied the same entries."""
    return hashlib.sha256(pack(state)).hexdigest()


class Applier:
    """A deterministic state machine over log entries. Subclass it; name it with ``name``.

    * :meth:`initial_state`: the state before index 1 (a dict of msgpack values).
    * :meth:`apply`: change ``state`` in place for one committed entry; the return value is that
      entry's result (what ``propose`` returns). Read no clock, no randomness, no I/O.
    * :meth:`query`: answer a read from the applied state; must not change it.
    """

    name: ClassVar[str] = ""

    def initial_state(self) -> dict[str, Any]:
        return {}

    def apply(self, state: dict[Any, Any], entry: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement apply()")

    def query(self, state: dict[Any, Any], query: Any) -> Any:
        return state.get(query)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class KeyValue(Applier):
    """A key-value store: ``{"op": "set"|"add"|"del", "key": k, ...}``; results are the old value."""

    name = "kv"

    def apply(self, state: dict[Any, Any], entry: Any) -> Any:
        if not isinstance(entry, dict) or "key" not in entry:
            raise ValueError(f"a kv entry is a map with 'op' and 'key', not {entry!r:.80}")
        key, op = entry["key"], entry.get("op", "set")
        old = state.get(key)
        if op == "set":
            state[key] = entry.get("value")
        elif op == "add":
            if not isinstance(old, int | None) or not isinstance(entry.get("by", 1), int):
                raise TypeError(f"add needs integers: key {key!r} holds {old!r:.40}")
            state[key] = (old or 0) + entry.get("by", 1)
        elif op == "del":
            state.pop(key, None)
        else:
            raise ValueError(f"unknown kv op {op!r} (set, add, del)")
        return old


APPLIERS: dict[str, Callable[[], Applier]] = {KeyValue.name: KeyValue}
"""Appliers a daemon configuration can name (``app = "kv"``); :func:`register` adds yours."""


def register(applier: type[Applier]) -> type[Applier]:
    """Make ``applier`` nameable from the configuration (usable as a class decorator)."""
    if not applier.name:
        raise EntryRejected(applier.__name__, "an Applier needs a class attribute `name`")
    APPLIERS[applier.name] = applier
    return applier
