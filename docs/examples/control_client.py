"""A running daemon's processes through the control API: the same handle API, remotely.

The daemon's socket comes from STATEVISOR_SOCKET, as for the command line. The daemon this runs
against declares a ticker process named t1 (processes.examples.Ticker: it counts on a timer
and answers the call "ticks").
"""

import asyncio
import os

from supervisor import ProcessKilled
from supervisor.control import Client


async def main() -> None:
    async with Client.connect(os.environ["STATEVISOR_SOCKET"]) as client:
        print(await client.summary())
        t1 = await client.get("t1")  # by id or by name
        print(t1.name, "ticks:", await t1.call("ticks", timeout=5))

        mine = await client.spawn("ticker", {"interval": 0.05}, name="counting")
        async for snapshot in mine.watch():  # reconnects and resumes if the daemon restarts
            print("version", snapshot.version, snapshot.lifecycle, snapshot.waiting_on)
            if snapshot.state["ticks"] >= 3:
                break
        stats = await mine.statistics()
        print("transitions:", stats.transitions, "| mailbox:", stats.mailbox_depth)
        await mine.kill("example done")
        try:
            await mine.result()
        except ProcessKilled as exc:  # the same exception classes as in-process handles
            print("ended:", exc)
        for snapshot in await client.list(kind="ticker"):
            print(snapshot.name, snapshot.lifecycle, snapshot.state)


asyncio.run(main())
