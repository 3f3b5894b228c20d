"""The links a role's frames travel on: an in-process channel, a stream socket (unix or TCP) and
a serial-like byte stream over a pty pair, each delimiting frames (checksums are the frames'
own), with faults to inject for tests.

Links carry frames and nothing else: they neither retransmit nor reorder (the driver does
what a protocol needs), and a frame sent while the link is down is lost, as on a serial line
with nobody at the other end. A link that loses its peer gets it back on its own: the
connecting side of a socket reconnects, the listening side takes the newest connection, the
side that opened a pty opens it again (the pty's creator may have come back with a new one
behind the same path).

Who waits for whom: ``listen`` (by default the client, as a device waits for its host) binds
the socket or creates the pty and publishes it at the path; the other side connects or opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import socket
import stat
import tty
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._wire import Deframer, stuff
from .errors import LinkFailed

FrameHandler = Callable[[bytes], None]
StateHandler = Callable[[bool], None]

RETRY_FIRST = 0.005
RETRY_MAX = 1.0
MAX_PENDING = 1 << 20
"""Bytes a link keeps waiting to be written before it drops frames (nobody reading)."""


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed link address: ``channel:NAME``, ``unix:PATH``, ``tcp:HOST:PORT``, ``pty:PATH``."""

    transport: str
    where: str
    port: int = 0

    @property
    def ordered(self) -> bool:
        """A byte stream keeps frames in order; a channel may deliver them out of order."""
        return self.transport != "channel"

    def __str__(self) -> str:
        if self.transport == "tcp":
            return f"tcp:{self.where}:{self.port}"
        return f"{self.transport}:{self.where}"


def parse_address(text: str) -> Address:
    """Raises ValueError, saying what an address looks like."""
    transport, _, rest = text.partition(":")
    if transport in ("channel", "unix", "pty") and rest:
        return Address(transport, rest)
    if transport == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return Address("tcp", host.strip("[]"), int(port))
    raise ValueError(f"{text!r} is not a link address: channel:NAME, unix:PATH, tcp:HOST:PORT or pty:PATH")


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults a link injects into the frames it sends (for tests): the chance per frame of a
    drop, a duplicate, a flipped bit (the checksum catches it), a delay of up to
    ``delay_max`` seconds (on a stream the frames behind it wait too, as a stream keeps its
    order) and, on a channel, a reordering (the frame is held until the next one has gone)."""

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    delay_max: float = 0.01
    reorder: float = 0.0
    seed: int | None = None

    @property
    def any(self) -> bool:
        return any((self.drop, self.duplicate, self.corrupt, self.delay, self.reorder))


class Link:
    """A duplex frame link. ``on_frame(frame)`` gets each frame received, ``on_state(up)`` each
    change of whether a peer is there; :meth:`send` sends a frame (or loses it, link down)."""

    ordered = True

    def __init__(self, address: Address, *, listen: bool, faults: Faults | None = None) -> None:
        self.address = address
        self.listen = listen
        self.faults = faults if faults is not None and faults.any else None
        self._rng = random.Random(faults.seed if faults is not None else None)
        self.on_frame: FrameHandler = lambda frame: None
        self.on_state: StateHandler = lambda up: None
        self.up = False
        self.closed = False
        self.sent = 0
        self.received = 0
        self.lost = 0
        self._held: list[bytes] = []
        self._release: asyncio.TimerHandle | None = None
        self._hold_until = 0.0

    # --- what a session calls ------------------------------------------------------------------

    async def open(self) -> None:
        """Start listening or connecting; returns once sending is possible (a peer may not be there)."""
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True
        if self._release is not None:
            self._release.cancel()

    def send(self, frame: bytes) -> None:
        self.sent += 1
        wire = self._encode(frame)
        faults = self.faults
        if faults is None:
            self._write(wire)
            return
        rng = self._rng
        if rng.random() < faults.drop:
            self.lost += 1
            return
        if rng.random() < faults.corrupt:
            flipped = bytearray(wire)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            wire = bytes(flipped)
        copies = 2 if rng.random() < faults.duplicate else 1
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            if not self.ordered and rng.random() < faults.reorder:
                self._held.append(wire)  # goes after the next frame
                continue
            if rng.random() < faults.delay:
                delay = rng.uniform(0, faults.delay_max)
                if self.ordered:
                    self._hold_until = max(self._hold_until, loop.time() + delay)
                else:
                    loop.call_later(delay, self._write_if_open, wire)
                    continue
            if self.ordered and (self._hold_until > loop.time() or self._held):
                self._held.append(wire)
                self._schedule_release(loop)
                continue
            self._write(wire)
            if not self.ordered and self._held:
                held, self._held = self._held, []
                for late in held:
                    self._write(late)

    # --- faults: frames held back --------------------------------------------------------------

    def _schedule_release(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._release is None:
            self._release = loop.call_at(self._hold_until, self._release_held)

    def _release_held(self) -> None:
        self._release = None
        loop = asyncio.get_running_loop()
        if self._hold_until > loop.time():
            self._schedule_release(loop)
            return
        held, self._held = self._held, []
        for wire in held:
            self._write_if_open(wire)

    def _write_if_open(self, wire: bytes) -> None:
        if not self.closed:
            self._write(wire)

    # --- what transports implement -------------------------------------------------------------

    def _encode(self, frame: bytes) -> bytes:
        return stuff(frame)

    def _write(self, wire: bytes) -> None:
        raise NotImplementedError

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            self.on_state(up)

    def __repr__(self) -> str:
        side = "listening" if self.listen else "connecting"
        return (
            f"<{type(self).__name__} {self.address} {side} {'up' if self.up else 'down'}: "
            f"{self.sent} sent, {self.received} received, {self.lost} lost>"
        )


# --- the in-process channel ----------------------------------------------------------------------


class ChannelHub:
    """The channels of one daemon: two links of the same name are each other's peer."""

    def __init__(self) -> None:
        self.ends: dict[str, dict[bool, ChannelLink]] = {}

    def __repr__(self) -> str:
        return f"<ChannelHub {len(self.ends)} channels>"


class ChannelLink(Link):
    """One end of an in-process channel; frames are delivered on the next loop iteration."""

    ordered = False

    def __init__(self, address: Address, *, listen: bool, faults: Faults | None = None, hub: ChannelHub) -> None:
        super().__init__(address, listen=listen, faults=faults)
        self.hub = hub
        self.peer: ChannelLink | None = None

    async def open(self) -> None:
        ends = self.hub.ends.setdefault(self.address.where, {})
        previous = ends.get(self.listen)
        if previous is not None and not previous.closed:
            raise LinkFailed(
                str(self.address), f"the channel's {'listening' if self.listen else 'connecting'} end is taken"
            )
        ends[self.listen] = self
        peer = ends.get(not self.listen)
        if peer is not None and not peer.closed:
            self.peer, peer.peer = peer, self
            peer._set_up(True)
            self._set_up(True)

    async def close(self) -> None:
        await super().close()
        ends = self.hub.ends.get(self.address.where, {})
        if ends.get(self.listen) is self:
            del ends[self.listen]
        if not ends:
            self.hub.ends.pop(self.address.where, None)
        peer, self.peer = self.peer, None
        if peer is not None:
            peer.peer = None
            peer._set_up(False)
        self._set_up(False)

    def _encode(self, frame: bytes) -> bytes:
        return frame

    def _write(self, wire: bytes) -> None:
        peer = self.peer
        if peer is None or peer.closed:
            self.lost += 1
            return
        asyncio.get_running_loop().call_soon(peer._arrive, wire)

    def _arrive(self, wire: bytes) -> None:
        if not self.closed:
            self.received += 1
            self.on_frame(wire)


# --- stream sockets ------------------------------------------------------------------------------


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, link: StreamLink) -> None:
        self.link = link
        self.deframer = Deframer()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes
        self.link._connected(self)

    def data_received(self, data: bytes) -> None:
        link = self.link
        if link._current is not self:
            return
        for frame in self.deframer.feed(data):
            link.received += 1
            link.on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._disconnected(self)


class StreamLink(Link):
    """A unix or TCP stream socket. The listening side takes the newest connection; the
    connecting side reconnects (backing off to a second between attempts) whenever it is lost."""

    def __init__(self, address: Address, *, listen: bool, faults: Faults | None = None) -> None:
        super().__init__(address, listen=listen, faults=faults)
        self._current: _StreamProtocol | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connector: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.address
        if self.listen:
            try:
                if address.transport == "unix":
                    _clear_stale_socket(Path(address.where))
                    self._server = await loop.create_unix_server(lambda: _StreamProtocol(self), address.where)
                    os.chmod(address.where, 0o600)  # only the daemon's user may talk to its roles
                else:
                    self._server = await loop.create_server(
                        lambda: _StreamProtocol(self), address.where, address.port, reuse_address=True
                    )
            except OSError as exc:
                raise LinkFailed(str(address), f"cannot listen: {exc}") from exc
        else:
            self._connector = loop.create_task(self._connect_forever(), name=f"statevisor-link:{address}")

    async def _connect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        address = self.address
        delay = RETRY_FIRST
        while not self.closed:
            self._lost.clear()
            try:
                if address.transport == "unix":
                    await loop.create_unix_connection(lambda: _StreamProtocol(self), address.where)
                else:
                    await loop.create_connection(lambda: _StreamProtocol(self), address.where, address.port)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            await self._lost.wait()

    def _connected(self, protocol: _StreamProtocol) -> None:
        if self.closed:
            assert protocol.transport is not None
            protocol.transport.close()
            return
        previous, self._current = self._current, protocol
        if previous is not None and previous.transport is not None:
            previous.transport.close()
        transport = protocol.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._set_up(True)

    def _disconnected(self, protocol: _StreamProtocol) -> None:
        if self._current is protocol:
            self._current = None
            self._set_up(False)
            self._lost.set()

    def _write(self, wire: bytes) -> None:
        current = self._current
        if current is None or current.transport is None or current.transport.is_closing():
            self.lost += 1
            return
        if current.transport.get_write_buffer_size() > MAX_PENDING:
            self.lost += 1  # nobody reads: a stuck peer does not get our memory
            return
        current.transport.write(wire)

    async def close(self) -> None:
        await super().close()
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._server is not None:
            self._server.close()
        current, self._current = self._current, None
        if current is not None and current.transport is not None:
            current.transport.close()
            await asyncio.sleep(0)  # a transport's socket is closed on the loop's next turn
        if self._server is not None:
            await self._server.wait_closed()
        self._set_up(False)


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket file a previous run left (a crashed daemon's): refuse anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise LinkFailed(f"unix:{path}", "the path exists and is not a socket")
    path.unlink()


# --- a pty pair: a serial line -------------------------------------------------------------------


class PtyLink(Link):
    """A serial-like byte stream over a pty pair. The listening side creates the pair, keeps the
    master and publishes the slave (the "device") as a symlink at the path, as a USB serial
    device appears under /dev; the other side opens the path in raw mode, and opens it again
    when it goes away (the creator died and may come back with a new pair behind the path)."""

    def __init__(self, address: Address, *, listen: bool, faults: Faults | None = None) -> None:
        super().__init__(address, listen=listen, faults=faults)
        self._fd: int | None = None
        self._keep: int | None = None  # the creator's own slave fd: the master never sees a hangup
        self._deframer = Deframer()
        self._pending = bytearray()
        self._writing = False
        self._opener: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()

    async def open(self) -> None:
        if self.listen:
            self._create()
        else:
            self._opener = asyncio.get_running_loop().create_task(
                self._open_forever(), name=f"statevisor-link:{self.address}"
            )

    def _create(self) -> None:
        path = Path(self.address.where)
        try:
            master, slave = os.openpty()
            tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
            os.set_blocking(master, False)
            name = os.ttyname(slave)
            partial = path.with_name(path.name + ".new")
            partial.unlink(missing_ok=True)
            partial.symlink_to(name)
            os.replace(partial, path)
        except OSError as exc:
            raise LinkFailed(str(self.address), f"cannot make a pty: {exc}") from exc
        self._fd, self._keep = master, slave
        asyncio.get_running_loop().add_reader(master, self._readable)
        self._set_up(True)

    async def _open_forever(self) -> None:
        delay = RETRY_FIRST
        while not self.closed:
            self._lost.clear()
            try:
                fd = os.open(self.address.where, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            try:
                tty.setraw(fd)
            except OSError:
                os.close(fd)
                await asyncio.sleep(delay)
                continue
            delay = RETRY_FIRST
            self._fd = fd
            self._deframer.reset()
            asyncio.get_running_loop().add_reader(fd, self._readable)
            self._set_up(True)
            await self._lost.wait()

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO and not self.listen:
                self._drop_fd()  # the master side is gone: open the path again
                return
            raise
        if not data:
            if not self.listen:
                self._drop_fd()
            return
        for frame in self._deframer.feed(data):
            self.received += 1
            self.on_frame(frame)

    def _drop_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            if self._writing:
                loop.remove_writer(fd)
                self._writing = False
            os.close(fd)
        self._pending.clear()
        self._set_up(False)
        self._lost.set()

    def _write(self, wire: bytes) -> None:
        fd = self._fd
        if fd is None:
            self.lost += 1
            return
        if self._pending:
            if len(self._pending) > MAX_PENDING:
                self.lost += 1
                return
            self._pending += wire
            return
        try:
            written = os.write(fd, wire)
        except BlockingIOError:
            written = 0
        except OSError:
            self.lost += 1
            if not self.listen:
                self._drop_fd()
            return
        if written < len(wire):
            self._pending += wire[written:]
            self._writing = True
            asyncio.get_running_loop().add_writer(fd, self._writable)

    def _writable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            written = os.write(fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._pending.clear()
            if not self.listen:
                self._drop_fd()
            return
        del self._pending[:written]
        if not self._pending:
            asyncio.get_running_loop().remove_writer(fd)
            self._writing = False

    async def close(self) -> None:
        await super().close()
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        fd, self._fd = self._fd, None
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            if self._writing:
                loop.remove_writer(fd)
            os.close(fd)
        if self._keep is not None:
            os.close(self._keep)
            self._keep = None
        self._set_up(False)


def make_link(text: str, *, listen: bool, faults: Faults | None = None, hub: ChannelHub | None = None) -> Link:
    """The link an address names (raises ValueError for one that is not an address)."""
    address = parse_address(text)
    if address.transport == "channel":
        return ChannelLink(address, listen=listen, faults=faults, hub=hub or ChannelHub())
    if address.transport == "pty":
        return PtyLink(address, listen=listen, faults=faults)
    return StreamLink(address, listen=listen, faults=faults)


def describe(link: Link) -> dict[str, Any]:
    return {"link": str(link.address), "up": link.up, "sent": link.sent, "received": link.received, "lost": link.lost}
