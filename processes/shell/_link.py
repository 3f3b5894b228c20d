"""The daemon's side of the run monitor (see :mod:`._monitor`): starting it when none serves the
run directory, one connection to it, requests and the exit events that come back.

A monitor outlives the daemon that started it while commands run, so a restarted daemon
connects to the one that is there; only when none is (the first start, or it was killed) is a
new one started. If the connection drops, pending requests and exit events fail with
:class:`MonitorLost`; the executor asks again, which reaches whatever monitor serves the
directory by then (requests are idempotent: a run's directory is its claim).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgpack  # type: ignore[import-untyped]

from supervisor.lowlevel import open_files_for_children

from . import _monitor
from ._launch import is_our_child, wait_exit
from .errors import RunMonitorError

_SCRIPT = str(Path(_monitor.__file__).resolve())
_HEADER = _monitor.HEADER
_START_TIMEOUT = 10.0
_ATTEMPTS = 3
_T = TypeVar("_T")


class MonitorLost(Exception):
    """The connection to the run monitor dropped before the answer came (internal: the
    executor asks again)."""


class MonitorLink:
    """One connection to the run directory's monitor, made (and the monitor started) on first use."""

    def __init__(self, runs: Path) -> None:
        self.runs = runs
        self.home: str | None = None  # the monitor's working directory (commands' default cwd)
        self.monitor_pid: int | None = None
        self.monitors_started = 0
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._connecting: asyncio.Lock | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._children: set[int] = set()  # monitors we started and have not reaped

    async def run(
        self, action_id: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]:
        """Send a run request; returns the reply and a future of the run's exit event (which
        resolves only for ``started``/``running`` replies).

        If the monitor goes away before it answers, the request is sent again to the monitor
        that serves the directory next: a run's directory is its claim, so the command is
        never started twice, and the new monitor answers how the first one left it."""
        return await self._asking(f"to run {action_id!r}", lambda: self._run_once(action_id, request))

    async def _run_once(
        self, action_id: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]:
        writer = await self._connected()
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        ended: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._replies[action_id] = reply
        self._exits[action_id] = ended
        self._send(writer, request)
        try:
            answer = await reply
        except BaseException:
            self._exits.pop(action_id, None)
            ended.cancel()
            raise
        finally:
            self._replies.pop(action_id, None)
        if answer["kind"] not in ("started", "running"):
            self._exits.pop(action_id, None)
            ended.cancel()
        return answer, ended

    async def query(self, action_id: str) -> dict[str, Any]:
        """What the monitor knows of a run (``running``, ``exists`` or ``unknown``), without
        claiming it (asked again of the next monitor if this one goes away)."""
        return await self._asking(f"about {action_id!r}", lambda: self._query_once(action_id))

    async def _query_once(self, action_id: str) -> dict[str, Any]:
        writer = await self._connected()
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[action_id] = reply
        self._send(writer, {"op": "query", "id": action_id})
        try:
            return await reply
        finally:
            self._replies.pop(action_id, None)

    async def _asking(self, what: str, ask: Callable[[], Awaitable[_T]]) -> _T:
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                return await ask()
            except MonitorLost as lost:
                if attempt == _ATTEMPTS:
                    raise RunMonitorError(f"{lost} {_ATTEMPTS} times while asked {what} (see {self.log})") from None
        raise AssertionError("unreachable")

    async def forget(self, action_id: str) -> None:
        """The run's result is durable: the monitor may drop its record (no answer comes)."""
        self._send(await self._connected(), {"op": "forget", "id": action_id})

    @staticmethod
    def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        body = msgpack.packb(message)
        writer.write(_HEADER.pack(len(body)) + body)

    async def close(self, wait: bool = True) -> None:
        """Let go of the monitor. It exits by itself once no command of its runs; with
        ``wait`` (nothing of ours runs), a monitor we started is waited for (briefly) and reaped."""
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)
            self._reading = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
            self._writer = None
        self._fail_pending()
        for pid in list(self._children) if wait else ():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_exit(pid, None), timeout=2.0)
            self._reap(pid)

    # --- connecting -------------------------------------------------------------------------

    async def _connected(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            problem = "no monitor answered"
            for _ in range(_ATTEMPTS):
                try:
                    reader, writer = await self._open()
                except (FileNotFoundError, ConnectionRefusedError) as error:
                    problem = f"cannot connect: {error}"
                    problem = await self._start_monitor() or problem
                    continue
                try:
                    hello = await asyncio.wait_for(self._hello(reader, writer), _START_TIMEOUT)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as error:
                    # A monitor on its way out (idle) accepted us: the next one takes over.
                    problem = f"the monitor hung up: {error!r}"
                    writer.close()
                    continue
                self.home = hello["home"]
                self.monitor_pid = hello["pid"]
                self._writer = writer
                self._reading = asyncio.get_running_loop().create_task(self._read(reader))
                return writer
            raise RunMonitorError(f"the run monitor of {self.runs} cannot be reached: {problem} (see {self.log})")

    @property
    def log(self) -> Path:
        return self.runs / _monitor.LOG

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        directory = os.open(self.runs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return await asyncio.open_unix_connection(_monitor.socket_address(str(self.runs), directory))
        finally:
            os.close(directory)  # the path is resolved by connect(); the socket needs no more

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, Any]:
        self._send(writer, {"op": "hello"})
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        hello: dict[str, Any] = msgpack.unpackb(await reader.readexactly(size))
        return hello

    async def _start_monitor(self) -> str | None:
        """Start a monitor and wait until it listens (or says another one does); a problem
        description when it failed."""
        self.runs.mkdir(mode=0o700, parents=True, exist_ok=True)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            pid = _spawn_monitor(self.runs, self.log, write_end)
        except OSError as error:
            os.close(read_end)
            return f"cannot start {sys.executable} {_SCRIPT}: {error}"
        finally:
            os.close(write_end)
        self.monitors_started += 1
        self._children.add(pid)
        try:
            word = await asyncio.wait_for(_read_line(read_end), _START_TIMEOUT)
        except TimeoutError:
            return f"the monitor (pid {pid}) did not start within {_START_TIMEOUT:g} s"
        finally:
            os.close(read_end)
        self._reap_when_exited(pid)
        if word == "busy":
            return "another monitor holds the run directory and does not answer"
        if word != "ready":
            return f"the monitor (pid {pid}) exited at start"
        return None

    def _reap_when_exited(self, pid: int) -> None:
        """Reap a monitor we started once it exits (it is our child: it would stay a zombie)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._reap(pid)
            return
        loop = asyncio.get_running_loop()

        def exited() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._reap(pid)
            # A keeper killed before its monitor: the monitor is ours now (we are a subreaper).
            orphan = self.monitor_pid
            if orphan is not None and orphan != pid and is_our_child(orphan):
                self._reap_when_exited(orphan)

        loop.add_reader(fd, exited)

    def _reap(self, pid: int) -> None:
        try:
            reaped = os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            reaped = True  # reaped already
        if reaped:
            self._children.discard(pid)

    # --- reading ----------------------------------------------------------------------------

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                message: dict[str, Any] = msgpack.unpackb(await reader.readexactly(size))
                waiting = (self._exits if message["kind"] == "exit" else self._replies).pop(message["id"], None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._fail_pending()

    def _fail_pending(self) -> None:
        pending = [*self._replies.values(), *self._exits.values()]
        self._replies.clear()
        self._exits.clear()
        for future in pending:
            if not future.done():
                future.set_exception(MonitorLost(f"the run monitor of {self.runs} went away"))
                future.exception()  # retrieved: a waiter that is gone must not warn

    def __repr__(self) -> str:
        state = "connected" if self._writer is not None else "disconnected"
        return (
            f"<MonitorLink {self.runs} {state} monitor={self.monitor_pid} "
            f"waiting={len(self._replies)}+{len(self._exits)} started={self.monitors_started}>"
        )


def _spawn_monitor(runs: Path, log: Path, stdout: int) -> int:
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    errors = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    argv = [sys.executable, _SCRIPT, str(runs)]
    given = open_files_for_children()
    if given is not None:
        argv.append(str(given))  # the monitor gives it back to the commands (see supervisor._files.open_files)
    try:
        return os.posix_spawn(
            sys.executable,
            argv,
            dict(os.environ),
            file_actions=[(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, stdout, 1),
                          (os.POSIX_SPAWN_DUP2, errors, 2)],
            setsid=True,  # no signal meant for the daemon's group or terminal reaches it
            setsigdef=(signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
            setsigmask=(),
        )  # fmt: skip
    finally:
        os.close(null)
        os.close(errors)


async def _read_line(fd: int) -> str:
    """One line from a pipe, without a thread (empty at EOF)."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        while b"\n" not in data:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(fd, 256)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
    finally:
        loop.remove_reader(fd)
    return data.decode(errors="replace").strip()
