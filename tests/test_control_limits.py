"""What the control server refuses to hold for a client: connections past
``daemon.max_connections`` and requests in flight past MAX_IN_FLIGHT on one connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor import ConfigurationError, Node
from supervisor.control import Client, ControlServer
from supervisor.control import _server as server_module
from supervisor.control._errors import ConnectionDenied, DaemonNotAnswering, ProtocolError
from tests.helpers import wait_until
from tests.machines import Counter


async def test_connections_past_the_limit_are_refused_saying_why_and_served_again_once_some_close(
    tmp_path: Path,
) -> None:
    """With max_connections=3 the fourth client is refused at once (ConnectionDenied naming
    daemon.max_connections), the three go on working, and after one closes a new one is served."""
    host = Node(machines=[Counter])
    await host.start()
    path = str(tmp_path / "c.sock")
    server = ControlServer(host, path, max_connections=3)
    await server.start()
    clients = [Client.connect(path) for _ in range(3)]
    try:
        for client in clients:
            await client.open()
        late = Client.connect(path)
        with pytest.raises(ConnectionDenied, match=r"serves 3 control connections already \(daemon.max_connections\)"):
            await late.open()
        assert 1 == server.refused
        pid = (await host.spawn(Counter, {"n": 0})).pid
        assert [0, 0, 0] == [await (await c.get(pid)).call("get") for c in clients]
        await clients.pop().close()
        await wait_until(lambda: server.connections == 2)
        again = Client.connect(path)
        await again.open()
        clients.append(again)
        assert 0 == await (await again.get(pid)).call("get")
    finally:
        for client in clients:
            await client.close()
        await server.close()
        await host.shutdown()


async def test_requests_past_the_in_flight_limit_are_refused_and_the_others_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection with MAX_IN_FLIGHT (5 here) requests unanswered gets the next one refused
    with a ProtocolError saying so; the five are answered as usual, and the connection serves
    on once they are."""
    monkeypatch.setattr(server_module, "MAX_IN_FLIGHT", 5)
    host = Node(machines=[Counter])
    await host.start()
    path = str(tmp_path / "c.sock")
    server = ControlServer(host, path)
    await server.start()
    client = Client.connect(path)
    await client.open()
    try:
        local = await host.spawn(Counter, {"n": 0})
        handle = await client.get(local.pid)
        waits = [asyncio.ensure_future(handle.wait()) for _ in range(5)]
        await wait_until(lambda: sum(len(c.tasks) for c in server._connections) == 5)
        with pytest.raises(ProtocolError, match="5 requests are in flight on this connection already"):
            await handle.wait()
        assert not any(w.done() for w in waits)
        await local.kill("enough")  # in-process: this connection has no room for a kill now
        ended = await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert {"killed"} == {str(s.lifecycle) for s in ended}
        assert 2 == await (await client.get((await host.spawn(Counter, {"n": 2})).pid)).call("get")
    finally:
        await client.close()
        await server.close()
        await host.shutdown()


def test_max_connections_must_be_a_whole_number_of_at_least_one() -> None:
    """A server with no room for any connection is a configuration error, named."""
    with pytest.raises(ConfigurationError, match="max_connections must be a whole number >= 1; got 0"):
        ControlServer(Node(), "/nowhere.sock", max_connections=0)


async def test_refused_connections_are_all_counted_but_logged_at_most_once_a_minute_per_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client retrying in a loop against a full daemon is refused every time and counted
    every time, but logged once per REFUSAL_LOG_INTERVAL (the next line says how many went
    unlogged): the log cannot be filled by refusals."""
    from structlog.testing import capture_logs

    host = Node(machines=[Counter])
    await host.start()
    path = str(tmp_path / "c.sock")
    server = ControlServer(host, path, max_connections=1)
    await server.start()
    holder = Client.connect(path)
    await holder.open()
    try:
        with capture_logs() as logged:
            for _ in range(20):
                with pytest.raises(ConnectionDenied):
                    await Client.connect(path).open()
            assert 20 == server.refused
            assert 1 == len([e for e in logged if e["event"] == "control_refused"])
            monkeypatch.setattr(server_module, "REFUSAL_LOG_INTERVAL", 0.0)
            with pytest.raises(ConnectionDenied):
                await Client.connect(path).open()
        refusals = [e for e in logged if e["event"] == "control_refused"]
        assert [0, 19] == [e["unlogged_since"] for e in refusals]
        assert {"too many connections"} == {e["reason"] for e in refusals}
    finally:
        await holder.close()
        await server.close()
        await host.shutdown()


async def test_a_connection_that_does_not_greet_in_time_is_closed_and_a_greeted_one_is_not(tmp_path: Path) -> None:
    """On TCP, a peer that connects and says nothing, or trickles half a frame, is told why
    and closed once hello_timeout is up, and no longer counts against max_connections; a
    client that greeted in time is served on past that moment."""
    from supervisor.control._protocol import read_frame

    host = Node(machines=[Counter])
    await host.start()
    token = "t" * 32
    server = ControlServer(host, str(tmp_path / "c.sock"), tcp=("127.0.0.1", 0), token=token)
    server.hello_timeout = 0.3
    await server.start()
    assert server.tcp_port is not None
    client = Client.connect_tcp("127.0.0.1", server.tcp_port, token=token)
    await client.open()
    peers: list[asyncio.StreamWriter] = []
    try:
        silent = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        trickling = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        peers += [silent[1], trickling[1]]
        trickling[1].write(b"\x00\x00")  # half a length prefix, and then nothing
        await wait_until(lambda: server.connections == 3)
        for reader, _ in (silent, trickling):
            answer = await asyncio.wait_for(read_frame(reader, 1 << 20), 10)
            assert answer is not None
            assert "no hello within 0.3 s of connecting" in answer["error"]["message"]
            assert b"" == await asyncio.wait_for(reader.read(), 10)  # then closed
        await wait_until(lambda: server.connections == 1)
        assert 2 == server.refused
        pid = (await host.spawn(Counter, {"n": 4})).pid
        assert 4 == await (await client.get(pid)).call("get")
    finally:
        for peer in peers:
            peer.close()
        await client.close()
        await server.close()
        await host.shutdown()


async def test_a_client_gives_up_on_a_daemon_that_accepts_but_never_answers(tmp_path: Path) -> None:
    """A stopped or stuck daemon still has its connections accepted by the kernel: opening a
    client to one fails after connect_timeout with a TimeoutError naming the socket, and leaves
    no connection open behind it."""
    path = str(tmp_path / "stuck.sock")
    accepted: list[asyncio.StreamWriter] = []
    hung_up = asyncio.Event()

    async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # until the client goes away
        hung_up.set()

    stuck = await asyncio.start_unix_server(say_nothing, path=path)
    try:
        client = Client.connect(path, connect_timeout=0.3)
        with pytest.raises(DaemonNotAnswering, match=f"the daemon at {path} did not answer within 0.3 s"):
            await client.open()
        await asyncio.wait_for(hung_up.wait(), 10)
        assert 1 == len(accepted)
        assert not client.connected
    finally:
        for writer in accepted:
            writer.close()
        stuck.close()
        await stuck.wait_closed()
