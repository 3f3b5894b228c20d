"""The control socket's file kept at its path: deleted under a running server, it is made
again; replaced by someone's file, it is reported and never removed. Real unix sockets."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import supervisor.control._socket_file as socket_file
from supervisor import Node
from supervisor.control import Client, ControlServer
from tests.helpers import wait_until
from tests.machines import Counter


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[ControlServer, Path]]:
    monkeypatch.setattr(socket_file, "CHECK_INTERVAL", 0.02)
    host = Node(machines=[Counter])
    await host.start()
    path = tmp_path / "run" / "control.sock"
    path.parent.mkdir()
    server = ControlServer(host, str(path))
    await server.start()
    yield server, path
    await server.close()
    await host.shutdown()


async def answers(path: Path) -> bool:
    try:
        async with Client.connect(str(path), connect_timeout=2) as client:
            await client.summary()
    except OSError:
        return False
    return True


async def more_checks(server: ControlServer, count: int) -> None:
    keeper = server._keeper
    assert keeper is not None
    done = keeper.checks + count
    await wait_until(lambda: keeper.checks >= done)


async def test_a_deleted_socket_file_is_made_again_and_connections_stay(served: tuple[ControlServer, Path]) -> None:
    """Removing the socket file under a running server: a client connected before keeps
    working, the server listens again at the same path (owner-only), new clients reach it,
    and it says so (control_socket_restored)."""
    _, path = served
    async with Client.connect(str(path)) as before:
        with capture_logs() as logs:
            os.unlink(path)
            await wait_until(lambda: any(e["event"] == "control_socket_restored" for e in logs))
        assert await answers(path)
        assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)
        assert (await before.summary()).live == 0


async def test_a_removed_directory_is_reported_once_and_the_socket_comes_back_with_it(
    served: tuple[ControlServer, Path],
) -> None:
    """With its directory gone too, the socket cannot be made: that is said once, not at every
    check, and the socket is made as soon as the directory is back."""
    server, path = served
    with capture_logs() as logs:
        shutil.rmtree(path.parent)
        await wait_until(lambda: any(e["event"] == "control_socket_not_restored" for e in logs))
        await more_checks(server, 10)  # which must not say it again
        path.parent.mkdir()
        await wait_until(lambda: any(e["event"] == "control_socket_restored" for e in logs))
    assert 1 == sum(e["event"] == "control_socket_not_restored" for e in logs)
    assert await answers(path)


async def test_a_file_put_in_the_sockets_place_is_reported_and_never_removed(
    served: tuple[ControlServer, Path],
) -> None:
    """Someone's file at the socket's path is not the daemon's: it is reported once
    (control_socket_replaced), left in place, and not removed when the server closes."""
    server, path = served
    with capture_logs() as logs:
        os.unlink(path)
        path.write_text("someone's notes")
        await wait_until(lambda: any(e["event"] == "control_socket_replaced" for e in logs))
        await more_checks(server, 10)
    assert 1 == sum(e["event"] == "control_socket_replaced" for e in logs)
    await server.close()
    assert "someone's notes" == path.read_text()
