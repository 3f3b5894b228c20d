"""Remote handles: a daemon's process, with the same operations as an in-process :class:`Handle`.

Operations that cannot be synchronous over a socket (``try_nudge``, ``try_cast``, ``state``,
``done``, ``result``) are coroutines here.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._core.lifecycle import Lifecycle
from .._core.snapshot import ProcessStatistics, Snapshot


class Requests(Protocol):
    """What a remote handle needs of its connection (:class:`~supervisor.control.Client`)."""

    @property
    def path(self) -> str:
        """Where the daemon is (its socket, or host:port)."""
        ...

    async def request(self, op: str, **args: Any) -> Any: ...

    async def collect(self, op: str, **args: Any) -> list[Any]: ...

    def stream(self, op: str, **args: Any) -> AsyncIterator[Any]: ...

    def resumable_stream(self, op: str, args: Callable[[], dict[str, Any]]) -> AsyncIterator[Any]: ...


def snapshot_of(fields: dict[str, Any]) -> Snapshot:
    """A snapshot rebuilt from its fields on the wire."""
    return Snapshot(
        pid=fields["pid"], name=fields["name"], kind=fields["kind"], version=fields["version"],
        lifecycle=Lifecycle(fields["lifecycle"]), paused=fields["paused"], pause_reason=fields["pause_reason"],
        phase=fields["phase"], state=fields["state"], waiting_on=tuple(fields["waiting_on"]), since=fields["since"],
        result=fields["result"], error=fields["error"],
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Placed:
    """A process as a listing shows it: its snapshot and, in a cluster, the member that owns it
    and whether it can be reached now (``reachable`` is False for a process whose daemon is
    down and that cannot move: its snapshot is then its last checkpoint's)."""

    snapshot: Snapshot
    owner: str | None = None
    reachable: bool = True

    def where(self) -> dict[str, Any]:
        return {"owner": self.owner, "reachable": self.reachable}


class RemoteHandle:
    """A handle to a process in a daemon; the same operations as :class:`Handle`."""

    def __init__(self, client: Requests, pid: str, name: str, kind: str) -> None:
        self.client = client
        self.pid = pid
        self.name = name
        self.kind = kind

    async def start(self) -> None:
        """Start a process spawned held (as ``Handle.start()``)."""
        await self.client.request("start", pid=self.pid)

    async def nudge(self) -> None:
        await self.client.request("nudge", pid=self.pid)

    async def try_nudge(self) -> None:
        await self.client.request("try_nudge", pid=self.pid)

    async def pause(self) -> None:
        await self.client.request("pause", pid=self.pid)

    async def resume(self) -> None:
        await self.client.request("resume", pid=self.pid)

    async def kill(self, reason: str = "killed") -> Snapshot:
        return snapshot_of(await self.client.request("kill", pid=self.pid, reason=reason))

    async def cast(self, message: Any) -> None:
        await self.client.request("cast", pid=self.pid, message=message)

    async def try_cast(self, message: Any) -> None:
        await self.client.request("try_cast", pid=self.pid, message=message)

    async def call(self, message: Any, timeout: float | None = None) -> Any:
        return await self.client.request("call", pid=self.pid, message=message, timeout=timeout)

    async def snapshot(self) -> Snapshot:
        """The latest snapshot (as ``Handle.snapshot()``)."""
        return snapshot_of(await self.client.request("state", pid=self.pid))

    async def state(self) -> Snapshot:
        """Deprecated: :meth:`snapshot`."""
        warnings.warn("RemoteHandle.state() is deprecated: use snapshot()", DeprecationWarning, stacklevel=2)
        return await self.snapshot()

    async def statistics(self) -> ProcessStatistics:
        """The process's counters (as ``Handle.statistics()``)."""
        return ProcessStatistics(**await self.client.request("statistics", pid=self.pid))

    async def wait(self, timeout: float | None = None) -> Snapshot:
        return snapshot_of(await self.client.request("wait", pid=self.pid, timeout=timeout))

    async def done(self) -> bool:
        """Whether the process has ended (a round trip; in-process ``done()`` is immediate)."""
        return (await self.snapshot()).done

    async def result(self) -> Any:
        """The finished process's result; raises how it ended otherwise (as ``Handle.result()``:
        :class:`NotFinished` while alive, :class:`ProcessFailed` or :class:`ProcessKilled`)."""
        return (await self.snapshot()).outcome()

    async def watch(self) -> AsyncIterator[Snapshot]:
        """Snapshots until the terminal one; survives daemon restarts (resumes from the current
        version; a version already seen is not yielded twice)."""
        last: tuple[int, str] | None = None
        async for fields in self.client.stream("watch", pid=self.pid):
            snapshot = snapshot_of(fields)
            key = (snapshot.version, str(snapshot.lifecycle))
            if key != last:
                last = key
                yield snapshot

    async def logs(self, stream: str = "stdout", lines: int = 20) -> list[str]:
        """The last ``lines`` lines of one of the process's log streams."""
        found: list[str] = await self.client.collect("logs", pid=self.pid, stream=stream, lines=lines, chunked=True)
        return found

    async def follow(self, stream: str = "stdout", lines: int = 10) -> AsyncIterator[str]:
        """The last ``lines`` lines, then new lines as they are written, until the caller stops.
        After a reconnection (a daemon restart) it goes on after the last line it yielded:
        nothing missed, nothing repeated (unless the log was rotated meanwhile)."""
        reached: int | None = None  # the offset after the last line yielded

        def args() -> dict[str, Any]:
            first = lines if reached is None else 0
            return {"pid": self.pid, "stream": stream, "lines": first, "positions": True, "start": reached}

        async for line, offset in self.client.resumable_stream("follow", args):
            reached = offset
            yield str(line)

    def __repr__(self) -> str:
        return f"<RemoteHandle {self.pid} {self.kind!r} via {self.client.path}>"
