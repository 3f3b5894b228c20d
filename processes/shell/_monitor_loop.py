"""The run monitor's loop (see :mod:`._monitor` for why the monitor exists): a selector over
the listening socket, the daemon's connections and a SIGCHLD wake-up pipe. Requests are
handled one at a time, so claiming, starting and noting a run is one step no other request
interleaves with.

Part of the monitor script: the standard library and msgpack, nothing of statevisor.
"""

from __future__ import annotations

import contextlib
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

import msgpack  # type: ignore[import-untyped]

if __package__:
    from ._journal import Journal, ended_entry, stdin_path
    from ._proc import start_time
    from ._spawn import SetupFailed, spawn
else:  # run as a script (the monitor process): its siblings are top-level modules
    from _journal import Journal, ended_entry, stdin_path  # type: ignore[import-not-found,no-redef]
    from _proc import start_time  # type: ignore[import-not-found,no-redef]
    from _spawn import SetupFailed, spawn  # type: ignore[import-not-found,no-redef]

MAX_FRAME = 16 * 2**20
IDLE_EXIT = 10.0  # with no command and nobody connected since start, give up after this long

HEADER = struct.Struct(">I")
"""Each frame's length, before its msgpack body."""


class _Connection:
    __slots__ = ("inbox", "outbox", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()


class _Command:
    __slots__ = ("id", "popen", "started", "watcher")

    def __init__(self, action_id: str, started: list[Any], watcher: _Connection | None, popen: Any) -> None:
        self.id = action_id
        self.started = started
        self.watcher = watcher
        self.popen = popen


class Monitor:
    """The monitor's loop: a selector over the listening socket, the connections and a
    SIGCHLD wake-up pipe."""

    def __init__(self, runs: str, journal: str) -> None:
        self.runs = runs
        self.home = os.getcwd()
        self.journal = Journal(journal)
        self.selector = selectors.DefaultSelector()
        self.connections: dict[socket.socket, _Connection] = {}
        self.commands: dict[int, _Command] = {}  # pid -> running command
        self.by_id: dict[str, int] = {}
        self.ever_connected = False
        self.started_at = time.monotonic()

    def serve(self, listener: socket.socket) -> None:
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.selector.register(wake_read, selectors.EVENT_READ, "child")
        self._reap()  # children that ended before the handler was set
        while not self._done():
            for key, events in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    self._accept(listener)
                elif key.data == "child":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(wake_read, 4096):
                            pass
                    self._reap()
                else:
                    connection = key.data
                    if events & selectors.EVENT_READ:
                        self._receive(connection)
                    if events & selectors.EVENT_WRITE and connection.sock in self.connections:
                        self._flush(connection)

    def _done(self) -> bool:
        if self.commands or self.connections:
            return False
        # Nothing runs and nobody is connected: exit, unless the daemon that started this
        # monitor has not connected yet.
        return self.ever_connected or time.monotonic() - self.started_at > IDLE_EXIT

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                sock, _ = listener.accept()
                sock.setblocking(False)
                connection = _Connection(sock)
                self.connections[sock] = connection
                self.selector.register(sock, selectors.EVENT_READ, connection)
                self.ever_connected = True

    def _receive(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(connection)
            return
        connection.inbox += data
        while len(connection.inbox) >= HEADER.size:
            (size,) = HEADER.unpack_from(connection.inbox)
            if size > MAX_FRAME:
                self._drop(connection)
                return
            if len(connection.inbox) < HEADER.size + size:
                break
            frame = bytes(connection.inbox[HEADER.size : HEADER.size + size])
            del connection.inbox[: HEADER.size + size]
            try:
                request = msgpack.unpackb(frame)
                self._handle(connection, request)
            except Exception as error:  # one bad request must not stop the monitor
                print(f"statevisor-monitor: bad request: {error!r}", file=sys.stderr, flush=True)
                self._drop(connection)
                return

    def _handle(self, connection: _Connection, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "run":
            self._send(connection, self._run(connection, request))
        elif op == "query":
            self._send(connection, self._query(request["id"]))
        elif op == "forget":
            self._forget(request["id"])
        elif op == "hello":
            self._send(connection, {"kind": "hello", "pid": os.getpid(), "home": self.home})
        else:
            raise ValueError(f"unknown op {op!r}")

    def _run(self, connection: _Connection, request: dict[str, Any]) -> dict[str, Any]:
        action_id: str = request["id"]
        if action_id in self.by_id:
            self.commands[self.by_id[action_id]].watcher = connection
            return self._query(action_id)
        if action_id in self.journal.runs:
            return self._query(action_id)
        self.journal.append("claim", action_id)
        wall = time.time()  # before the spawn: a quick command may end before spawn returns
        try:
            pid, popen = spawn(request | {"runs": self.runs}, self.home)
        except SetupFailed as failed:
            self.journal.append("ended", action_id, {"setup": failed.what, "ended": time.time()})
            return {"id": action_id, "kind": "setup", "what": failed.what, "detail": failed.detail}
        ticks = start_time(pid)
        started = [pid, -1 if ticks is None else ticks, wall]
        self.journal.append("started", action_id, started)
        self.commands[pid] = _Command(action_id, started, connection, popen)
        self.by_id[action_id] = pid
        return {"id": action_id, "kind": "started", "started": started}

    def _query(self, action_id: str) -> dict[str, Any]:
        """What this monitor knows of a run: running (here), exists (claimed; maybe started,
        maybe ended), or unknown."""
        if action_id in self.by_id:
            return {"id": action_id, "kind": "running", "started": self.commands[self.by_id[action_id]].started}
        run = self.journal.runs.get(action_id)
        if run is None:
            return {"id": action_id, "kind": "unknown"}
        if run.started is not None and run.ended is None:
            self.journal.refresh()  # started under an earlier monitor: its keeper may have seen it end
        return {"id": action_id, "kind": "exists", "started": run.started, "ended": run.ended}

    def _forget(self, action_id: str) -> None:
        """The daemon holds the run's result durably: drop it (never a running one)."""
        if action_id in self.journal.runs and action_id not in self.by_id:
            self.journal.append("forget", action_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stdin_path(self.runs, action_id))

    def _reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            pid = info.si_pid
            command = self.commands.pop(pid, None)
            if command is not None:
                # Leftovers of the group die with their leader; the zombie leader pins the id.
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            if command is not None:
                self._ended(command, status, usage)

    def _ended(self, command: _Command, status: int, usage: resource.struct_rusage) -> None:
        del self.by_id[command.id]
        if command.popen is not None:
            command.popen.returncode = os.waitstatus_to_exitcode(status)  # it must not reap the pid again
        ended = ended_entry(status, usage)
        self.journal.append("ended", command.id, ended)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stdin_path(self.runs, command.id))  # the command had it open; done with it
        if command.watcher is not None and command.watcher.sock in self.connections:
            self._send(command.watcher, {"id": command.id, "kind": "exit", **ended})

    def _send(self, connection: _Connection, message: Mapping[str, Any]) -> None:
        body = msgpack.packb(message)
        connection.outbox += HEADER.pack(len(body)) + body
        self._flush(connection)

    def _flush(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.outbox)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(connection)
            return
        del connection.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outbox else 0)
        self.selector.modify(connection.sock, events, connection)

    def _drop(self, connection: _Connection) -> None:
        if self.connections.pop(connection.sock, None) is None:
            return
        self.selector.unregister(connection.sock)
        connection.sock.close()
        for command in self.commands.values():
            if command.watcher is connection:
                command.watcher = None
