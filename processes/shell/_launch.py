"""Starting detached commands and watching them: the operating-system half of the shell kind.

Why ``posix_spawn`` and not ``asyncio.create_subprocess_exec``: uvloop spawns through libuv,
whose ``uv_spawn`` calls ``fork()`` on Linux. A fork copies the daemon's page tables, so
spawning gets slower as the daemon grows (measured here: 270 spawns/s at 0 MB of ballast, 42/s
at 500 MB). CPython's own path uses ``vfork()`` but waits for each child on a thread. glibc's
``posix_spawn`` uses ``clone(CLONE_VM | CLONE_VFORK)``, which costs the same whatever the
daemon's size, and a pidfd tells the event loop (any loop) when the child has exited.

Each command runs under a wrapper, a few lines of POSIX sh, so that it outlives the daemon:

* the wrapper is a session leader (its own process group), so signals reach the command's
  whole tree and the daemon's terminal or process group never does;
* it traps the polite signals (TERM, INT...) with a no-op, so a stop signal sent to the group
  stops the command while the wrapper lives on to record how it ended (the command itself gets
  the default dispositions back at exec);
* it writes ``begun`` before running the command, then ``times`` (CPU time used) and
  ``status`` (the exit code; 128+N when killed by signal N, as shells report it) after.

The daemon finds a surviving command again by its pid and its start time in ``/proc``, which
a reused pid cannot match.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

WRAPPER_NAME = "statevisor-run"
"""argv[0] of the wrapper: ``ps`` shows it, and it marks our wrappers in /proc."""

_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Dispositions a Python daemon changes (it ignores SIGPIPE) that children must not inherit."""


def wrapper_script(limits: Mapping[str, int], umask: int | None, flags: Mapping[str, tuple[str, int]]) -> str:
    """The wrapper's sh program; only integers are interpolated, never user strings."""
    setup = "".join(
        f"ulimit {flags[name][0]} {max(1, int(value) // flags[name][1])} || fail limit-{name}\n"
        for name, value in limits.items()
    )
    if umask is not None:
        setup += f"umask {int(umask):03o}\n"
    return (
        "trap : HUP INT QUIT TERM USR1 USR2\n"
        'd=$1; shift\nfail() { echo "setup $1" > "$d/status"; exit 126; }\n'
        'if [ -n "$1" ]; then cd -- "$1" || fail cwd; fi; shift\n'
        f'{setup}: > "$d/begun"\n"$@"\nc=$?\ntimes > "$d/times"\necho "$c" > "$d/status"\n'
    )


def spawn_wrapper(
    script: str,
    run_dir: Path,
    cwd: str | None,
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
) -> int:
    """Start the wrapper in a new session with the given descriptors as 0, 1, 2; returns its pid."""
    return os.posix_spawn(
        "/bin/sh",
        ["/bin/sh", "-c", script, WRAPPER_NAME, str(run_dir), cwd or "", *argv],
        dict(env),
        file_actions=[
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ],
        setsid=True,
        setsigdef=_RESET_SIGNALS,
        setsigmask=(),
    )


def _stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None


def find_wrapper(run_dir: Path) -> int | None:
    """The pid of a live wrapper of ``run_dir`` (used when the daemon died before noting it)."""
    marker = f"{WRAPPER_NAME}\0{run_dir}\0".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline:
                if marker in cmdline.read():
                    return int(entry.name)
        except OSError:
            continue
    return None


async def wait_exit(pid: int, started: int | None) -> bool:
    """Wait until the process ``pid`` that started at ``started`` has exited.

    Returns False at once when that process is not there (ended, or the pid was reused). Works
    for processes that are not our children (after a daemon restart): a pidfd needs no parent.
    ``started=None`` skips the start-time check, for an unreaped child of ours (its pid cannot
    have been reused).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        # The pid might have been reused between reading its start time and opening the pidfd:
        # the pidfd pins the process, so checking again now settles it.
        if started is not None and start_time(pid) != started:
            return False
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
        return True
    finally:
        os.close(fd)


def reap(pid: int) -> int | None:
    """Collect a child's exit status if it is our child and has exited; the raw wait status."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if done else None


def signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER) so that they can be reaped here.

    A command's grandchildren whose parent died are re-parented to the nearest subreaper; not
    every PID 1 reaps (a container's often does not), and zombies would pile up under it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # 36: PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap_orphans(groups: Iterable[int]) -> int:
    """Reap exited children of ours that belong to one of ``groups``; returns how many.

    Only members of our commands' groups are touched, so no other part of the daemon has a
    child's exit status taken away.
    """
    wanted = set(groups)
    if not wanted:
        return 0
    reaped = 0
    for child in _children():
        fields = _stat_fields(child)
        if fields is not None and fields[0] == b"Z" and int(fields[2]) in wanted:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(child, os.WNOHANG)[0]:
                    reaped += 1
    return reaped


def _children() -> list[int]:
    found: list[int] = []
    for task in os.scandir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task.name}/children") as children:
                found.extend(int(pid) for pid in children.read().split())
        except OSError:
            continue
    return found
