"""Starting one command for the run monitor: descriptors, cwd, umask, limits, a new session.

Standard library only: the monitor imports it as a script's sibling.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

if __package__:
    from ._journal import marker, stdin_path
else:  # imported by the monitor run as a script
    from _journal import marker, stdin_path  # type: ignore[import-not-found,no-redef]

LIMITS: dict[str, int] = {
    "address_space": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "open_files": resource.RLIMIT_NOFILE,
}
"""Resource limit setting -> the rlimit it sets (soft and hard) in the child."""

MARKER = "STATEVISOR_RUN"
"""Environment variable naming the run in every command (see :func:`._journal.marker`)."""

_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
"""Dispositions a Python parent changes (it ignores SIGPIPE) that children must not inherit."""


class SetupFailed(Exception):
    """The command could not be started; ``what`` is the step (cwd, stdin, stdout, exec...)."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _open_output(path: str, what: str) -> int:
    # Non-blocking open: a FIFO with no reader fails at once (ENXIO) instead of stalling every
    # other start behind it. The directory is made only when it is missing: making sure of it
    # first cost three system calls and an exception per file, on the monitor's one thread.
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)  # output may hold secrets
            fd = os.open(path, flags, 0o600)
    except OSError as error:
        detail = "a pipe with no reader" if error.errno == errno.ENXIO else error.strerror or str(error)
        raise SetupFailed(what, f"{path}: {detail}") from error
    os.set_blocking(fd, True)
    return fd


def _descriptors(request: Mapping[str, Any]) -> list[int]:
    """stdin, stdout, stderr for the command (the caller closes them)."""
    opened: list[int] = []
    try:
        if request.get("stdin") is not None:
            path = stdin_path(request["runs"], request["id"])
            _write(path, request["stdin"])
            opened.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        else:
            opened.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        stdout, stderr = request.get("stdout"), request.get("stderr")
        opened.append(_open_output(stdout, "stdout") if stdout else os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        if stderr == "stdout" or not stderr or stderr == stdout:
            opened.append(opened[1])
        else:
            opened.append(_open_output(stderr, "stderr"))
    except BaseException:
        for fd in set(opened):
            os.close(fd)
        raise
    return opened


def spawn(request: Mapping[str, Any], home: str) -> tuple[int, subprocess.Popen[bytes] | None]:
    """Start the command in a new session; returns its pid (and its Popen, on the fork path).

    Without resource limits it is ``posix_spawn`` (``clone(CLONE_VM|CLONE_VFORK)``: no page
    tables copied), with the cwd and umask set on the monitor itself around the call, which is
    safe because the monitor has one thread. Resource limits need code in the child between
    fork and exec, so they take ``subprocess.Popen`` with a ``preexec_fn``.
    """
    env = dict(request["env"])
    env[MARKER] = marker(request["runs"], request["id"])
    cwd: str = request.get("cwd") or home
    umask: int | None = request.get("umask")
    limits: Mapping[str, int] = request.get("limits") or {}
    fds = _descriptors(request)
    try:
        if limits:
            return _spawn_forked(request, env, cwd, umask, limits, fds)
        return _spawn_vforked(request, env, cwd, umask, home, fds), None
    finally:
        for fd in set(fds):
            os.close(fd)


def _spawn_vforked(
    request: Mapping[str, Any], env: dict[str, str], cwd: str, umask: int | None, home: str, fds: list[int]
) -> int:
    moved = cwd != home
    if moved:
        try:
            os.chdir(cwd)
        except OSError as error:
            raise SetupFailed("cwd", f"{cwd}: {error.strerror}") from error
    old_umask = os.umask(umask) if umask is not None else None
    try:
        return os.posix_spawn(
            request["program"],
            list(request["argv"]),
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)],
            setsid=True,
            setsigdef=_RESET_SIGNALS,
            setsigmask=(),
        )
    except OSError as error:
        raise SetupFailed("exec", f"{request['program']}: {error.strerror}") from error
    finally:
        if old_umask is not None:
            os.umask(old_umask)
        if moved:
            os.chdir(home)


def _spawn_forked(
    request: Mapping[str, Any],
    env: dict[str, str],
    cwd: str,
    umask: int | None,
    limits: Mapping[str, int],
    fds: list[int],
) -> tuple[int, subprocess.Popen[bytes]]:
    def apply_limits() -> None:
        for name, value in limits.items():
            resource.setrlimit(LIMITS[name], (value, value))

    try:
        child = subprocess.Popen(
            list(request["argv"]),
            executable=request["program"],
            stdin=fds[0],
            stdout=fds[1],
            stderr=fds[2],
            cwd=cwd,
            env=env,
            umask=-1 if umask is None else umask,
            start_new_session=True,
            preexec_fn=apply_limits,  # the monitor has one thread
        )
    except FileNotFoundError as error:
        what = "cwd" if error.filename == cwd else "exec"
        raise SetupFailed(what, f"{error.filename}: {error.strerror}") from error
    except subprocess.SubprocessError as error:
        raise SetupFailed("limits", str(error)) from error
    except OSError as error:
        raise SetupFailed("exec", f"{request['program']}: {error.strerror}") from error
    return child.pid, child
