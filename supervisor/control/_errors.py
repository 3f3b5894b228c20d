"""What goes wrong between a client and a daemon::

    StatevisorError
    ├── DaemonNotAnswering (also TimeoutError)  a daemon took the connection but did not answer in time
    ├── ProtocolError                a control frame or message that does not follow the protocol
    │   └── ConnectionDenied         the daemon refused the connection (token, protocol version)
    └── RemoteError                  a daemon's error that has no class of its own on the client's side

The errors of the handle API (a process ended, not found, no room, a transition's error, a
call's timeout, invalid settings) come back from a daemon as their own classes, with the same
fields, so code written against an in-process handle works against a remote one; any other
error of the daemon's comes back as :class:`RemoteError`, naming its type.
"""

from __future__ import annotations

from .._errors import StatevisorError


class DaemonNotAnswering(StatevisorError, TimeoutError):
    """A daemon accepted the connection (the kernel does, for a stopped or stuck daemon too) but
    did not answer within the client's time: its event loop may be blocked."""


class ProtocolError(StatevisorError):
    """A frame or message that does not follow the control protocol."""


class ConnectionDenied(ProtocolError):
    """The daemon refused the connection: a missing or wrong token, or a protocol version it
    does not speak. Retrying with the same credentials cannot help."""


class RemoteError(StatevisorError):
    """An error from the daemon that has no class of its own on this side."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
