"""Where the handle suite's handles come from: the same tests run on in-process handles and on
remote ones (a control server on a unix socket over the same Node, a client in the same loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supervisor import DriveMode, HandleAPI, Machine, Node
from supervisor.control import Client, ControlServer


class HandleSource:
    """Spawns processes on a Node and hands out in-process or remote handles to them."""

    def __init__(self, remote: bool, directory: Path) -> None:
        self.remote = remote
        self.directory = directory
        self._host: Node | None = None
        self._server: ControlServer | None = None
        self._client: Client | None = None

    async def host(
        self,
        *,
        executors: dict[str, Any] | None = None,
        nudge_buffer: int = 64,
        mailbox_size: int = 1024,
        kill_grace: float = 5.0,
    ) -> Node:
        host = Node(executors=executors, kill_grace=kill_grace)
        host.runtime.nudge_buffer = nudge_buffer
        host.runtime.mailbox_size = mailbox_size
        await host.start()
        self._host = host
        if self.remote:
            path = str(self.directory / "control.sock")
            self._server = ControlServer(host, path)
            await self._server.start()
            self._client = Client.connect(path)
            await self._client.open()
        return host

    async def spawn(
        self,
        machine: Machine[Any] | type[Machine[Any]],
        state: dict[str, Any] | None = None,
        *,
        mode: DriveMode = DriveMode.AUTO,
        name: str | None = None,
    ) -> HandleAPI:
        if self._host is None:
            await self.host()
        assert self._host is not None
        handle = await self._host.spawn(machine, state, mode=mode, name=name)
        if self._client is None:
            return handle
        return await self._client.get(handle.pid)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._server is not None:
            await self._server.close()
        if self._host is not None:
            await self._host.shutdown(timeout=5)

    def __repr__(self) -> str:
        return f"<HandleSource {'remote' if self.remote else 'in-process'}>"
