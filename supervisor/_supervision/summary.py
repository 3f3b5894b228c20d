"""A node in counts: what ``statevisor status`` prints, the control API sends and the metrics
export (:meth:`Node.summary` counts them in one pass)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._core.lifecycle import Lifecycle

LIVE_LIFECYCLES = (Lifecycle.RUNNING, Lifecycle.WAITING, Lifecycle.CREATED)  # KindCounts's order


@dataclass(frozen=True, slots=True)
class KindCounts:
    """The live processes of one kind."""

    running: int = 0
    waiting: int = 0
    created: int = 0
    paused: int = 0  # of those above
    queued_inputs: int = 0  # casts, calls and control events waiting in their mailboxes

    @property
    def live(self) -> int:
        return self.created + self.running + self.waiting


@dataclass(frozen=True, slots=True)
class SlotCounts:
    """One kind's concurrency slots."""

    capacity: int
    used: int
    queued: int


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """A node in counts. ``ended`` and ``restarts`` count since this node started;
    ``quarantined`` is what its start moved to the quarantine, ``quarantined_why`` the same by
    reason (``corrupt``, ``unknown_kind``, ``newer_schema``, ``migration_failed``,
    ``revive_failed``)."""

    version: str
    started: float | None  # epoch seconds; None before start
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)  # finished / failed / killed
    transitions: int = 0
    transition_errors: int = 0  # transitions that raised (rolled back)
    restarts: int = 0
    given_up: int = 0
    quarantined: int = 0
    slots: dict[str, SlotCounts] = field(default_factory=dict)
    store: str | None = None
    failed_supervisors: dict[str, str] = field(default_factory=dict)  # path -> why: nothing under it restarts
    store_problem: str = ""  # the store's files deleted or replaced and not mended (StoreStatistics.file_problem)
    quarantined_why: dict[str, int] = field(default_factory=dict)

    @property
    def live(self) -> int:
        return sum(k.live for k in self.kinds.values())

    def by_lifecycle(self) -> dict[str, int]:
        """Live processes per lifecycle, all kinds together (lifecycles with none left out)."""
        totals = {str(lc): sum(getattr(k, str(lc)) for k in self.kinds.values()) for lc in LIVE_LIFECYCLES}
        return {name: count for name, count in totals.items() if count}

    def to_fields(self) -> dict[str, Any]:
        """Plain maps and numbers, for the control protocol and ``--json``."""
        return {
            "version": self.version, "started": self.started, "live": self.live,
            "kinds": {kind: {**_counts(c), "live": c.live} for kind, c in self.kinds.items()},
            "ended": dict(self.ended), "transitions": self.transitions,
            "transition_errors": self.transition_errors, "restarts": self.restarts,
            "given_up": self.given_up, "quarantined": self.quarantined,
            "slots": {kind: _counts(s) for kind, s in self.slots.items()}, "store": self.store,
            "failed_supervisors": dict(self.failed_supervisors), "store_problem": self.store_problem,
            "quarantined_why": dict(self.quarantined_why),
        }  # fmt: skip

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> NodeSummary:
        kinds = {kind: KindCounts(**{k: v for k, v in c.items() if k != "live"}) for kind, c in fields["kinds"].items()}
        return cls(
            version=fields["version"], started=fields["started"], kinds=kinds, ended=dict(fields["ended"]),
            transitions=fields["transitions"], transition_errors=fields["transition_errors"],
            restarts=fields["restarts"], given_up=fields["given_up"],
            quarantined=fields["quarantined"], slots={k: SlotCounts(**s) for k, s in fields["slots"].items()},
            store=fields["store"], failed_supervisors=dict(fields.get("failed_supervisors", {})),
            store_problem=str(fields.get("store_problem", "")),
            quarantined_why=dict(fields.get("quarantined_why", {})),
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<NodeSummary {self.live} live in {len(self.kinds)} kinds, {sum(self.ended.values())} ended>"


def _counts(record: Any) -> dict[str, int]:
    return {name: getattr(record, name) for name in record.__slots__}
