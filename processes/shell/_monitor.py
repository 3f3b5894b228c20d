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
import socket
import sys
import time
from collections.abc import Callable

if __package__:
    from ._keeper import keep
    from ._monitor_loop import HEADER, Monitor
    from ._proc import start_time
    from ._spawn import MARKER
else:  # run as a script (the monitor process): its siblings are top-level modules
    from _keeper import keep  # type: ignore[import-not-found,no-redef]
    from _monitor_loop import HEADER, Monitor  # type: ignore[import-not-found,no-redef]
    from _proc import start_time  # type: ignore[import-not-found,no-redef]
    from _spawn import MARKER  # type: ignore[import-not-found,no-redef]

__all__ = ["HEADER", "JOURNAL", "LOCK", "LOG", "MARKER", "SOCKET", "Monitor", "main", "socket_address"]

SOCKET = ".monitor.sock"
LOCK = ".monitor.lock"
LOG = ".monitor.log"
JOURNAL = ".monitor.journal"
LOCK_WAIT = 5.0  # a monitor that is exiting holds the lock for a moment


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
