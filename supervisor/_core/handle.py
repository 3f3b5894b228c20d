"""The handle: what a caller holds to control and observe one process.

Naming rules (kept across the package): ``op`` awaits room, ``try_op`` never waits and raises
:class:`WouldBlock`; waiting methods are ``wait*``; counters come from ``statistics()``.

:class:`HandleAPI` is what in-process and remote handles (``supervisor.control``) share, all of
it awaitable: code written against it runs on either. In-process handles act at once where they
can (``try_cast``, ``try_nudge``, ``statistics``), and what those return may still be awaited.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Awaitable, Generator, Mapping
from pathlib import Path
from typing import Any, Protocol

from .._errors import CallTimeout, LogNotFound, WouldBlock
from .._files.logtail import follow_lines, follow_positions, read_tail
from .inputs import Call, Cast
from .lifecycle import DriveMode
from .process import Process
from .snapshot import ProcessStatistics, Snapshot, immediately


class HandleAPI(Protocol):
    """What every handle offers, in-process or remote; the same semantics on both."""

    @property
    def pid(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    async def start(self) -> None: ...
    async def nudge(self) -> None: ...
    def try_nudge(self) -> Awaitable[None]: ...
    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def kill(self, reason: str = "killed") -> Snapshot: ...
    async def cast(self, message: Any) -> None: ...
    def try_cast(self, message: Any) -> Awaitable[None]: ...
    async def call(self, message: Any, timeout: float | None = None) -> Any: ...
    def snapshot(self) -> Awaitable[Snapshot]: ...
    def statistics(self) -> Awaitable[ProcessStatistics]: ...
    async def wait(self, timeout: float | None = None) -> Snapshot: ...
    def watch(self) -> AsyncIterator[Snapshot]: ...
    async def logs(self, stream: str = "stdout", lines: int = 20) -> list[str]: ...
    def follow(self, stream: str = "stdout", lines: int = 10) -> AsyncIterator[str]: ...


class _Done:
    """What ``try_*`` return: they have acted already; awaiting this is optional and instant."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return immediately(None).__await__()

    def __repr__(self) -> str:
        return "<done>"


DONE = _Done()


class Handle:
    """Controls one process. Cheap to copy around; several handles may share a process."""

    __slots__ = ("_process",)

    def __init__(self, process: Process) -> None:
        self._process = process

    # --- identity ----------------------------------------------------------------------

    @property
    def pid(self) -> str:
        return self._process.pid

    @property
    def name(self) -> str:
        return self._process.name

    @property
    def kind(self) -> str:
        return self._process.machine.kind

    @property
    def mode(self) -> DriveMode:
        return self._process.mode

    # --- driving -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start a process spawned with ``start=False`` (held); nothing if it has started.

        With a store, the start is checkpointed before the process takes its first input: once
        this returns, a crash does not bring it back held. A held process that was paused
        starts paused.
        """
        process = self._process
        process.check_accepting()
        await process.launch()

    async def nudge(self) -> None:
        """Step mode: permit one more transition, waiting for room in the nudge buffer.

        Automatic mode advances on its own; a nudge there is accepted and changes nothing.
        """
        process = self._process
        process.check_accepting()
        if process.mode is DriveMode.AUTO:
            return
        await process.wait_nudge_room()
        process.add_nudge()

    def try_nudge(self) -> Awaitable[None]:
        """Like :meth:`nudge` but raises :class:`WouldBlock` instead of waiting for room.

        Acts at once; the return value may be awaited (as on a remote handle) or ignored.
        """
        process = self._process
        process.check_accepting()
        if process.mode is DriveMode.AUTO:
            return DONE
        if process.nudge_full():
            raise WouldBlock(f"process {process.pid}: nudge buffer is full ({process.statistics().nudges_buffered})")
        process.add_nudge()
        return DONE

    async def pause(self) -> None:
        """Stop advancing after the current transition (at once if between transitions).

        Inputs keep queueing while paused. Executors of in-flight actions that can pause their
        work are told to (a shell command's process group is stopped). Returns once the pause
        has landed.
        """
        await self._process.pause()
        await self._process.tell_executors("pause")

    async def resume(self) -> None:
        """Advance again after :meth:`pause`. Resuming a process that is not paused does nothing."""
        was_paused = self._process.paused
        self._process.resume()
        if was_paused:
            await self._process.tell_executors("resume")

    async def kill(self, reason: str = "killed") -> Snapshot:
        """End the process: interrupt waits, cancel in-flight actions, bounded by the kill grace.

        Killing an ended process does nothing. Returns the terminal snapshot.
        """
        await self._process.kill(reason)
        return self._process.snapshot()

    # --- messages ----------------------------------------------------------------------

    async def cast(self, message: Any) -> None:
        """Queue a message for the process, waiting for mailbox room."""
        process = self._process
        process.check_accepting()
        if not process.has_room():
            await process.wait_room()
        process.enqueue(Cast(message))

    def try_cast(self, message: Any) -> Awaitable[None]:
        """Queue a message or raise :class:`WouldBlock` when the mailbox is full.

        Acts at once; the return value may be awaited (as on a remote handle) or ignored.
        """
        process = self._process
        process.check_accepting()
        if not process.has_room():
            raise WouldBlock(f"process {process.pid}: mailbox is full ({process.statistics().mailbox_capacity})")
        process.enqueue(Cast(message))
        return DONE

    async def call(self, message: Any, timeout: float | None = None) -> Any:
        """Send a message and wait for the transition's reply.

        Raises the transition's error as :class:`TransitionError`, :class:`CallTimeout` after
        ``timeout`` seconds, or :class:`ProcessTerminated` if the process ends first.
        """
        process = self._process
        process.check_accepting()
        ref, future = process.new_call()
        try:
            async with asyncio.timeout(timeout):
                if not process.has_room():
                    await process.wait_room()
                process.enqueue(Call(message, ref))
                return await future
        except TimeoutError:
            problem = f"process {process.pid}: no reply within {timeout} s"
            if process.paused:  # the likeliest reason, and one a timeout alone would hide
                why = process.snapshot().pause_reason or "by an operator"
                problem += f": it is paused ({why}) and handles no input until it is resumed"
            raise CallTimeout(problem) from None
        finally:
            process.forget_call(ref)

    # --- observing ---------------------------------------------------------------------

    @property
    def state(self) -> Snapshot:
        """Deprecated: :meth:`snapshot` (a snapshot, not the state: ``snapshot().state`` is)."""
        warnings.warn("Handle.state is deprecated: use Handle.snapshot()", DeprecationWarning, stacklevel=2)
        return self._process.snapshot()

    def snapshot(self) -> Snapshot:
        """The latest snapshot: lifecycle, paused, phase, a copy of the state view, version.

        At once, in process; it may also be awaited (``await handle.snapshot()``), as on a
        remote handle, where it is a round trip.
        """
        return self._process.snapshot()

    def log_files(self) -> Mapping[str, str]:
        """The process's log files by stream (``stdout``, ``stderr``...), as its kind declares them."""
        process = self._process
        return dict(process.machine.log_files(process.state_for_logs()))

    async def logs(self, stream: str = "stdout", lines: int = 20) -> list[str]:
        """The last ``lines`` lines of one of the process's log streams (read on a log-reader
        thread: a long tail is megabytes, and a log may sit on a slow file system)."""
        return await read_tail(self._log_path(stream), lines)

    async def follow(self, stream: str = "stdout", lines: int = 10) -> AsyncIterator[str]:
        """The last ``lines`` lines of a log stream, then each new line as it is written
        (through rotations), until the caller stops iterating."""
        async for line in follow_lines(self._log_path(stream), lines=lines):
            yield line

    async def follow_positions(
        self, stream: str = "stdout", lines: int = 10, start: int | None = None
    ) -> AsyncIterator[tuple[str, int]]:
        """As :meth:`follow`, each line with the log offset just after it: a reader that was cut
        off passes the last offset as ``start`` and resumes with the next line."""
        async for found in follow_positions(self._log_path(stream), lines=lines, start=start):
            yield found

    def _log_path(self, stream: str) -> Path:
        files = self.log_files()
        if stream not in files:
            known = ", ".join(sorted(files)) or "none"
            raise LogNotFound(f"process {self.pid} ({self.kind}) has no {stream!r} log (its logs: {known})")
        return Path(files[stream])

    async def watch(self) -> AsyncIterator[Snapshot]:
        """Snapshots as the process changes: the current one first, then newer ones.

        A slow watcher skips to the latest version; watching never slows the process. Every
        watcher sees the terminal snapshot, after which the iteration ends.
        """
        process = self._process
        seen = -1
        process.watcher_added(1)
        try:
            while True:
                snapshot = process.snapshot()
                if snapshot.version != seen:
                    seen = snapshot.version
                    yield snapshot
                if snapshot.lifecycle.terminal:
                    return
                await process.wait_changed(seen)
        finally:
            process.watcher_added(-1)

    async def wait(self, timeout: float | None = None) -> Snapshot:
        """Wait until the process has ended; returns its terminal snapshot."""
        async with asyncio.timeout(timeout):
            await self._process.wait_done()
        return self._process.snapshot()

    def done(self) -> bool:
        """Whether the process has ended (finished, failed or killed)."""
        return self._process.done

    def result(self) -> Any:
        """The finished process's result; raises how it ended otherwise.

        :class:`NotFinished` while alive, :class:`ProcessFailed` or :class:`ProcessKilled`.
        """
        return self._process.snapshot().outcome()

    def statistics(self) -> ProcessStatistics:
        return self._process.statistics()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and other._process is self._process

    def __hash__(self) -> int:
        return hash(self._process.pid)

    def __repr__(self) -> str:
        p = self._process
        stats = p.statistics()
        paused = ", paused" if p.paused else ""
        return (
            f"<Handle {p.pid} {p.machine.kind!r} {p.lifecycle}{paused} phase={p.phase} v{p.version}: "
            f"{stats.mailbox_depth} queued, {stats.pending_actions} pending actions, "
            f"{stats.armed_timers} timers, {stats.transitions} transitions, {stats.transition_errors} errors>"
        )
