"""Finding, watching, signalling and reaping commands: the operating-system half of the shell
kind on the daemon's side (the run monitor, :mod:`._monitor`, starts them).

Why the monitor spawns with ``posix_spawn`` and not ``asyncio.create_subprocess_exec``: uvloop
spawns through libuv, whose ``uv_spawn`` calls ``fork()`` on Linux. A fork copies the parent's
page tables, so spawning gets slower as the parent grows (measured here: 270 spawns/s at 0 MB
of ballast, 42/s at 500 MB). glibc's ``posix_spawn`` uses ``clone(CLONE_VM | CLONE_VFORK)``,
which costs the same whatever the size, and a pidfd tells the event loop (any loop) when a
process, child or not, has exited.

The daemon finds a surviving command again by its pid and its start time in ``/proc``, which
a reused pid cannot match.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
from collections.abc import Iterable

from ._proc import start_time, stat_fields
from ._spawn import MARKER

__all__ = [
    "become_subreaper",
    "find_by_marker",
    "inherited_environment",
    "is_our_child",
    "reap_child",
    "reap_orphans",
    "signal_group",
    "start_time",
    "wait_exit",
]


def is_our_child(pid: int) -> bool:
    """Whether ``pid`` is a child of this process (an unreaped one cannot have had its pid
    reused, so it needs no start-time check)."""
    fields = stat_fields(pid)
    return fields is not None and int(fields[1]) == os.getpid()


def find_by_marker(value: str) -> int | None:
    """The pid of a live command whose environment holds the run marker ``value`` (see
    :func:`._journal.marker`), for a run whose start the monitor did not live to note."""
    marker = f"\0{MARKER}={value}\0".encode()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as environ:
                    if marker in b"\0" + environ.read():
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


def reap_child(pid: int) -> tuple[int, resource.struct_rusage] | None:
    """If ``pid`` is an exited child of ours, kill what is left of its group and reap it: its
    wait status and resource usage. None when it is not our child (or has not exited)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None or info.si_pid == 0:
            return None
    except ChildProcessError:
        return None
    # The unreaped zombie pins the group id: this reaches leftovers of this command only.
    signal_group(pid, signal.SIGKILL)
    try:
        _, status, usage = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status, usage


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
        fields = stat_fields(child)
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


_environ_seen: dict[bytes, bytes] = {}
_environ_decoded: dict[str, str] = {}


def inherited_environment() -> dict[str, str]:
    """A fresh copy of the daemon's environment, for a command that inherits it.

    ``dict(os.environ)`` decodes every variable in Python, ~25 µs per command with a small
    environment and more with a large one; the copy is reused while the raw environment (a
    C-level dict compare) is unchanged, so a variable set in the daemon is still seen at once.
    """
    global _environ_seen, _environ_decoded
    raw: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)
    if raw is None:  # not CPython's os.environ: no cheap way to see a change
        return dict(os.environ)
    if raw != _environ_seen:
        seen = dict(raw)  # decoded from this one copy, so the pair always agrees
        _environ_decoded = {os.fsdecode(name): os.fsdecode(value) for name, value in seen.items()}
        _environ_seen = seen
    return dict(_environ_decoded)
