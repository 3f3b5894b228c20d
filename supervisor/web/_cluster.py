"""What the console's cluster page shows: the members as this daemon sees them, and who owns what.

The console depends on a :class:`ClusterSource` (three callables), never on the cluster's
classes: the daemon builds one from its member and router. Decisions are plain synchronous
code here (a query, a page of rows, which owners a live update looks up again); the server
(:mod:`._console`) awaits the source and renders.

The list of the whole cluster's processes is gathered as ``statevisor ps`` gathers it (every
member asked for its own, the processes of a member that is down read from their records),
once per page load, then filtered, ordered and paged here: a page sends only its own rows. Its
live updates are cheap: the members' leases and counts come from this member's own view (no
request to anyone), and a row's owner is looked up again (one read of its record) only when the
members changed, while it is unreachable, or every few seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .._core.lifecycle import Lifecycle
from ._views import ListQuery, Order

OWNERS_EVERY = 5.0
"""Seconds between two look-ups of every shown row's owner while the members stay the same."""
STATUS_EVERY = 1.0
"""Seconds between two pushes of the members' leases and counts (a few hundred bytes each)."""
STATUS_LOOK = 0.25
"""Seconds between two looks at the member list: a member that joins or leaves is pushed at once."""


@dataclass(frozen=True, slots=True)
class ClusterSource:
    """What the console reads of the cluster this daemon belongs to.

    ``status()``: the cluster as this member sees it (``ClusterMember.status``: name, node,
    standing, lease, live members with their lease left, processes and incarnation, and the
    failover counts); ``placed(kind=, lifecycle=, paused=)``: every member's live processes as
    snapshot fields with ``owner`` and ``reachable`` (``Router.placed``); ``owner(pid)``: the
    ``(node, incarnation)`` its record names, or None (``ClusterStore.owner``).
    """

    status: Callable[[], Mapping[str, Any]]
    placed: Callable[..., Awaitable[list[dict[str, Any]]]]
    owner: Callable[[str], Awaitable[tuple[str, str] | None]]


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One live member as the page shows it."""

    name: str
    lease_left: float
    processes: int | None
    incarnation: str  # a token each start of a member draws ("": not known yet)
    here: bool  # this daemon


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """The cluster as this member sees it now (from ``ClusterSource.status``)."""

    name: str
    node: str
    standing: str
    lease: float
    members: list[MemberRow]
    failovers: int
    taken: int
    dropped: int
    fenced_writes: int
    departures: int

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> ClusterStatus:
        members = [
            MemberRow(
                name=str(name),
                lease_left=float(fields.get("lease_left") or 0.0),
                processes=_number(fields.get("processes")),
                incarnation=str(fields.get("incarnation") or ""),
                here=bool(fields.get("self")),
            )
            for name, fields in sorted((status.get("members") or {}).items())
        ]
        return cls(
            name=str(status.get("name", "")),
            node=str(status.get("node", "")),
            standing=str(status.get("standing", "")),
            lease=float(status.get("lease") or 0.0),
            members=members,
            failovers=int(status.get("failovers") or 0),
            taken=int(status.get("taken") or 0),
            dropped=int(status.get("dropped") or 0),
            fenced_writes=int(status.get("fenced_writes") or 0),
            departures=int(status.get("departures") or 0),
        )

    @property
    def live(self) -> frozenset[str]:
        return frozenset(member.name for member in self.members)


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True, slots=True)
class PlacedRow:
    """One process of the cluster with its owner (no state)."""

    pid: str
    name: str
    kind: str
    lifecycle: Lifecycle
    paused: bool
    phase: str
    since: float
    owner: str
    reachable: bool  # False: its owner is down (read from its record)

    @classmethod
    def of(cls, fields: Mapping[str, Any]) -> PlacedRow:
        return cls(
            pid=str(fields.get("pid", "")),
            name=str(fields.get("name") or fields.get("pid", "")),
            kind=str(fields.get("kind", "")),
            lifecycle=Lifecycle(fields.get("lifecycle", "running")),
            paused=bool(fields.get("paused")),
            phase=str(fields.get("phase", "")),
            since=float(fields.get("since") or 0.0),
            owner=str(fields.get("owner") or ""),
            reachable=bool(fields.get("reachable", True)),
        )


@dataclass(frozen=True, slots=True)
class ClusterQuery:
    """The cluster list's filters and page: the process list's (live processes only) and an owner."""

    list: ListQuery
    owner: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ClusterQuery:
        parsed = ListQuery.parse({key: value for key, value in query.items() if key != "show"})
        return cls(parsed, query.get("owner", "").strip())

    @property
    def filtered(self) -> bool:
        return self.list.filtered or bool(self.owner)

    def arguments(self, **changes: Any) -> dict[str, str]:
        """The query string's arguments for this query with ``changes`` (defaults left out)."""
        found = self.list.arguments(**{k: v for k, v in changes.items() if k != "owner"})
        owner = str(changes.get("owner", self.owner))
        return {**found, "owner": owner} if owner else found

    def matches(self, row: PlacedRow) -> bool:
        if self.owner and row.owner != self.owner:
            return False
        if self.list.text:
            text = self.list.text.casefold()
            return text in row.name.casefold() or text in row.pid.casefold()
        return True


@dataclass(frozen=True, slots=True)
class ClusterPage:
    """One page of the cluster's processes, and what the filters offer."""

    query: ClusterQuery
    rows: list[PlacedRow]
    has_next: bool
    total: int  # the cluster's live processes the members listed (before the page's filters)
    matching: int
    owners: list[str]  # every owner listed, for the filter
    kinds: list[str]

    @property
    def first(self) -> int:
        size = self.query.list.size
        return (self.query.list.page - 1) * size + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


def cluster_page(placed: Iterable[Mapping[str, Any]], query: ClusterQuery, kinds: Iterable[str]) -> ClusterPage:
    """The page ``query`` asks for of the processes ``placed`` lists (kind, lifecycle and paused
    were filtered by the members already); ordered by when they began, then by id."""
    rows = [PlacedRow.of(fields) for fields in placed]
    owners = sorted({row.owner for row in rows if row.owner})
    chosen = sorted(filter(query.matches, rows), key=lambda row: (row.since, row.pid))
    if query.list.order is Order.NEWEST:
        chosen.reverse()
    start = (query.list.page - 1) * query.list.size
    found = list(itertools.islice(chosen, start, start + query.list.size + 1))
    return ClusterPage(
        query=query,
        rows=found[: query.list.size],
        has_next=len(found) > query.list.size,
        total=len(rows),
        matching=len(chosen),
        owners=owners,
        kinds=sorted(set(kinds) | {row.kind for row in rows}),
    )


def placed_arguments(query: ClusterQuery) -> dict[str, Any]:
    """What the members are asked to filter on (what each can answer from its own registry)."""
    return {
        "kind": query.list.kind or None,
        "lifecycle": str(query.list.lifecycle) if query.list.lifecycle else None,
        "paused": query.list.paused,
    }


@dataclass(slots=True)
class OwnerWatch:
    """Which of a page's rows a live update looks up again: all of them when the members
    changed or every OWNERS_EVERY seconds, else only those whose owner is not a live member
    (moving, or bound to a daemon that is down)."""

    shown: dict[str, tuple[str, bool]]  # pid -> (owner, reachable) as the page shows it
    live: frozenset[str] = frozenset()
    checked_at: float = float("-inf")

    def due(self, live: frozenset[str], now: float) -> list[str]:
        if live != self.live or now - self.checked_at >= OWNERS_EVERY:
            self.live = live
            self.checked_at = now
            return list(self.shown)
        return [pid for pid, (owner, reachable) in self.shown.items() if owner and not reachable]

    def changed(self, pid: str, owner: str) -> bool:
        """Note ``pid``'s owner now ("": no record, it ended); whether the page shows otherwise."""
        now = (owner, bool(owner) and owner in self.live)
        if self.shown.get(pid) == now:
            return False
        self.shown[pid] = now
        return True
