"""The fake API server's storage, with Kubernetes' semantics for what clients see of it.

* Every write takes the next **resourceVersion** (one counter for all objects, as etcd's
  revision) and is kept in a history, so a watch may start from any version still in it.
* **Compaction** drops the history up to now: a watch from an older version then gets an
  ``ERROR`` event with a ``410 Gone`` Status ("too old resource version"), and the client must
  list again, as with a real API server.
* **Label selectors** (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) filter lists
  and watches; an object that stops (starts) matching a watch's selector is sent to it as
  ``DELETED`` (``ADDED``), as the API server's watch cache does.
* Objects are never changed in place: an update stores a new dict, so the history can hold
  references.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Object = dict[str, Any]
Key = tuple[str, str, str]  # (resource, namespace, name); namespace "" for cluster-scoped

HISTORY_LIMIT = 500_000  # events kept before the oldest half is compacted away on its own


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # "!=" and "notin": also true when absent


_SET = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """A label selector as the API server parses it (the forms clients send)."""
    requirements: list[Requirement] = []
    for part in _split_selector(text):
        found = _SET.match(part)
        if found:
            values = frozenset(v.strip() for v in found.group(3).split(",") if v.strip())
            requirements.append(Requirement(found.group(1), found.group(2), values))
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, value = (s.strip() for s in part.split(op, 1))
                if not key:
                    raise SelectorError(f"invalid label selector {text!r}")
                requirements.append(Requirement(key, "!=" if op == "!=" else "=", frozenset({value})))
                break
        else:
            key = part.strip()
            if key.startswith("!"):
                requirements.append(Requirement(key[1:].strip(), "!exists"))
            elif key:
                requirements.append(Requirement(key, "exists"))
    return tuple(requirements)


def _split_selector(text: str) -> Iterator[str]:
    depth, start = 0, 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            yield text[start:index]
            start = index + 1
    if text[start:].strip():
        yield text[start:]


def selects(requirements: tuple[Requirement, ...], obj: Object | None) -> bool:
    if obj is None:
        return False
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(r.matches(labels) for r in requirements)


def field_selects(selector: dict[str, str], obj: Object) -> bool:
    """The few field selectors the fake knows: metadata.name, metadata.namespace, status.phase."""
    for path, want in selector.items():
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value) if value is not None else "") != want:
            return False
    return True


@dataclass(slots=True)
class Event:
    rv: int
    resource: str
    namespace: str
    old: Object | None  # None: created
    new: Object | None  # None: deleted


@dataclass(slots=True, eq=False)
class Watcher:
    resource: str
    namespace: str | None  # None: every namespace
    selector: tuple[Requirement, ...]
    fields: dict[str, str]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)

    def wants(self, resource: str, namespace: str) -> bool:
        return resource == self.resource and (self.namespace is None or self.namespace == namespace)

    def event_for(self, event: Event) -> dict[str, Any] | None:
        """What this watcher is sent for ``event``, selector transitions included."""
        before = event.old is not None and self._matches(event.old)
        after = event.new is not None and self._matches(event.new)
        if after and not before:
            return {"type": "ADDED", "object": event.new}
        if after and before:
            return {"type": "MODIFIED", "object": event.new}
        if before and not after:
            gone = event.new if event.new is not None else event.old
            assert gone is not None
            if event.new is None:
                gone = _with_version(gone, event.rv)
            return {"type": "DELETED", "object": gone}
        return None

    def _matches(self, obj: Object) -> bool:
        return selects(self.selector, obj) and field_selects(self.fields, obj)


def _with_version(obj: Object, rv: int) -> Object:
    copied = dict(obj)
    copied["metadata"] = {**obj.get("metadata", {}), "resourceVersion": str(rv)}
    return copied


class Conflict(Exception):
    pass


class NotFound(Exception):
    pass


class Store:
    """Objects by (resource, namespace, name), their history and the open watches."""

    def __init__(self) -> None:
        self.rv = 1
        self.compacted = 0  # history holds the events with rv > compacted
        self.objects: dict[Key, Object] = {}
        self.history: list[Event] = []
        self.watchers: set[Watcher] = set()
        self.on_change: list[Callable[[Event], None]] = []

    # --- reading ------------------------------------------------------------------------

    def get(self, resource: str, namespace: str, name: str) -> Object | None:
        return self.objects.get((resource, namespace, name))

    def select(
        self,
        resource: str,
        namespace: str | None,
        selector: tuple[Requirement, ...] = (),
        fields: dict[str, str] | None = None,
    ) -> list[Object]:
        found = [
            obj
            for (kind, ns, _), obj in self.objects.items()
            if kind == resource and (namespace is None or ns == namespace) and selects(selector, obj)
            and field_selects(fields or {}, obj)
        ]  # fmt: skip
        return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    # --- writing ------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, obj: Object) -> Object:
        name = obj["metadata"]["name"]
        key = (resource, namespace, name)
        if key in self.objects:
            raise Conflict(name)
        stored = copy.deepcopy(obj)
        meta = stored["metadata"]
        if namespace:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.setdefault("labels", {})
        return self._write(key, None, stored)

    def update(self, resource: str, namespace: str, name: str, change: Callable[[Object], None]) -> Object:
        """Apply ``change`` to a copy of the object and store it under a new version."""
        key = (resource, namespace, name)
        old = self.objects.get(key)
        if old is None:
            raise NotFound(name)
        new = copy.deepcopy(old)
        change(new)
        return self._write(key, old, new)

    def delete(self, resource: str, namespace: str, name: str) -> Object:
        key = (resource, namespace, name)
        old = self.objects.pop(key, None)
        if old is None:
            raise NotFound(name)
        self.rv += 1
        self._record(Event(self.rv, resource, namespace, old, None))
        return _with_version(old, self.rv)

    def _write(self, key: Key, old: Object | None, new: Object) -> Object:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[key] = new
        self._record(Event(self.rv, key[0], key[1], old, new))
        return new

    def _record(self, event: Event) -> None:
        self.history.append(event)
        if len(self.history) > HISTORY_LIMIT:
            cut = len(self.history) // 2
            self.compacted = self.history[cut - 1].rv
            del self.history[:cut]
        for watcher in list(self.watchers):
            if watcher.wants(event.resource, event.namespace):
                sent = watcher.event_for(event)
                if sent is not None:
                    watcher.queue.put_nowait(sent)
        for callback in self.on_change:
            callback(event)

    # --- watching -----------------------------------------------------------------------

    def compact(self) -> int:
        """Forget the history up to now (etcd compaction); returns the compacted version."""
        self.compacted = self.rv
        self.history.clear()
        return self.compacted

    def watch(
        self,
        resource: str,
        namespace: str | None,
        selector: tuple[Requirement, ...],
        fields: dict[str, str],
        since: int | None,
    ) -> tuple[Watcher, list[dict[str, Any]]] | None:
        """A new watcher and the events it is owed first: synthetic ADDED events for what exists
        (``since`` None), or the history after ``since``. None: ``since`` was compacted away."""
        watcher = Watcher(resource, namespace, selector, fields)
        if since is None:
            backlog = [{"type": "ADDED", "object": o} for o in self.select(resource, namespace, selector, fields)]
        else:
            if since < self.compacted:
                return None
            backlog = []
            for event in self.history:
                if event.rv > since and watcher.wants(event.resource, event.namespace):
                    sent = watcher.event_for(event)
                    if sent is not None:
                        backlog.append(sent)
        self.watchers.add(watcher)
        return watcher, backlog

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    def __repr__(self) -> str:
        return (
            f"<Store rv={self.rv} objects={len(self.objects)} history={len(self.history)} "
            f"compacted={self.compacted} watchers={len(self.watchers)}>"
        )
