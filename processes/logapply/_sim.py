"""Log-apply in simulation: a log for seeded replica tests, and executors for ``Simulation``.

:class:`SimulatedLog` is an in-memory log with JetStream's misbehaviours, for tests that drive a
:class:`Replica` itself. The committed entries survive "crashes" (they are the replicated log);
what a simulation drops is the replica. Delivery misbehaves as a JetStream consumer may around
a failover: an entry delivered twice, a batch that skips ahead (a hole the replica must notice
and re-follow), and appends whose acknowledgement is lost after the entry landed (the proposer
retries under the same message id, which must not append it again).

:class:`SimulatedLogApply` stands in for the log-apply executor inside
:class:`supervisor.Simulation`, so that a workflow with log-apply machines is simulated without
SQLite or NATS: each machine's committed log and applied state live in it (the outside world,
which survives the simulation's crashes), proposals are deduplicated by action id as the real
logs do by message id, and their replies arrive after a seeded commit latency, so they reorder.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

from supervisor import AtomicValue, SimExecutor, TrackedAction, UntrackedAction

from ._apply import APPLIERS, Applier
from ._entry_log import Entry
from ._executor import PROPOSE, READ, SERVE, STATUS
from ._replica import ReplicaPhase, describe_status, plain
from .errors import AckLost


class SimulatedLog:
    """An in-memory log. ``duplicate_rate``, ``hole_rate``, ``ack_loss_rate`` per delivery/append."""

    def __init__(
        self,
        seed: int,
        *,
        duplicate_rate: float = 0.0,
        hole_rate: float = 0.0,
        ack_loss_rate: float = 0.0,
        name: str = "sim",
    ) -> None:
        self.name = name
        self.rng = random.Random(seed)
        self.duplicate_rate = duplicate_rate
        self.hole_rate = hole_rate
        self.ack_loss_rate = ack_loss_rate
        self.entries: list[bytes] = []
        self.ids: dict[str, int] = {}
        self.first = 1
        self.duplicates_sent = 0
        self.holes_sent = 0
        self._changed = asyncio.Event()

    async def open(self) -> None:
        return None

    async def append(self, data: bytes, msg_id: str | None = None) -> int:
        if msg_id is not None and msg_id in self.ids:
            return self.ids[msg_id]
        self.entries.append(data)
        index = self.first + len(self.entries) - 1
        if msg_id is not None:
            self.ids[msg_id] = index
        self._changed.set()
        self._changed = asyncio.Event()
        if self.rng.random() < self.ack_loss_rate:
            raise AckLost(self.name, f"acknowledgement of entry {index} lost")
        return index

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    async def follow(self, after: int) -> AsyncIterator[list[Entry]]:
        while True:
            if after >= self.last:
                await self._changed.wait()
                continue
            start = max(after + 1, self.first)
            stop = min(self.last, start + self.rng.randint(0, 7))
            batch = [(i, self.entries[i - self.first]) for i in range(start, stop + 1)]
            if len(batch) > 1 and self.rng.random() < self.hole_rate:
                del batch[self.rng.randrange(len(batch) - 1)]  # a hole: an entry skipped
                self.holes_sent += 1
            if batch and self.rng.random() < self.duplicate_rate:
                batch.insert(self.rng.randrange(len(batch) + 1), batch[self.rng.randrange(len(batch))])
                batch.sort(key=lambda e: e[0])
                self.duplicates_sent += 1
            after = max(after, batch[-1][0]) if batch else after
            yield batch
            await asyncio.sleep(0)

    async def bounds(self) -> tuple[int, int]:
        return self.first, self.last

    async def compact(self, through: int) -> None:
        through = min(through, self.last)
        if through >= self.first:
            del self.entries[: through - self.first + 1]
            self.first = through + 1

    async def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return (
            f"<SimulatedLog {self.name} first={self.first} last={self.last} "
            f"dups={self.duplicates_sent} holes={self.holes_sent}>"
        )


class _SimMachine:
    """One machine's committed log and the state it applies to (one replica, always caught up)."""

    __slots__ = ("applier", "errors", "log", "value")

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.value = AtomicValue(applier.initial_state())
        self.log: list[Any] = []  # entries, in commit order (index = position + 1)
        self.errors = 0

    def commit(self, entry: Any) -> dict[str, Any]:
        self.log.append(entry)
        try:
            return {"index": len(self.log), "ok": True, "value": plain(self.value.apply(self.applier.apply, entry))}
        except Exception as exc:  # apply raised: nothing changed, the entry's result is the error
            self.errors += 1
            return {"index": len(self.log), "ok": False, "value": f"{type(exc).__name__}: {exc}"}


class SimulatedLogApply:
    """``executors`` plugs into ``Simulation(executors=...)`` for :class:`LogApply` processes.

    ``applier`` names a registered :class:`Applier` (or is a factory) used for every machine;
    ``commit_latency`` is the (low, high) virtual seconds from proposal to its reply;
    ``failure_rate`` of proposals fail before they reach the log; ``ack_loss_rate`` of them are
    committed but answered with :class:`AckLost`, as a JetStream append whose acknowledgement
    was lost. Apply errors follow ``on_error = "skip"`` (the entry's result is the error).
    A proposal re-issued after a crash is answered once per id, as the real logs deduplicate by
    message id (the simulation's contract for idempotent executors).
    """

    def __init__(
        self,
        *,
        applier: str | Callable[[], Applier] = "kv",
        commit_latency: tuple[float, float] = (0.001, 0.05),
        failure_rate: float = 0.0,
        ack_loss_rate: float = 0.0,
    ) -> None:
        self._applier = APPLIERS[applier] if isinstance(applier, str) else applier
        self.ack_loss_rate = ack_loss_rate
        self.machines: dict[str, _SimMachine] = {}  # by process id
        self.executors: dict[str, SimExecutor] = {
            # The replica serves for the process's whole life: its action never answers.
            SERVE: SimExecutor(latency=(0.0, 0.0), hang_rate=1.0),
            PROPOSE: SimExecutor(self._propose, latency=commit_latency, failure_rate=failure_rate),
            READ: SimExecutor(self._read, latency=(0.0, commit_latency[0]), idempotent=False),
            STATUS: SimExecutor(self._status, latency=(0.0, 0.0), idempotent=False),
        }

    def machine(self, pid: str) -> _SimMachine:
        if pid not in self.machines:
            self.machines[pid] = _SimMachine(self._applier())
        return self.machines[pid]

    def log(self, pid: str) -> list[Any]:
        """The committed entries of process ``pid``'s machine, in order."""
        return list(self.machine(pid).log)

    def state(self, pid: str) -> dict[Any, Any]:
        """The applied state of process ``pid``'s machine (do not change it)."""
        return self.machine(pid).value.root

    def _propose(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        outcome = self.machine(action.pid).commit(action.payload["entry"])
        if rng.random() < self.ack_loss_rate:
            raise AckLost(action.pid, f"acknowledgement of entry {outcome['index']} lost")
        return outcome

    def _read(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> Any:
        machine = self.machine(action.pid)
        return plain(machine.applier.query(machine.value.root, action.payload.get("query")))

    def _status(self, action: TrackedAction | UntrackedAction, rng: random.Random) -> dict[str, Any]:
        machine = self.machine(action.pid)
        applied = len(machine.log)  # one replica, always caught up, never snapshotted
        return describe_status(ReplicaPhase.SERVING, applied, applied, 0, None, machine.errors, machine.value.root)

    def __repr__(self) -> str:
        entries = sum(len(m.log) for m in self.machines.values())
        return f"<SimulatedLogApply machines={len(self.machines)} entries={entries}>"
