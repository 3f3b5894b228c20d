"""The control socket's file: making way for it at start, and keeping it at its path.

A unix socket is reached by its path only. If the file is removed while the daemon runs (a
cleanup job, ``rm -r var/``), the daemon keeps listening on a socket nobody can reach:
``statevisor status`` says "is the daemon running?" of a daemon that is, and a new daemon
started "to fix it" is refused by the store's lock. So the server checks the path every
:data:`CHECK_INTERVAL` seconds and listens again there when its file is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Awaitable, Callable

import structlog

from .._files.identity import FileFate, FileIdentity, fate, identity_at

log = structlog.get_logger("statevisor.control")

CHECK_INTERVAL = 10.0


async def claim_socket(path: str) -> None:
    """Make way for our socket at ``path``: a socket nobody answers on is a dead daemon's and is
    removed; one that answers is another daemon's, and a file that is not a socket is someone's
    file, so both are left alone and refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"control socket {path}: a file that is not a socket is in the way")
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    writer.close()
    raise OSError(errno.EADDRINUSE, f"control socket {path}: another daemon is serving it")


class SocketKeeper:
    """Listens again at ``path`` (``listen``, which returns the new server) whenever the socket
    file there is deleted; a file put in its place is someone else's and only reported."""

    def __init__(self, path: str, listen: Callable[[], Awaitable[asyncio.AbstractServer]]) -> None:
        self.path = path
        self.listen = listen
        self.file: FileIdentity | None = identity_at(path)
        self.interval = CHECK_INTERVAL
        self._said: FileFate | None = None
        self.checks = 0

    def ours(self) -> bool:
        """The file at ``path`` is the socket this daemon listens on (so it may remove it)."""
        return self.file is not None and fate(self.path, self.file) is FileFate.INTACT

    async def keep(self, replace: Callable[[asyncio.AbstractServer], None]) -> None:
        """Check every ``interval`` seconds, for ever; ``replace`` takes a new server."""
        while True:
            await asyncio.sleep(self.interval)
            self.checks += 1
            if self.file is None:
                continue
            verdict = fate(self.path, self.file)
            if verdict is FileFate.DELETED:
                try:
                    server = await self.listen()
                except OSError as exc:  # e.g. its directory is gone too: said once, tried again
                    if self._said is not verdict:
                        log.error("control_socket_not_restored", socket=self.path, error=str(exc))
                    self._said = verdict
                    continue
                self.file = identity_at(self.path)
                replace(server)
                log.warning("control_socket_restored", socket=self.path, note="its file was deleted; listening again")
                self._said = None
            elif verdict is FileFate.REPLACED:
                if self._said is not verdict:
                    log.error(
                        "control_socket_replaced", socket=self.path,
                        note="another file is at the control socket's path: this daemon cannot be reached there",
                    )  # fmt: skip
                self._said = verdict
            else:
                self._said = None
