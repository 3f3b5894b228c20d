"""The control API: a versioned msgpack protocol over a unix socket, its server and client."""

from ._client import Client
from ._errors import ConnectionDenied, DaemonNotAnswering, ProtocolError, RemoteError
from ._protocol import MAX_FRAME, PROTOCOL_VERSION
from ._remote import Placed, RemoteHandle
from ._server import ControlServer

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "Client",
    "Placed",
    "ConnectionDenied",
    "ControlServer",
    "DaemonNotAnswering",
    "ProtocolError",
    "RemoteError",
    "RemoteHandle",
]
