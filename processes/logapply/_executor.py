"""The log-apply executor: owns each machine's :class:`Replica` and does its actions.

``logapply.serve`` builds the replica (log, snapshots, applier), recovers it and then runs for
as long as the process lives: the action only ends if the replica stops (a gap in the log, an
apply that raised under ``on_error = stop``), which fails the process. ``logapply.propose``
appends under the action's id as the message id, so a proposal re-issued after a crash lands
once. ``logapply.read`` and ``logapply.status`` answer from the replica.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from supervisor import TrackedAction, UntrackedAction

from ._apply import APPLIERS
from ._entry_log import EntryLog
from ._jetstream import JetStreamEntryLog
from ._replica import Replica
from ._settings import MachineSpec, parse
from ._snapshots import SnapshotStore
from ._sqlite_log import SQLiteEntryLog
from .errors import EntryLogError

SERVE = "logapply.serve"
PROPOSE = "logapply.propose"
READ = "logapply.read"
STATUS = "logapply.status"
ACTION_TYPES = (SERVE, PROPOSE, READ, STATUS)


def _directory_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


class LogApplyExecutor:
    """Replicas by process id; data under ``directory/<machine name>/``."""

    idempotent = True  # proposals carry their id to the log, which deduplicates them
    uses_slot = False  # replicas coordinate; they hold no slot while serving

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.replicas: dict[str, Replica] = {}
        self._ready: dict[str, asyncio.Future[Replica]] = {}

    def build(self, name: str, spec: MachineSpec) -> Replica:
        home = self.directory / _directory_name(name)
        log: EntryLog
        if spec.log == "jetstream":
            stream = spec.stream or _directory_name(name).replace(".", "_")
            log = JetStreamEntryLog(spec.servers, stream, writer=spec.writer, replicas=spec.replicas, lanes=spec.lanes)
        else:
            log = SQLiteEntryLog(spec.path or home / "log.db", synchronous=spec.synchronous)
        return Replica(
            name,
            APPLIERS[spec.app](),
            log,
            SnapshotStore(home / "snapshots"),
            snapshot_every=spec.snapshot_every,
            snapshot_bytes=spec.snapshot_bytes,
            on_error=spec.on_error,
            compact=spec.log == "sqlite",
        )

    def _waiting(self, pid: str) -> asyncio.Future[Replica]:
        if pid not in self._ready:
            self._ready[pid] = asyncio.get_running_loop().create_future()
        return self._ready[pid]

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        if action.type == SERVE:
            return await self._serve(action)
        replica = await self._waiting(action.pid)
        payload = action.payload
        if action.type == PROPOSE:
            msg_id = action.id if isinstance(action, TrackedAction) else None
            index, (ok, value) = await replica.propose(payload["entry"], msg_id=msg_id)
            return {"index": index, "ok": ok, "value": value}
        if action.type == READ:
            return await replica.read(payload.get("query"), sync=bool(payload.get("sync")))
        if action.type == STATUS:
            return replica.status()
        raise EntryLogError(action.type, "not a log-apply action")

    async def _serve(self, action: TrackedAction | UntrackedAction) -> Any:
        pid = action.pid
        replica = self.build(action.payload["name"], parse(action.payload["settings"]))
        ready = self._waiting(pid)
        try:
            await replica.start()
            self.replicas[pid] = replica
            ready.set_result(replica)
            assert replica._task is not None
            await replica._task  # returns only by raising: the replica stopped
            raise EntryLogError(replica.log.name, "the replica stopped")
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else EntryLogError(replica.log.name, "stopped"))
                ready.exception()  # nobody may be waiting: mark it retrieved
            raise
        finally:
            self.replicas.pop(pid, None)
            if self._ready.get(pid) is ready:
                del self._ready[pid]
            await replica.close()

    async def cancel(self, action: TrackedAction) -> None:
        return None  # cancelling the serve task closes the replica (see _serve's finally)

    def metric_families(self) -> Iterator[Any]:
        labels = ["machine"]
        applied = GaugeMetricFamily("statevisor_logapply_applied_index", "Last log index applied", labels=labels)
        commit = GaugeMetricFamily("statevisor_logapply_commit_index", "Last log index seen committed", labels=labels)
        lag = GaugeMetricFamily("statevisor_logapply_apply_lag", "Committed entries not yet applied", labels=labels)
        age = GaugeMetricFamily("statevisor_logapply_snapshot_age_seconds", "Age of the last snapshot", labels=labels)
        took = GaugeMetricFamily(
            "statevisor_logapply_snapshot_duration_seconds", "Duration of the last snapshot", labels=labels
        )
        errors = GaugeMetricFamily("statevisor_logapply_apply_errors", "Entries whose apply raised", labels=labels)
        for replica in list(self.replicas.values()):
            name = [replica.name]
            applied.add_metric(name, replica.applied)
            commit.add_metric(name, max(replica.commit, replica.applied))
            lag.add_metric(name, max(replica.commit - replica.applied, 0))
            if replica.snapshot_at is not None:
                age.add_metric(name, max(0.0, time.time() - replica.snapshot_at))
                took.add_metric(name, replica.snapshot_seconds)
            errors.add_metric(name, replica.apply_errors)
        yield from (applied, commit, lag, age, took, errors)

    async def close(self) -> None:
        for replica in list(self.replicas.values()):
            await replica.close()

    def __repr__(self) -> str:
        return f"<LogApplyExecutor {len(self.replicas)} replicas in {self.directory}>"


def executors(directory: str | Path) -> dict[str, LogApplyExecutor]:
    """The action types of the log-apply kind, all served by one executor."""
    executor = LogApplyExecutor(directory)
    return dict.fromkeys(ACTION_TYPES, executor)
