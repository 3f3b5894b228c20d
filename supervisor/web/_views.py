"""What the console's pages show, decided in plain synchronous code from the node's live registry.

Nothing here awaits or renders: the server (:mod:`._console`) reads a request's query into a
:class:`ListQuery`, asks for a :class:`ListPage`, and hands the records to the templates. A page
of the process list reads only the rows it shows (and one more, to know whether a next page
exists): the processes are read in place from the runtime's registry, with no snapshot (which
copies a state) made for any of them, so a daemon with 100,000 processes answers the first page
as fast as one with 10.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .._core.diagram import mermaid
from .._core.lifecycle import Lifecycle
from .._core.machine import Machine
from .._core.process import Process
from .._core.snapshot import Snapshot
from .._errors import DiagramError
from .._supervision.node import Node
from .._supervision.supervisor import ChildStatus, Supervisor, SupervisorState

PAGE_SIZE = 50
"""Rows of the process list per page unless the query asks for another size."""
MAX_PAGE_SIZE = 500
STATE_TEXT_LIMIT = 256 * 1024
"""Characters of a state shown on a process's page; the rest is cut, with a note."""


class Order(StrEnum):
    """The order of the process list: the registry's own (spawn order), either way round."""

    OLDEST = "oldest"
    NEWEST = "newest"


class Show(StrEnum):
    """Which processes the list reads: the live ones, or those that ended and are kept."""

    LIVE = "live"
    ENDED = "ended"


LIVE_CHOICES = (Lifecycle.CREATED, Lifecycle.RUNNING, Lifecycle.WAITING)
ENDED_CHOICES = (Lifecycle.FINISHED, Lifecycle.FAILED, Lifecycle.KILLED)


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The process list's filters and page, as a request's query string gives them."""

    kind: str = ""
    lifecycle: Lifecycle | None = None
    paused: bool | None = None
    text: str = ""  # a part of the name or the id, any case
    show: Show = Show.LIVE
    order: Order = Order.OLDEST
    page: int = 1
    size: int = PAGE_SIZE

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ListQuery:
        """Lenient: a value that makes no sense is left out (the filter shows what it used)."""
        lifecycle = _enum(Lifecycle, query.get("lifecycle", ""))
        show = Show.ENDED if lifecycle in ENDED_CHOICES else _enum(Show, query.get("show", "")) or Show.LIVE
        if lifecycle is not None and lifecycle not in (ENDED_CHOICES if show is Show.ENDED else LIVE_CHOICES):
            lifecycle = None
        paused = {"yes": True, "no": False}.get(query.get("paused", ""))
        return cls(
            kind=query.get("kind", "").strip(),
            lifecycle=lifecycle,
            paused=paused,
            text=query.get("q", "").strip(),
            show=show,
            order=_enum(Order, query.get("order", "")) or Order.OLDEST,
            page=max(1, _integer(query.get("page"), 1)),
            size=min(MAX_PAGE_SIZE, max(1, _integer(query.get("size"), PAGE_SIZE))),
        )

    @property
    def filtered(self) -> bool:
        return bool(self.kind or self.lifecycle or self.paused is not None or self.text)

    def arguments(self, **changes: Any) -> dict[str, str]:
        """The query string's arguments for this query with ``changes`` (defaults left out)."""
        values = {
            "kind": self.kind,
            "lifecycle": str(self.lifecycle) if self.lifecycle else "",
            "paused": {True: "yes", False: "no", None: ""}[self.paused],
            "q": self.text,
            "show": "" if self.show is Show.LIVE else str(self.show),
            "order": "" if self.order is Order.OLDEST else str(self.order),
            "page": "" if self.page == 1 else str(self.page),
            "size": "" if self.size == PAGE_SIZE else str(self.size),
        }
        for key, value in changes.items():
            values[key] = str(value)
        return {key: value for key, value in values.items() if value and not (key == "page" and value == "1")}

    def matches(self, process: Process) -> bool:
        if self.kind and process.kind != self.kind:
            return False
        if self.lifecycle is not None and process.lifecycle is not self.lifecycle:
            return False
        if self.paused is not None and process.paused is not self.paused:
            return False
        if self.text:
            text = self.text.casefold()
            return text in process.name.casefold() or text in process.pid.casefold()
        return True


def _enum(cls: Any, value: str) -> Any:
    try:
        return cls(value) if value else None
    except ValueError:
        return None


def _integer(value: str | None, default: int) -> int:
    try:
        return int(value) if value else default
    except ValueError:
        return default


@dataclass(frozen=True, slots=True)
class ProcessRow:
    """One process as a row of the list (and the head of its page): no state, no copy of it."""

    pid: str
    name: str
    kind: str
    lifecycle: Lifecycle
    paused: bool
    pause_reason: str | None
    phase: str
    version: int
    waiting_on: tuple[str, ...]
    since: float

    @classmethod
    def of(cls, process: Process) -> ProcessRow:
        return cls(
            process.pid,
            process.name,
            process.kind,
            process.lifecycle,
            process.paused,
            process.pause_reason,
            process.phase,
            process.version,
            process.waiting_on(),
            process.since,
        )

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> ProcessRow:
        return cls(
            snapshot.pid,
            snapshot.name,
            snapshot.kind,
            snapshot.lifecycle,
            snapshot.paused,
            snapshot.pause_reason,
            snapshot.phase,
            snapshot.version,
            snapshot.waiting_on,
            snapshot.since,
        )

    @property
    def ended(self) -> bool:
        return self.lifecycle.terminal

    @property
    def status(self) -> str:
        """What the controls offer: ``ended``, ``paused`` or ``active``."""
        return "ended" if self.ended else "paused" if self.paused else "active"


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of the process list."""

    query: ListQuery
    rows: list[ProcessRow]
    has_next: bool
    live: int  # live processes in all
    ended_kept: int  # ended ones kept for lookups
    kinds: list[str]  # every kind the node runs, for the filter

    @property
    def first(self) -> int:
        """The position of the first row shown, from 1 (0: none)."""
        return (self.query.page - 1) * self.query.size + 1 if self.rows else 0

    @property
    def last(self) -> int:
        return self.first + len(self.rows) - 1 if self.rows else 0


def list_page(node: Node, query: ListQuery) -> ListPage:
    """The page ``query`` asks for, reading only as far into the registry as that page needs."""
    newest = query.order is Order.NEWEST
    if query.show is Show.ENDED:
        source: Iterator[Process] = node.recently_ended(newest_first=newest)
    else:
        source = node.runtime.processes(newest_first=newest)
    chosen: Iterable[Process] = filter(query.matches, source) if query.filtered else source
    start = (query.page - 1) * query.size
    # islice skips in C: an unfiltered page far into 100,000 processes costs no Python step per
    # process skipped. One row more than shown tells whether there is a next page.
    found = [ProcessRow.of(p) for p in itertools.islice(chosen, start, start + query.size + 1)]
    return ListPage(
        query=query,
        rows=found[: query.size],
        has_next=len(found) > query.size,
        live=len(node.runtime),
        ended_kept=node.ended_in_memory,
        kinds=sorted(node.machines),
    )


# --- a process's page ------------------------------------------------------------------------


def state_text(state: Any) -> str:
    """A (masked) state as indented JSON for people; values JSON has no form for are shown as
    Python writes them (bytes), and a state past STATE_TEXT_LIMIT is cut with a note."""
    text = json.dumps(state, indent=2, ensure_ascii=False, sort_keys=False, default=repr)
    if len(text) > STATE_TEXT_LIMIT:
        cut = len(text) - STATE_TEXT_LIMIT
        text = (
            text[:STATE_TEXT_LIMIT] + f"\n… ({cut} more characters: the state is large; Machine.view() can show less)"
        )
    return text


def diagram_source(machine: Machine[Any] | type[Machine[Any]]) -> str | None:
    """The machine's Mermaid state diagram (None: it declares no phases to draw)."""
    try:
        return mermaid(machine)
    except DiagramError:
        return None


HIGHLIGHT_CLASS = "current"
HIGHLIGHT_STYLE = "fill:#ffe08a,stroke:#b45309,stroke-width:3px,color:#111"


def highlighted(source: str, phase: str) -> str:
    """``source`` (a ``stateDiagram-v2``) with ``phase`` drawn as the current one."""
    if not _MERMAID_NAME.fullmatch(phase):
        return source  # not a name the diagram could hold: drawn as it is
    return f"{source}    classDef {HIGHLIGHT_CLASS} {HIGHLIGHT_STYLE}\n    class {phase} {HIGHLIGHT_CLASS}\n"


_MERMAID_NAME = re.compile(r"[A-Za-z0-9_]+")
_TIMER = re.compile(r"timer (.+) at (-?\d+(?:\.\d+)?)")


def waiting_text(entries: Iterable[str], now: float | None = None) -> list[str]:
    """What a process waits on, for people: a timer by how far off its deadline is."""
    now = time.time() if now is None else now
    shown = []
    for entry in entries:
        timer = _TIMER.fullmatch(entry)
        if timer is None:
            shown.append(entry)
            continue
        left = float(timer.group(2)) - now
        shown.append(f"timer {timer.group(1)} " + (f"in {left:.1f}s" if left >= 0 else f"due {-left:.1f}s ago"))
    return shown


def duration(seconds: float) -> str:
    """``42s``, ``3m 12s``, ``5h 02m``, ``3d 4h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def iso(at: float) -> str:
    """An epoch time as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the supervision tree ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SupervisorView:
    """One supervisor of the tree and its children, child supervisors nested."""

    path: str
    state: SupervisorState
    strategy: str
    budget: str
    budget_used: int
    restarts: int
    failure: str | None
    children: list[tuple[ChildStatus, SupervisorView | None]] = field(default_factory=list)

    @property
    def given_up(self) -> int:
        return sum(1 for child, _ in self.children if child.given_up)


def supervision_tree(supervisor: Supervisor) -> SupervisorView:
    subs = supervisor.children()
    children = []
    for status in supervisor.child_statuses():
        sub = subs.get(status.name)
        children.append((status, supervision_tree(sub) if isinstance(sub, Supervisor) else None))
    spec = supervisor.spec
    return SupervisorView(
        path=supervisor.path,
        state=supervisor.state,
        strategy=str(spec.strategy),
        budget=str(spec.budget),
        budget_used=supervisor.budget_used(),
        restarts=supervisor.restarts,
        failure=supervisor.failure,
        children=children,
    )


def sse_event(name: str, data: str, event_id: str | None = None) -> bytes:
    """One server-sent event: ``data`` on as many ``data:`` lines as it has lines."""
    lines = [f"event: {name}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()
