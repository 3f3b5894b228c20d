"""Small helpers for tests: waiting on conditions (never sleeping and hoping)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor import Handle, HandleAPI, Node, ProcessStatistics, Snapshot, SQLiteStore

DEFAULT_TIMEOUT = 10.0


async def wait_for_snapshot(
    handle: Handle | HandleAPI, predicate: Callable[[Snapshot], bool], timeout: float = DEFAULT_TIMEOUT
) -> Snapshot:
    """Return the first snapshot from ``handle.watch()`` that satisfies ``predicate``."""
    async with asyncio.timeout(timeout):
        async for snapshot in handle.watch():
            if predicate(snapshot):
                return snapshot
    raise AssertionError(f"process ended without reaching the condition; last: {await handle.snapshot()}")


async def wait_until(condition: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT) -> None:
    """Poll ``condition`` once per loop iteration until it holds (for facts with no event)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - for facts that raise no event
            await asyncio.sleep(0.001)


class Recorder:
    """An executor that records every action it is given and answers from a function."""

    idempotent = False

    def __init__(self, answer: Callable[[Any], Any] | None = None) -> None:
        self.executed: list[Any] = []
        self.cancelled: list[Any] = []
        self.answer = answer or (lambda action: action.payload)

    async def execute(self, action: Any) -> Any:
        self.executed.append(action)
        return self.answer(action)

    async def cancel(self, action: Any) -> None:
        self.cancelled.append(action)


class Gate:
    """An executor whose actions wait until released (or forever)."""

    idempotent = False

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.release = asyncio.Event()
        self.cancelled: list[Any] = []

    async def execute(self, action: Any) -> Any:
        self.started.append(action)
        await self.release.wait()
        return "released"

    async def cancel(self, action: Any) -> None:
        self.cancelled.append(action)


async def wait_for_statistics(
    handle: HandleAPI, predicate: Callable[[ProcessStatistics], bool], timeout: float = DEFAULT_TIMEOUT
) -> ProcessStatistics:
    """Poll ``await handle.statistics()`` until ``predicate`` holds (counters raise no event)."""
    async with asyncio.timeout(timeout):
        while not predicate(stats := await handle.statistics()):  # noqa: ASYNC110 - counters raise no event
            await asyncio.sleep(0.001)
    return stats


def file_size(path: Path) -> int:
    """A local file's size, from a test's async body (one stat: microseconds, nothing to await)."""
    return path.stat().st_size


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost and its key, made by openssl in ``directory``."""
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def sqlite_store(node: Node) -> SQLiteStore:
    """The SQLite store a node opened from its path (for tests that reach into it)."""
    assert isinstance(node.store, SQLiteStore), node.store
    return node.store
