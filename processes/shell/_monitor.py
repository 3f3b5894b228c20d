"""The run monitor: one small long-lived process per run directory that starts the commands
and records how they end, so that they outlive the daemon.

Why a separate process: a command must outlive a daemon crash, and only a command's parent
can learn its exit status. The monitor runs in a session of its own (a daemon's SIGKILL, or
Ctrl-C on its terminal, does not reach it) and stays alive while any command it started runs,
so it is the parent that outlives the daemon. It replaces one ``sh`` wrapper per command (an
extra exec and fork each: the wrapper's cost was most of a short command's run). Its own
parent is its keeper (:mod:`._keeper`), which records the end of commands it outlives.

It is a plain program (the standard library and msgpack, nothing of statevisor) run as a
script, so it starts in tens of milliseconds and stays small. One monitor serves one run
directory (an ``flock`` on ``.monitor.lock`` makes sure), and handles requests one at a time:
claiming a run (creating its record), starting it and noting the start is one step
that no other request for the same run can interleave with, whichever daemon sent it. A run
is therefore never started twice.

Protocol: length-prefixed (4 bytes, big-endian) msgpack maps on ``.monitor.sock`` (owner-only,
in the owner-only run directory). The daemon sends ``{"op": "run", "id", "record", ...}``; the
monitor answers ``{"id", "kind": "started"|"running"|"exists"|"setup", ...}`` and, once the
command has ended, ``{"id", "kind": "exit", ...}`` to the connection that watches it (the one
that started it, or the one that later asked for it again). The exit is appended to the run's
record before it is sent, so a daemon that was away reads it from there.

The command's own group: when the command (the group leader) exits, what is left of its group
is killed before the leader is reaped (its pid, and so the group id, cannot have been reused
while it is an unreaped zombie). The monitor is a child subreaper: orphaned grandchildren are
re-parented to it and reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack  # type: ignore[import-untyped]

if __package__:
    from ._journal import Journal, ended_entry, stdin_path
    from ._keeper import keep
    from ._proc import start_time
    from ._spawn import MARKER, SetupFailed, spawn
else:  # run as a script (the monitor process): its siblings are top-level modules
    from _journal import Journal, ended_entry, stdin_path  # type: ignore[import-not-found,no-redef]
    from _keeper import keep  # type: ignore[import-not-found,no-redef]
    from _proc import start_time  # type: ignore[import-not-found,no-redef]
    from _spawn import MARKER, SetupFailed, spawn  # type: ignore[import-not-found,no-redef]

__all__ = ["HEADER", "JOURNAL", "LOCK", "LOG", "MARKER", "SOCKET", "Monitor", "main", "socket_address"]

SOCKET = ".monitor.sock"
LOCK = ".monitor.lock"
LOG = ".monitor.log"
JOURNAL = ".monitor.journal"
LOCK_WAIT = 5.0  # a monitor that is exiting holds the lock for a moment


# --- the loop: a selector over the listening socket, the daemon's connections and a SIGCHLD
# wake-up pipe. Requests are handled one at a time, so claiming, starting and noting a run is
# one step no other request interleaves with.

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


# --- starting: the lock, the keeper's fork, the socket ------------------------------------


def _become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _lock(runs: str) -> int | None:
    fd = os.open(os.path.join(runs, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def socket_address(runs: str, directory_fd: int) -> str:
    """The socket's path, short enough for ``sun_path`` (108 bytes) however deep ``runs`` is."""
    path = os.path.join(runs, SOCKET)
    return path if len(path) < 100 else f"/proc/self/fd/{directory_fd}/{SOCKET}"


def _say(word: str) -> None:
    """Tell the daemon on stdout (a pipe), then let go of it: the daemon stops reading."""
    sys.stdout.write(word + "\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _give_back_open_files(soft: int) -> None:
    """Lower the soft open-files limit to ``soft``, the one the daemon was started with before
    it raised its own: the keeper, the monitor and every command inherit it from here."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def main(argv: list[str], ready: Callable[[str], None] | None = None) -> int:
    """Serve ``argv[0]`` (the run directory). Prints ``ready`` once listening, or ``busy``
    when another monitor holds the directory. ``argv[1]``, when given, is the soft limit on
    open files for the commands (see ``supervisor._files.open_files``)."""
    if len(argv) > 1:
        _give_back_open_files(int(argv[1]))
    runs = os.path.abspath(argv[0])
    os.makedirs(runs, mode=0o700, exist_ok=True)
    say = ready or _say
    lock = _lock(runs)
    if lock is None:
        say("busy")
        return 0
    _become_subreaper()  # for the keeper: fork does not pass it on
    monitor = os.fork()
    if monitor != 0:
        # The keeper (see _keeper): the parent of the monitor, which serves from here on. It
        # holds neither the directory's lock (the monitor's open file keeps it) nor the pipe
        # to the daemon, which must see the end of it if the monitor dies before "ready".
        os.close(lock)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
        keep(os.path.join(runs, JOURNAL), monitor, start_time)
        return 0
    _become_subreaper()
    directory = os.open(runs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    address = socket_address(runs, directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)  # owner-only from the start, not chmod after a window
    try:
        listener.bind(address)
    finally:
        os.umask(old)
    listener.listen(64)
    say("ready")
    try:
        Monitor(runs, os.path.join(runs, JOURNAL)).serve(listener)
    finally:
        # Unlink before the lock goes, so a new monitor never finds our dead socket after
        # taking the lock; a client that connected meanwhile sees EOF and tries again.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
        listener.close()
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
