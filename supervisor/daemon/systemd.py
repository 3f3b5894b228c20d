"""systemd's notify protocol: tell the service manager when the daemon is ready, when it stops,
and that its event loop is alive.

With ``Type=notify`` systemd waits for ``READY=1`` (sent once the processes are revived and the
socket serves) before it starts the units that need the daemon; with ``WatchdogSec=`` it
expects ``WATCHDOG=1`` at least that often and restarts a daemon that falls silent. The pings
are sent from the event loop, so a loop blocked for good gets the daemon restarted, where a
thread would keep pinging for a frozen daemon. The protocol is one datagram per message on the
unix socket named by ``$NOTIFY_SOCKET``; no library is needed. Outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import MutableMapping

import structlog

log = structlog.get_logger("statevisor.systemd")


class SystemdNotifier:
    """Sends notify messages to ``address`` (None: not run by systemd, nothing is sent)."""

    def __init__(self, address: str | None, watchdog_seconds: float | None = None) -> None:
        self.address = address
        self.watchdog_seconds = watchdog_seconds
        self.sent = 0
        self._failed = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> SystemdNotifier:
        """Read (and remove, so that the commands the daemon starts do not notify in its name)
        ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``."""
        environ = os.environ if environ is None else environ
        address = environ.pop("NOTIFY_SOCKET", None) or None
        usec = environ.pop("WATCHDOG_USEC", None)
        owner = environ.pop("WATCHDOG_PID", None)
        watchdog = None
        if usec and usec.isdigit() and int(usec) > 0 and (owner is None or owner == str(os.getpid())):
            watchdog = int(usec) / 1_000_000
        return cls(address, watchdog)

    def notify(self, message: str) -> None:
        if self.address is None:
            return
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address  # abstract socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), target)
            self.sent += 1
        except OSError as exc:
            if not self._failed:  # once: a manager that went away must not fill the log
                self._failed = True
                log.warning("systemd_notify_failed", socket=self.address, error=str(exc))

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping")

    async def keep_alive(self) -> None:
        """Ping the watchdog at half its interval, from the event loop, until cancelled."""
        if self.address is None or self.watchdog_seconds is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_seconds / 2)

    def __repr__(self) -> str:
        where = self.address or "not under systemd"
        watchdog = f", watchdog {self.watchdog_seconds:g} s" if self.watchdog_seconds else ""
        return f"<SystemdNotifier {where}{watchdog}: {self.sent} sent>"
