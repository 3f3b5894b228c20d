"""The control API: a versioned msgpack protocol over a unix socket, its server and client."""

from ._client import Client, RemoteError, RemoteHandle
from ._protocol import MAX_FRAME, PROTOCOL_VERSION, ProtocolError
from ._server import ControlServer

__all__ = ["MAX_FRAME", "PROTOCOL_VERSION", "Client", "ControlServer", "ProtocolError", "RemoteError", "RemoteHandle"]
