"""The bootloader over a pty: two protocol role processes on a node, a host flashing an image
into a client that emulates a device's flash, then the run's sequence diagram.

The client listens (it creates the pty pair and publishes its terminal at the path, as a
device's serial port appears); the host opens it. Each role records its run; a role restarted
after a crash replays its record through the same protocol function and goes on live.
"""

import asyncio
import os
import tempfile
from pathlib import Path

from processes.protocol import KIND as PROTOCOL
from processes.protocol import register, run_sequence
from processes.protocol.examples.bootloader import SPEC
from supervisor import Node
from supervisor.lowlevel import KindSetup

register(SPEC)  # a daemon finds it through its entry point; registering it again does nothing


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        image = os.urandom(100_000)
        (base / "firmware.bin").write_bytes(image)
        machine, executors = PROTOCOL.build(KindSetup(config_dir=base, log_dir=base / "logs", run_dir=base / "runs"))
        node = Node(machines=[machine], executors=executors, store=str(base / "store.db"))
        await node.start()

        link = f"pty:{base / 'ttyFLASH'}"
        flash = {"flash": str(base / "flash.bin"), "size": 262_144, "sector_size": 65_536}
        device = await node.spawn(
            "protocol", {"protocol": "bootloader", "role": "client", "link": link, "options": flash}, name="device"
        )
        host = await node.spawn(
            "protocol",
            {"protocol": "bootloader", "role": "host", "link": link, "options": {"image": str(base / "firmware.bin")}},
            name="flasher",
        )
        ended = await host.wait(timeout=60)
        await device.wait(timeout=60)
        print(ended.lifecycle, ended.result["terminal"], ended.result["steps"], "steps")  # finished boot 395 steps
        print("flashed:", (base / "flash.bin").read_bytes()[: len(image)] == image)  # True
        print(run_sequence(transcript=await host.logs("stdout", 10_000)))  # Mermaid, from the record
        await node.shutdown()


asyncio.run(main())
