"""Protocol scenario: the bootloader's steps per second over a unix socket, through two role
processes, against a hand-written host and client doing the same over the same kind of socket.

Ours: a Node with its SQLite store (the daemon's configuration) runs the bootloader's two roles
as ``protocol`` processes, the client listening on a unix socket and emulating a 64 KiB-sector
flash in a file, the host flashing a 1 MiB image in 256-byte chunks: every frame checked, phase
locked, recorded, each erase's answer fenced (its record fsynced), reports to the processes.
The baseline: a host and a client written by hand with the same frames (the same encoding,
checksum and SLIP framing), the same flash emulation, over a unix socket with asyncio streams,
and nothing else: no record, no retransmission, no phase check beyond the sequence number. The
two alternate, on the same loop.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from supervisor._supervision.node import Node

from ._harness import BenchOptions, BenchResult, median

CHUNK = 256
SECTOR = 65536


async def _ours(directory: Path, image: bytes) -> tuple[float, float]:
    from processes.protocol import ProtocolRole, executors, register
    from processes.protocol.examples.bootloader import SPEC

    register(SPEC)
    gc.collect()
    (directory / "image.bin").write_bytes(image)
    node = Node(
        machines=[ProtocolRole],
        executors=executors(directory / "run", directory / "logs"),
        store=str(directory / "store.db"),
    )
    await node.start()
    link = f"unix:{directory / 'link.sock'}"
    flash = {
        "flash": str(directory / "flash.bin"),
        "size": max(SECTOR, -(-len(image) // SECTOR) * SECTOR),
        "sector_size": SECTOR,
    }
    started = time.perf_counter()
    client = await node.spawn(
        ProtocolRole, {"protocol": "bootloader", "role": "client", "link": link, "options": flash}
    )
    host = await node.spawn(
        ProtocolRole,
        {"protocol": "bootloader", "role": "host", "link": link, "options": {"image": str(directory / "image.bin")}},
    )
    ended = await host.wait(timeout=300)
    await client.wait(timeout=300)
    elapsed = time.perf_counter() - started
    await node.shutdown()
    if ended.result is None or ended.result.get("terminal") != "boot":
        raise RuntimeError(f"the transfer did not complete: {ended.error or ended.result}")
    if (directory / "flash.bin").read_bytes()[: len(image)] != image:
        raise RuntimeError("the flash does not hold the image")
    # Steps per second from the host's first step to its end, as the baseline's are counted;
    # image_seconds is the whole of it, from spawning the two processes to both ended.
    return ended.result["steps"] / ended.result["run_seconds"], elapsed


async def _baseline(directory: Path, image: bytes) -> float:
    """A hand-written host and client: the same frames, flash and socket; nothing else."""
    from processes.protocol._wire import END, Deframer, decode_frame, encode_frame, stuff
    from processes.protocol.examples.bootloader import FileFlash

    gc.collect()
    path = str(directory / "baseline.sock")
    size = max(SECTOR, -(-len(image) // SECTOR) * SECTOR)
    flash = FileFlash(directory / "baseline.flash", size=size, sector_size=SECTOR)
    digest = hashlib.sha256(image).digest()
    delimiter = bytes([END])
    served = asyncio.get_running_loop().create_future()

    async def frames(reader: asyncio.StreamReader) -> Any:
        deframer = Deframer()
        while True:
            data = await reader.readuntil(delimiter)
            for frame in deframer.feed(data):
                return decode_frame(frame)

    def answer(writer: asyncio.StreamWriter, seq: int, step: str, body: list[Any]) -> None:
        writer.write(stuff(encode_frame(1, "bootloader", 2, "run", seq, step, body)))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            frame = await frames(reader)
            body = frame.body
            if body[0] == "Start":
                answer(writer, frame.seq, frame.step, ["Accepted", SECTOR])
            elif body[0] == "Erase":
                flash.erase(body[1], body[2])
                answer(writer, frame.seq, frame.step, ["Erased", body[1]])
            elif body[0] == "Chunk":
                answer(writer, frame.seq, frame.step, ["Written", body[1], flash.program(body[1], body[2])])
            elif body[0] == "Boot":
                answer(
                    writer, frame.seq, frame.step, ["Booted" if flash.boot(len(image), body[1]) else "Refused", body[1]]
                )
                await writer.drain()
                writer.close()
                served.set_result(None)
                return

    server = await asyncio.start_unix_server(client, path)
    reader, writer = await asyncio.open_unix_connection(path)
    seq = 0

    async def ask(step: str, body: list[Any]) -> Any:
        nonlocal seq
        seq += 1
        writer.write(stuff(encode_frame(0, "bootloader", 2, "run", seq, step, body)))
        frame = await frames(reader)
        if frame.seq != seq or frame.step != step:
            raise RuntimeError(f"out of step: {frame}")
        return frame.body

    started = time.perf_counter()
    await ask("start", ["Start", len(image), digest, CHUNK])
    for sector in range(0, len(image), SECTOR):
        await ask("erase_sector", ["Erase", sector, SECTOR])
        for offset in range(sector, min(sector + SECTOR, len(image)), CHUNK):
            data = image[offset : min(offset + CHUNK, sector + SECTOR, len(image))]
            await ask("write_next_chunk", ["Chunk", offset, data])
    booted = await ask("boot", ["Boot", digest])
    elapsed = time.perf_counter() - started
    await served
    writer.close()
    server.close()
    await server.wait_closed()
    flash.close()
    if booted[0] != "Booted":
        raise RuntimeError("the baseline's flash does not hold the image")
    return seq / elapsed


async def protocol(options: BenchOptions) -> BenchResult:
    size = max(16 * 1024, int((1 << 20) * options.scale))
    image = os.urandom(size)
    ours: list[float] = []
    seconds: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory(prefix="statevisor-bench-") as directory:
        for repeat in range(options.repeats):
            run = Path(directory) / str(repeat)
            run.mkdir(mode=0o700)  # the store's directory, owner-only as a daemon's is
            rate, elapsed = await _ours(run, image)
            ours.append(rate)
            seconds.append(elapsed)
            raw.append(await _baseline(run, image))
    steps, baseline = median(ours), median(raw)
    result = BenchResult(
        "protocol",
        {
            "steps_per_s": steps,
            "baseline_per_s": baseline,
            "ratio": steps / baseline,
            "image_seconds": median(seconds),
        },
    )
    result.lines = [
        f"the bootloader: a {size // 1024} KiB image in {CHUNK}-byte chunks, {SECTOR // 1024} KiB sectors, "
        f"{options.repeats} repeats (medians)",
        f"ours: two protocol role processes on a Node with its SQLite store, over a unix socket, {options.loop} loop;",
        "every frame recorded, each erase's answer fenced (fsynced); steps/s from the host's first step to its",
        "end, as the baseline's",
        "baseline: a hand-written host and client with the same frames, flash emulation and kind of socket",
        "(asyncio streams), without record, retransmission or phase checks",
        "image_seconds: our transfer of the whole image, spawn to end",
    ]
    return result
