"""The shell kind's errors, on the core's :class:`~supervisor.BackendError` (a process receives
them as ``ActionFailed`` with the class's name as ``error_type``)::

    BackendError
    ├── CommandNotFound          the executable does not exist or is not executable
    ├── SecretUnreadable         a secret's file (env_files) is missing, unreadable or open to others
    ├── CommandLost              a detached command ended without recording its exit status
    └── RunMonitorError          the run monitor (which starts local commands) cannot be started or reached
"""

from __future__ import annotations

from supervisor import BackendError


class CommandNotFound(BackendError):
    """A command's executable does not exist, or is not an executable file."""


class SecretUnreadable(BackendError):
    """A secret a command needs could not be read from its file (missing, not owner-only, not
    text); the message names the setting and the file, never the value."""


class CommandLost(BackendError):
    """A detached command ended while nobody watched it and left no exit status behind."""


class RunMonitorError(BackendError):
    """The run monitor, the process that starts local commands and outlives the daemon, could
    not be started or reached; its log (``<run_dir>/.monitor.log``) says why."""
