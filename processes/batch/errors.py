"""The batch kind's errors, on the core's :class:`~supervisor.BackendError` and
:class:`~supervisor.TransportError`::

    BackendError
    ├── TransportError
    │   ├── HostUnreachable      connecting failed (refused, timed out, auth); retried with backoff
    │   └── HostKeyMismatch      the host's key is not the one known_hosts holds; never retried
    └── SchedulerError           a batch scheduler refused a command (sbatch, qsub...); ``command`` names it
"""

from __future__ import annotations

from supervisor import BackendError, TransportError


class HostUnreachable(TransportError):
    """Connecting to a host failed (refused, timed out, authentication); retried with backoff."""


class HostKeyMismatch(TransportError):
    """The host presented a key that known_hosts does not hold for it. Never retried: fix
    known_hosts (or the address), then resume the process."""


class SchedulerError(BackendError):
    """A batch scheduler's command failed; ``command`` is what ran, ``output`` what it said."""

    def __init__(self, command: str, exit_status: int | None, output: str) -> None:
        super().__init__(f"{command!r} failed (exit status {exit_status}): {output.strip()[:500]}")
        self.command = command
        self.exit_status = exit_status
        self.output = output
