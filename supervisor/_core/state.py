"""Process state as a tree of journaled containers.

Why: a transition must be atomic (if it raises, the state is exactly as before) and that must
stay cheap as states grow. Copying the state before every transition costs O(state size)
(about 2 ms for 10,000 entries). Instead every dict and list in a process's state is a
:class:`TrackedDict` / :class:`TrackedList` that records the old value in the process's
:class:`Journal` before each mutation. Rollback replays the journal backwards: its cost is
O(mutations made by the transition), independent of the state's size.

Deleting a key cannot be undone by re-inserting it (dict order, and so the checkpoint's bytes,
would change), so the first deletion from a dict in a transition saves the whole dict, like the
first change to a list does: O(len(container)) once per container per transition.

The journal entries are *swappable*: swapping an entry exchanges the container's current value
with the recorded one. Swapping all entries newest-first turns the post-transition state into
the pre-transition state; swapping them again oldest-first turns it back. That is how a
snapshot of the last committed state is taken while an async transition is suspended halfway.

State is a value tree: only msgpack types (None, bool, int in 64 bits, float, str, bytes,
list, dict with str/int/bytes keys) are accepted, and a container assigned into the tree is
copied in (never aliased), because after a checkpoint round-trip two aliases would be two
separate values anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, SupportsIndex

import msgpack  # type: ignore[import-untyped]

from .._errors import StateMutationError, StateTypeError

_MISSING: Any = object()
_SCALARS = frozenset({str, int, float, bool, type(None), bytes})
_KEYS = frozenset({str, int, bytes})
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


class Journal:
    """The undo log of one process's state; active only while a transition runs."""

    __slots__ = ("active", "entries", "saved")

    def __init__(self) -> None:
        self.active = False
        # Key entries are [dict, key, value]; whole-container entries are [container, saved-contents].
        self.entries: list[list[Any]] = []
        # Made on the first whole-container save: most states are dicts of scalars, which never
        # need one, and every process has a journal (one object fewer each for the collector).
        self.saved: set[int] | None = None

    def begin(self) -> None:
        self.active = True

    def commit(self) -> None:
        self.active = False
        self.entries.clear()
        if self.saved:
            self.saved.clear()

    def save_once(self, container: Any, copy: Callable[[Any], Any]) -> None:
        """Keep ``container``'s whole contents, once per transition, before it changes."""
        _check_active(self)
        marker = id(container)
        saved = self.saved
        if saved is None:
            saved = self.saved = set()
        if marker not in saved:
            saved.add(marker)
            self.entries.append([container, copy(container)])

    def rollback(self) -> None:
        self._swap(reversed(self.entries))
        self.commit()

    def swap_to_before(self) -> None:
        """Show the pre-transition state (undo everything, keeping what is needed to redo)."""
        self._swap(reversed(self.entries))

    def swap_to_after(self) -> None:
        """Undo :meth:`swap_to_before`."""
        self._swap(iter(self.entries))

    @staticmethod
    def _swap(entries: Iterable[list[Any]]) -> None:
        for entry in entries:
            container = entry[0]
            if len(entry) == 2:
                if isinstance(container, list):
                    current: Any = list.copy(container)
                    list.__setitem__(container, slice(None), entry[1])
                else:
                    current = dict.copy(container)
                    dict.clear(container)
                    dict.update(container, entry[1])
                entry[1] = current
            else:
                key = entry[1]
                current = dict.get(container, key, _MISSING)
                if entry[2] is _MISSING:
                    dict.__delitem__(container, key)
                else:
                    dict.__setitem__(container, key, entry[2])
                entry[2] = current

    def __repr__(self) -> str:
        return f"<Journal {'active' if self.active else 'idle'}, {len(self.entries)} entries>"


def _check_active(journal: Journal) -> None:
    if not journal.active:
        raise StateMutationError("process state can only be changed inside a transition")


def _format_path(path: list[Any]) -> str:
    return "".join(f"[{p!r}]" for p in path)


def adopt(value: Any, journal: Journal, path: list[Any] | None = None) -> Any:
    """Return ``value`` as a part of a state tree journaled by ``journal``.

    Scalars are returned as they are; dicts and lists (tracked or not) are copied into new
    tracked containers. Anything msgpack cannot carry exactly raises :class:`StateTypeError`
    naming where in the state it sits.
    """
    kind = type(value)
    if kind in _SCALARS:
        if kind is int and not _INT_MIN <= value <= _INT_MAX:
            raise StateTypeError(_format_path(path or []), f"integer {value} does not fit in 64 bits")
        return value
    if path is None:
        path = []
    if kind is dict or kind is TrackedDict:
        tracked = TrackedDict()
        tracked._journal = journal
        for key, item in dict.items(value):
            if type(key) not in _KEYS:
                raise StateTypeError(
                    _format_path(path),
                    f"key {key!r} is a {type(key).__name__}; keys must be str, int or bytes",
                )
            path.append(key)
            dict.__setitem__(tracked, key, adopt(item, journal, path))
            path.pop()
        return tracked
    if kind is list or kind is TrackedList:
        tracked_list = TrackedList()
        tracked_list._journal = journal
        for index, item in enumerate(value):
            path.append(index)
            list.append(tracked_list, adopt(item, journal, path))
            path.pop()
        return tracked_list
    hint = "; use a list" if kind in (tuple, set, frozenset) else ""
    base = next((b for b in kind.__mro__ if b in (dict, list, str, int, float, bytes)), None)
    if base is not None:
        # Subclasses (enums, named tuples of dict...) would come back as the plain base type.
        hint = f"; convert it to a plain {base.__name__}"
    raise StateTypeError(_format_path(path), f"{kind.__name__} is not a msgpack value{hint}")


class TrackedDict(dict[Any, Any]):
    """A dict in a process's state: records old values before every change."""

    __slots__ = ("_journal",)
    _journal: Journal

    def _record(self, key: Any) -> None:
        journal = self._journal
        _check_active(journal)
        # Each entry touches only its own container, so per container the entries must undo in
        # LIFO order; once a container is saved whole, that save covers every later change.
        if journal.saved and id(self) in journal.saved:
            return
        journal.entries.append([self, key, dict.get(self, key, _MISSING)])

    def _save(self) -> None:
        """Before a deletion: keep the whole dict once, so rollback restores its order."""
        self._journal.save_once(self, dict.copy)

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(key) not in _KEYS:
            raise StateTypeError(f"[{key!r}]", f"key is a {type(key).__name__}; keys must be str, int or bytes")
        value = adopt(value, self._journal, [key])
        self._record(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        self._save()
        dict.__delitem__(self, key)

    def pop(self, key: Any, *default: Any) -> Any:
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        self._save()
        return dict.pop(self, key)

    def popitem(self) -> tuple[Any, Any]:
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self))
        return key, self.pop(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def clear(self) -> None:
        self._save()
        dict.clear(self)

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def copy(self) -> dict[Any, Any]:
        """A plain, untracked deep copy (mutating it does not change the state)."""
        copied: dict[Any, Any] = unpack(pack(self))
        return copied

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


class TrackedList(list[Any]):
    """A list in a process's state: saves its contents once per transition before changing."""

    __slots__ = ("_journal",)
    _journal: Journal

    def _save(self) -> None:
        self._journal.save_once(self, list.copy)

    def _adopt_many(self, values: Iterable[Any]) -> list[Any]:
        return [adopt(v, self._journal, [i]) for i, v in enumerate(values)]

    def append(self, value: Any) -> None:
        value = adopt(value, self._journal, [len(self)])
        self._save()
        list.append(self, value)

    def extend(self, values: Iterable[Any]) -> None:
        adopted = self._adopt_many(values)
        self._save()
        list.extend(self, adopted)

    def insert(self, index: SupportsIndex, value: Any) -> None:
        value = adopt(value, self._journal, [index])
        self._save()
        list.insert(self, index, value)

    def pop(self, index: SupportsIndex = -1) -> Any:
        self._save()
        return list.pop(self, index)

    def remove(self, value: Any) -> None:
        self._save()
        list.remove(self, value)

    def clear(self) -> None:
        self._save()
        list.clear(self)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        self._save()
        list.sort(self, *args, **kwargs)

    def reverse(self) -> None:
        self._save()
        list.reverse(self)

    def __setitem__(self, index: Any, value: Any) -> None:
        value = self._adopt_many(value) if isinstance(index, slice) else adopt(value, self._journal, [index])
        self._save()
        list.__setitem__(self, index, value)

    def __delitem__(self, index: Any) -> None:
        self._save()
        list.__delitem__(self, index)

    def __iadd__(self, values: Iterable[Any]) -> TrackedList:  # type: ignore[misc]
        self.extend(values)
        return self

    def __imul__(self, count: SupportsIndex) -> TrackedList:
        self._save()
        list.__imul__(self, count)
        return self

    def copy(self) -> list[Any]:
        """A plain, untracked deep copy (mutating it does not change the state)."""
        copied: list[Any] = unpack(pack(self))
        return copied

    def __reduce__(self) -> Any:
        return (list, (list(self),))


def check_value(value: Any, root: str) -> None:
    """Raise :class:`StateTypeError` (naming ``root`` and the path) unless msgpack carries ``value`` exactly."""
    try:
        adopt(value, _INERT)
    except StateTypeError as exc:
        raise StateTypeError(exc.path, exc.problem, root=root) from None


_INERT = Journal()


def new_state(value: Mapping[str, Any], journal: Journal) -> TrackedDict:
    """Validate ``value`` and build the tracked tree of a new process's state."""
    if type(value) is not dict and type(value) is not TrackedDict:
        raise StateTypeError("", f"a process state must be a dict (a msgpack map), not {type(value).__name__}")
    tree = adopt(value, journal)
    assert isinstance(tree, TrackedDict)
    return tree


class _Packers(threading.local):
    # msgpack.packb builds a Packer per call, about 40% of packing a checkpoint; one kept per
    # thread (a Packer is not safe to share: its buffer is reset only when a pack ends).
    def __init__(self) -> None:
        self.packer = msgpack.Packer(use_bin_type=True)


_packers = _Packers()


def pack(value: Any) -> bytes:
    """Encode a state or message as msgpack (bytes stay bytes, str stays str)."""
    return _packers.packer.pack(value)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """Decode msgpack produced by :func:`pack` into plain Python values."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)
