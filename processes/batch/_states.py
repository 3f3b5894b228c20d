"""Job states in a PSI/J-like model, and the rule that they never move backwards.

Schedulers report many more states (Slurm has two dozen); each adapter maps its own onto these
five. A job that is requeued (Slurm after a node failure, or a restarted controller) reports
PENDING again after RUNNING; the model keeps it ACTIVE rather than move backwards, so a watcher
never sees a job "un-start".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    NEW = "new"  # not yet accepted by the scheduler
    QUEUED = "queued"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELED})
_ORDER = {JobState.NEW: 0, JobState.QUEUED: 1, JobState.ACTIVE: 2}


def advance(current: JobState, reported: JobState) -> JobState:
    """The state after a report: forwards only; a final state is never left."""
    if current.final:
        return current
    if reported.final:
        return reported
    return reported if _ORDER[reported] > _ORDER[current] else current


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One job as a status command reported it."""

    job_id: str
    state: JobState
    native: str  # the scheduler's own word for it (PENDING, R, DONE...)
    held: bool = False
    exit_code: int | None = None
    reason: str = ""
