"""The bootloader: a host flashes a firmware image into a device's flash, sector by sector.

The protocol, once, for both sides::

    image_end = start()                      # host announces the image; the client accepts or refuses
    while (sector := next_sector()) is not None:
        erase_sector(sector, sector_size)
        now = sector
        while now < sector + sector_size and now < image_end:
            now += write_next_chunk()
    boot()                                   # abort() on any error, on both sides

Writing a chunk again is harmless (``Resume.REPEAT``); erasing a sector again is harmless only
before a chunk was written into it, so its answer leaves once the client's record is durable
(``Resume.RESTART``); a boot happens once (``Resume.ONCE``).

The client emulates a device's NOR flash: :class:`FileFlash` (a file, for the daemon) or
:class:`MemoryFlash` (for simulations). Erasing sets a sector's bytes to ``0xFF``, programming
can only clear bits (so a chunk written without its erase comes out wrong), and a boot checks
the image's digest first: a partial image never boots. Both keep a wear log of erases and
writes, from which :func:`erased_after_written` tells whether a sector was ever erased after
a chunk was written into it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import SettingsError
from supervisor.lowlevel import private_file

from .._spec import Client, Host, Message, Party, Resume, Specification, Step
from ..errors import StepFailed

CHUNK = 256
"""Bytes a chunk carries unless the host's options say otherwise."""
SECTOR_SIZE = 65536
"""The emulated flash's erase block (a NOR flash's 64 KiB block) unless the client's options say otherwise."""


# --- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start(Message):
    size: int
    digest: bytes
    chunk: int


@dataclass(frozen=True, slots=True)
class Accepted(Message):
    sector_size: int


@dataclass(frozen=True, slots=True)
class Refused(Message):
    reason: str


@dataclass(frozen=True, slots=True)
class Erase(Message):
    sector: int
    size: int


@dataclass(frozen=True, slots=True)
class Erased(Message):
    sector: int


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Written(Message):
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class Boot(Message):
    digest: bytes


@dataclass(frozen=True, slots=True)
class Booted(Message):
    digest: bytes


# --- the steps, the party, the protocol --------------------------------------------------------

START: Step[Start, Accepted | Refused] = Step(Start, (Accepted, Refused))
ERASE = Step(Erase, Erased, resume=Resume.RESTART)
WRITE = Step(Chunk, Written)
BOOT: Step[Boot, Booted | Refused] = Step(Boot, (Booted, Refused), resume=Resume.ONCE)


class Bootloader(Party, protocol="bootloader", version=2):
    """The joint steps of flashing an image, and the decisions both sides compute alike."""

    def __init__(self) -> None:
        self.image_end = 0
        self.sector_size = 0
        self.chunk = 0
        self.sector: int | None = None
        self.now = 0

    @START
    async def start(self) -> int:
        """The host announces the image (size, digest, chunk size); the client accepts it with
        its sector size, or refuses. Both return the image's end."""
        raise NotImplementedError

    @ERASE
    async def erase_sector(self, sector: int, size: int) -> None:
        """The client erases a sector before any chunk is written into it."""
        raise NotImplementedError

    @WRITE
    async def write_next_chunk(self) -> int:
        """The next chunk of the current sector, written; both return its length."""
        raise NotImplementedError

    @BOOT
    async def boot(self) -> None:
        """The client checks the image's digest and boots it."""
        raise NotImplementedError

    def next_sector(self) -> int | None:
        """The next sector to flash, or None when the image is all written."""
        following = 0 if self.sector is None else self.sector + self.sector_size
        if following >= self.image_end:
            return None
        self.sector = self.now = following
        return following

    def chunk_end(self) -> int:
        """Where the chunk being written ends: a chunk never crosses a sector or the image's end."""
        assert self.sector is not None
        return min(self.now + self.chunk, self.sector + self.sector_size, self.image_end)


async def bootloader(p: Bootloader) -> None:
    """Flash an image: announce it, then erase and write each sector, then boot."""
    try:
        image_end = await p.start()
        while (sector := p.next_sector()) is not None:
            await p.erase_sector(sector, p.sector_size)
            now = sector
            while now < sector + p.sector_size and now < image_end:
                now += await p.write_next_chunk()
        await p.boot()
    except StepFailed as error:
        await p.abort(error.reason)


# --- the host ----------------------------------------------------------------------------------


class BootHost(Bootloader, Host):
    """Flashes ``image`` in chunks of ``chunk`` bytes. Options: ``image`` (a file), ``chunk``."""

    local_options = ("image",)

    def __init__(self, image: bytes, *, chunk: int = CHUNK) -> None:
        super().__init__()
        self.image = image
        self.digest = hashlib.sha256(image).digest()
        self.chunk = chunk

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        _only(options, {"image", "chunk"})
        if not isinstance(options.get("image"), str) or not options["image"]:
            raise SettingsError("options.image", "the host needs the image to flash: a file path")
        _whole(options, "chunk", CHUNK, 1, 1 << 16)

    @classmethod
    def open(cls, options: Mapping[str, Any]) -> BootHost:
        return cls(Path(options["image"]).read_bytes(), chunk=int(options.get("chunk", CHUNK)))

    async def start(self) -> int:
        answer = await self.ask(START, Start(len(self.image), self.digest, self.chunk))
        if isinstance(answer, Refused):
            raise self.refused(answer.reason)
        if answer.sector_size < 1:
            raise self.desync(f"the client's sector size is {answer.sector_size}")
        self.image_end, self.sector_size = len(self.image), answer.sector_size
        return self.image_end

    async def erase_sector(self, sector: int, size: int) -> None:
        await self.ask(ERASE, Erase(sector, size))

    async def write_next_chunk(self) -> int:
        end = self.chunk_end()
        answer = await self.ask(WRITE, Chunk(self.now, self.image[self.now : end]))
        if (answer.offset, answer.count) != (self.now, end - self.now):
            raise self.desync(
                f"the client wrote {answer.count} bytes at {answer.offset}; sent {end - self.now} at {self.now}"
            )
        self.now = end
        return answer.count

    async def boot(self) -> None:
        answer = await self.ask(BOOT, Boot(self.digest))
        if isinstance(answer, Refused):
            raise self.refused(answer.reason)


# --- the client and its flash ------------------------------------------------------------------


class BootClient(Bootloader, Client):
    """A device's bootloader over an emulated flash. Options: ``flash`` (a file), ``size``,
    ``sector_size``, ``wear_log`` (keep the log of erases and writes beside the flash)."""

    local_options = ("flash",)

    def __init__(self, flash: Flash) -> None:
        super().__init__()
        self.flash = flash
        self.digest = b""

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        _only(options, {"flash", "size", "sector_size", "wear_log"})
        if not isinstance(options.get("flash"), str) or not options["flash"]:
            raise SettingsError("options.flash", "the client needs its flash: a file path")
        size = _whole(options, "size", 1 << 20, 1, 1 << 32)
        sector = _whole(options, "sector_size", SECTOR_SIZE, 1, 1 << 24)
        if size % sector:
            raise SettingsError("options.size", f"the flash's size ({size}) is a whole number of sectors ({sector})")
        if not isinstance(options.get("wear_log", False), bool):
            raise SettingsError("options.wear_log", "expected true or false")

    @classmethod
    def open(cls, options: Mapping[str, Any]) -> BootClient:
        flash = FileFlash(
            options["flash"],
            size=int(options.get("size", 1 << 20)),
            sector_size=int(options.get("sector_size", SECTOR_SIZE)),
            wear_log=bool(options.get("wear_log", False)),
        )
        return cls(flash)

    def sync(self) -> None:
        self.flash.sync()

    def close(self) -> None:
        self.flash.close()

    async def start(self) -> int:
        request = await self.receive(START)
        problem = ""
        if request.size > self.flash.size:
            problem = f"the image ({request.size} bytes) is larger than the flash ({self.flash.size})"
        elif not 1 <= request.chunk <= self.flash.sector_size:
            problem = f"chunks of {request.chunk} bytes do not fit sectors of {self.flash.sector_size}"
        if problem:
            await self.answer(START, Refused(problem))
            raise self.refused(problem)
        await self.answer(START, Accepted(self.flash.sector_size))
        self.image_end, self.sector_size = request.size, self.flash.sector_size
        self.chunk, self.digest = request.chunk, request.digest
        return self.image_end

    async def erase_sector(self, sector: int, size: int) -> None:
        request = await self.receive(ERASE)
        if (request.sector, request.size) != (sector, size):
            raise self.desync(f"asked to erase {request.size} bytes at {request.sector}; expected {size} at {sector}")
        await self.effect(self.flash.erase, sector, size)
        await self.answer(ERASE, Erased(sector))

    async def write_next_chunk(self) -> int:
        request = await self.receive(WRITE)
        end = self.chunk_end()
        if request.offset != self.now or len(request.data) != end - self.now:
            raise self.desync(
                f"a chunk of {len(request.data)} at {request.offset}; expected {end - self.now} at {self.now}"
            )
        count = await self.effect(self.flash.program, request.offset, request.data)
        await self.answer(WRITE, Written(request.offset, count))
        self.now += count
        return count

    async def boot(self) -> None:
        request = await self.receive(BOOT)
        booted = await self.effect(self.flash.boot, self.image_end, request.digest)
        if not booted:
            await self.answer(BOOT, Refused("the flash does not hold the announced image"))
            raise self.refused("the flash does not hold the announced image")
        await self.answer(BOOT, Booted(request.digest))


class Flash:
    """An emulated NOR flash: ``size`` bytes in sectors of ``sector_size``; the subclasses
    store it. ``booted`` is the digest of the image it booted (None: not booted). ``wear`` is
    the log of erases and writes, ``("erase", sector)`` and ``("program", offset, length)``."""

    def __init__(self, size: int, sector_size: int) -> None:
        if size < 1 or sector_size < 1 or size % sector_size:
            raise ValueError(f"a flash of {size} bytes in sectors of {sector_size}")
        self.size = size
        self.sector_size = sector_size
        self.booted: bytes | None = None
        self.wear: list[tuple[Any, ...]] = []

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def _write(self, offset: int, data: bytes) -> None:
        raise NotImplementedError

    def _note(self, *event: Any) -> None:
        self.wear.append(event)

    def erase(self, sector: int, size: int) -> None:
        if sector % self.sector_size or size != self.sector_size or not 0 <= sector < self.size:
            raise ValueError(f"erase of {size} bytes at {sector}: sectors are {self.sector_size} bytes")
        self._write(sector, b"\xff" * size)
        self.booted = None
        self._note("erase", sector)

    def program(self, offset: int, data: bytes) -> int:
        """NOR programming: bits only go from 1 to 0, so the result is the old bytes AND the new."""
        if not 0 <= offset <= self.size - len(data):
            raise ValueError(f"a write of {len(data)} bytes at {offset} is past the flash's end ({self.size})")
        old = self.read(offset, len(data))
        anded = (int.from_bytes(old, "big") & int.from_bytes(data, "big")).to_bytes(len(data), "big")
        self._write(offset, anded)
        self._note("program", offset, len(data))
        return len(data)

    def boot(self, size: int, digest: bytes) -> bool:
        """Boot the first ``size`` bytes if their digest is ``digest`` (a partial image never boots)."""
        if hashlib.sha256(self.read(0, size)).digest() != digest:
            return False
        self.booted = digest
        return True

    def sync(self) -> None:
        """Make what was written durable."""

    def close(self) -> None:
        """Release the flash's storage."""


class MemoryFlash(Flash):
    """A flash in memory: a simulation's device, which keeps its contents across the
    simulated crashes of the role that drives it."""

    def __init__(self, size: int = 1 << 20, sector_size: int = SECTOR_SIZE) -> None:
        super().__init__(size, sector_size)
        self.data = bytearray(b"\xff" * size)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def _write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data


class FileFlash(Flash):
    """A flash in a file (made ``0xFF``-filled when missing); ``<file>.boot`` holds the digest
    of the image it booted, ``<file>.wear`` (with ``wear_log``) one line per erase and write."""

    def __init__(self, path: str | Path, *, size: int, sector_size: int, wear_log: bool = False) -> None:
        super().__init__(size, sector_size)
        self.path = Path(path)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        private_file(self.path)
        if created or os.fstat(self._fd).st_size != size:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, b"\xff" * size, 0)
        marker = self.path.with_name(self.path.name + ".boot")
        self.booted = bytes.fromhex(marker.read_text()) if marker.exists() else None
        self._wear_fd = (
            os.open(self.path.with_name(self.path.name + ".wear"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if wear_log
            else None
        )

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def _write(self, offset: int, data: bytes) -> None:
        os.pwrite(self._fd, data, offset)

    def _note(self, *event: Any) -> None:
        if self._wear_fd is not None:
            os.write(self._wear_fd, (" ".join(str(e) for e in event) + "\n").encode())

    def erase(self, sector: int, size: int) -> None:
        super().erase(sector, size)
        self.path.with_name(self.path.name + ".boot").unlink(missing_ok=True)

    def boot(self, size: int, digest: bytes) -> bool:
        if not super().boot(size, digest):
            return False
        os.fsync(self._fd)  # the image is durable before the device says it booted it
        marker = self.path.with_name(self.path.name + ".boot")
        partial = marker.with_name(marker.name + ".partial")
        partial.write_text(digest.hex())
        os.replace(partial, marker)
        return True

    def sync(self) -> None:
        # fdatasync: the data and the size needed to read it back, not the times (a journal
        # commit fewer, for a file written in place)
        os.fdatasync(self._fd)
        if self._wear_fd is not None:
            os.fdatasync(self._wear_fd)

    def close(self) -> None:
        fds, self._fd, self._wear_fd = (self._fd, self._wear_fd), None, None  # type: ignore[assignment]
        for fd in fds:
            if fd is not None:
                os.close(fd)

    @property
    def wear_path(self) -> Path:
        return self.path.with_name(self.path.name + ".wear")


def read_wear_log(path: str | Path) -> list[tuple[Any, ...]]:
    """A :class:`FileFlash`'s wear log as :attr:`Flash.wear` holds it."""
    events: list[tuple[Any, ...]] = []
    for line in Path(path).read_text().splitlines():
        kind, *numbers = line.split()
        events.append((kind, *(int(n) for n in numbers)))
    return events


def erased_after_written(wear: list[tuple[Any, ...]], sector_size: int) -> list[int]:
    """The sectors erased after a chunk was written into them since their previous erase."""
    written: set[int] = set()
    found: list[int] = []
    for event in wear:
        if event[0] == "erase":
            if event[1] in written:
                found.append(event[1])
            written.discard(event[1])
        elif event[0] == "program":
            written.add(event[1] - event[1] % sector_size)
    return found


def _only(options: Mapping[str, Any], keys: set[str]) -> None:
    unknown = sorted(set(options) - keys)
    if unknown:
        raise SettingsError(f"options.{unknown[0]}", f"unknown option; expected one of {', '.join(sorted(keys))}")


def _whole(options: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = options.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SettingsError(f"options.{key}", f"expected a whole number from {low} to {high}; got {value!r}")
    return value


SPEC = Specification(bootloader, host=BootHost, client=BootClient)
"""The bootloader as the protocol kind runs it (entry point ``bootloader`` of group
``statevisor.protocols``)."""
