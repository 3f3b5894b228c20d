"""A node of your own with the web console: its pages answer on loopback, read by anyone who can
reach them (read="open", allowed on loopback only); without control, nothing can be changed."""

import asyncio
import re

import aiohttp

from processes.examples import Ticker
from supervisor import Node
from supervisor.web import WebConsole


async def main() -> None:
    node = Node(machines=[Ticker])
    await node.start()
    await node.spawn(Ticker, {"interval": 0.5}, name="heartbeat")
    console = WebConsole(node, "127.0.0.1", 0, read="open")  # port 0: any free port
    await console.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(console.url + "/processes") as response:
            page = await response.text()
            print(response.status, re.findall(r">(heartbeat)</a>", page))
            print("server time:", response.headers["Server-Timing"])
    finally:
        await console.close()
        await node.runtime.kill_all()


asyncio.run(main())
