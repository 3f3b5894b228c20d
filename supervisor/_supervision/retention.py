"""Retention: the checkpoints of processes that ended long enough ago, and the log files that
belonged to them alone, are deleted a batch at a time.

Apart from the node because it is the one job of the node that runs on its own clock, for as
long as the daemon runs, and the one that deletes files.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from .._core.machine import Machine
from .._core.snapshot import ProcessRecord
from .._errors import StatevisorError
from .._files.logrotation import remove_log
from .._store.protocol import Store

log = structlog.get_logger("statevisor.node")

PRUNE_BATCH = 1000  # records deleted (and decoded, for their owned logs) per store call


async def prune_ended(store: Store, machines: Mapping[str, Machine[Any]], ended_before: float) -> int:
    """Delete the checkpoints of processes that ended before ``ended_before`` and the log files
    that belonged to them alone (their machines' ``owned_logs``); the number of checkpoints
    deleted. A batch at a time, so a backlog never sits in memory at once."""
    total = 0
    while True:
        expired = await store.expired(ended_before, limit=PRUNE_BATCH)
        if not expired.pids:
            return total
        # The files go first: a crash in between leaves records whose files are gone (pruned
        # again next time), never files that no record names any more.
        logs = owned_logs(machines, expired.records)
        if logs:
            removed = await asyncio.to_thread(remove_logs, logs)
            log.info("pruned_logs", processes=len(expired.records), files=removed)
        total += await store.delete_ended(expired.pids)
        if len(expired.pids) < PRUNE_BATCH:
            return total


def prune_interval(retention: float) -> float:
    """A tenth of the retention, between 1 s and an hour: records outlive it by 10% at most."""
    return min(3600.0, max(1.0, retention / 10))


async def prune_periodically(prune: Callable[[], Awaitable[int]], interval: float) -> None:
    """Run ``prune`` every ``interval`` seconds, for ever; a store busy or full right now is
    logged and pruned next time."""
    while True:
        await asyncio.sleep(interval)
        try:
            await prune()
        except StatevisorError as exc:
            log.warning("prune_failed", error=str(exc), retry_in=interval)


def owned_logs(machines: Mapping[str, Machine[Any]], records: list[ProcessRecord]) -> list[Path]:
    logs: list[Path] = []
    for record in records:
        machine = machines.get(record.kind)
        if machine is None:
            continue
        try:
            logs.extend(Path(p) for p in machine.owned_logs(record.state))
        except Exception as exc:  # a machine's hook must not stop pruning
            log.warning("owned_logs_failed", pid=record.pid, kind=record.kind, error=repr(exc))
    return logs


def remove_logs(logs: list[Path]) -> int:
    removed = 0
    for path in logs:
        try:
            removed += remove_log(path)
        except OSError as exc:  # kept, and said: pruning goes on with the rest
            log.warning("pruned_log_not_removed", path=str(path), error=str(exc))
    return removed
