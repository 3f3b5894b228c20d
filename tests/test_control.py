"""The control API: protocol, server and client, remote handles; and a fuzzed socket."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import stat
import struct
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from supervisor import (
    Cast,
    ConfigurationError,
    Context,
    Input,
    Lifecycle,
    Machine,
    Node,
    ProcessFinished,
    ProcessNotFound,
    Snapshot,
    TransitionError,
    WouldBlock,
)
from supervisor.control import MAX_FRAME, Client, ControlServer, ProtocolError
from tests.helpers import Recorder, wait_until
from tests.machines import Counter, Worker


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Node, ControlServer, str]]:
    host = Node(machines=[Counter, Worker], executors={"work": Recorder(), "record": Recorder()})
    await host.start()
    path = str(tmp_path / "control.sock")
    server = ControlServer(host, path)
    await server.start()
    yield host, server, path
    await server.close()
    await host.runtime.kill_all()


async def test_the_socket_is_owner_only(served: tuple[Node, ControlServer, str]) -> None:
    """The control socket is created with mode 0600."""
    _, _, path = served
    assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)


async def test_remote_handles_drive_processes_like_local_ones(served: tuple[Node, ControlServer, str]) -> None:
    """spawn, cast, call, state, pause/resume, kill and wait work over the socket, and errors
    arrive as the same classes as in process."""
    host, _, path = served
    async with Client.connect(path) as client:
        handle = await client.spawn("counter", {"n": 1}, name="remote-counter")
        await handle.cast(4)
        assert 5 == await handle.call("get", timeout=5)
        with pytest.raises(TransitionError) as caught:
            await handle.call("boom")
        assert ("ValueError", "boom after emitting") == (caught.value.error_type, caught.value.message)
        await handle.pause()
        assert (await handle.snapshot()).paused
        await handle.resume()
        assert 5 == host.find("remote-counter").snapshot().state["n"]
        final = await handle.kill("done remotely")
        assert (Lifecycle.KILLED, "done remotely") == (final.lifecycle, final.error)
        assert Lifecycle.KILLED == (await handle.wait(timeout=5)).lifecycle
        with pytest.raises(ProcessNotFound):
            await client.get("nobody")
        finished = await client.spawn("counter")
        await finished.call("finish")
        await finished.wait(timeout=5)
        with pytest.raises((ProcessFinished, ProcessNotFound)):
            await finished.call("get")


async def test_a_remote_spawn_with_a_bad_name_is_refused_and_the_connection_goes_on(
    served: tuple[Node, ControlServer, str],
) -> None:
    """A name that would lead out of the log directory comes back as ConfigurationError naming
    it; nothing is spawned and the same connection serves the next request."""
    host, _, path = served
    async with Client.connect(path) as client:
        with pytest.raises(ConfigurationError, match=r"process name '\.\./escape' has the path part '\.\.'"):
            await client.spawn("counter", name="../escape")
        assert [] == host.list()
        handle = await client.spawn("counter", name="fine")
        assert "fine" == (await handle.snapshot()).name
        await handle.kill()


async def test_try_operations_raise_would_block_remotely(served: tuple[Node, ControlServer, str]) -> None:
    """try_cast on a full mailbox raises WouldBlock through the socket too."""
    host, _, path = served
    host.runtime.mailbox_size = 1
    async with Client.connect(path) as client:
        handle = await client.spawn("counter")
        await handle.pause()
        await handle.try_cast(1)
        with pytest.raises(WouldBlock, match="mailbox is full"):
            await handle.try_cast(1)
        await handle.kill()


async def test_remote_watch_streams_to_the_terminal_snapshot(served: tuple[Node, ControlServer, str]) -> None:
    """watch() over the socket yields snapshots and ends with the terminal one."""
    _, _, path = served
    async with Client.connect(path) as client:
        handle = await client.spawn("counter", {"n": 0})
        seen: list[int] = []

        async def watcher() -> Lifecycle:
            last = Lifecycle.CREATED
            async for snapshot in handle.watch():
                seen.append(snapshot.state.get("n", 0))
                last = snapshot.lifecycle
            return last

        watching = asyncio.ensure_future(watcher())
        for _ in range(20):
            await handle.cast(1)
        assert "bye" == await handle.call("finish")
        assert Lifecycle.FINISHED == await asyncio.wait_for(watching, 10)
        assert 20 == seen[-1]
        assert seen == sorted(seen)
        listed = await client.list()
        assert handle.pid not in {s.pid for s in listed}


async def test_another_uid_is_refused(tmp_path: Path) -> None:
    """A peer whose uid is not allowed is disconnected before any request is read."""
    host = Node(machines=[Counter])
    await host.start()
    path = str(tmp_path / "c.sock")
    server = ControlServer(host, path, allow_uids={os.getuid() + 4242})
    await server.start()
    with pytest.raises((ProtocolError, ConnectionError, asyncio.IncompleteReadError)):
        async with Client.connect(path):
            pass
    assert 1 == server.refused
    await server.close()


async def raw_exchange(path: str, frames: list[bytes]) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_unix_connection(path)
    for frame in frames:
        writer.write(frame)
    await writer.drain()
    replies: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(5):
            while len(replies) < len(frames):
                header = await reader.readexactly(4)
                replies.append(msgpack.unpackb(await reader.readexactly(struct.unpack(">I", header)[0])))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()
    return replies


def frame(message: object) -> bytes:
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


async def test_protocol_errors_get_error_frames(served: tuple[Node, ControlServer, str]) -> None:
    """No hello first: error and close. Unknown operation, bad arguments (wrong type, or nil for a
    required one): an error frame naming the problem, and the connection stays usable. An
    oversized frame: error and close."""
    _, _, path = served
    (no_hello,) = await raw_exchange(path, [frame({"id": 1, "op": "list", "args": {}})])
    assert "expected hello" in no_hello["error"]["message"]  # type: ignore[index]
    hello = frame({"id": 0, "op": "hello", "v": 1})
    replies = await raw_exchange(path, [hello, frame({"id": 1, "op": "explode"}),
                                        frame({"id": 2, "op": "cast", "args": {"pid": 7}}),
                                        frame({"id": 3, "op": "list", "args": {}}),
                                        frame({"id": 4, "op": "call", "args": {"pid": None}})])  # fmt: skip
    assert "unknown operation 'explode'" in replies[1]["error"]["message"]  # type: ignore[index]
    assert "argument 'pid' must be str" in replies[2]["error"]["message"]  # type: ignore[index]
    assert replies[3]["ok"] is True
    # A required argument sent as nil is refused by name (the fuzzer found it reaching lookup).
    assert replies[4]["error"]["type"] == "ProtocolError", replies[4]  # type: ignore[index]
    assert "argument 'pid' must be str, not nil" in replies[4]["error"]["message"]  # type: ignore[index]
    oversized = await raw_exchange(path, [hello, struct.pack(">I", 50 << 20)])
    assert "over the" in oversized[-1]["error"]["message"]  # type: ignore[index]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mutate(rng: random.Random, data: bytes) -> bytes:
    changed = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        changed[rng.randrange(len(changed))] = rng.randrange(256)
    return bytes(changed)


def random_value(rng: random.Random, depth: int = 0) -> object:
    choice = rng.randrange(8 if depth < 3 else 5)
    if choice == 0:
        return rng.randint(-(2**40), 2**40)
    if choice == 1:
        return rng.choice(["", "pid", "op", "x" * rng.randint(0, 50), "cast", "watch"])
    if choice == 2:
        return rng.random()
    if choice == 3:
        return None if rng.random() < 0.5 else rng.random() < 0.5
    if choice == 4:
        return rng.randbytes(rng.randint(0, 20))
    if choice == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_value(rng, 3): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def fuzz_frame(rng: random.Random) -> bytes:
    ops = ["spawn", "state", "list", "cast", "call", "nudge", "pause", "resume", "kill", "wait", "watch", "cancel", "x"]
    kind = rng.randrange(6)
    if kind == 0:
        return frame({"id": rng.randint(1, 10_000), "op": rng.choice(ops), "args": random_value(rng)})
    if kind == 1:
        args = {"pid": rng.choice(["nobody", 3, None]), "message": random_value(rng), "timeout": rng.random() / 100,
                "kind": rng.choice(["counter", "worker", "nope", 1]), "reason": random_value(rng)}  # fmt: skip
        return frame({"id": rng.randint(1, 10_000), "op": rng.choice(ops), "args": args})
    if kind == 2:
        return frame(random_value(rng))
    if kind == 3:
        return mutate(rng, frame({"id": 5, "op": "list", "args": {}}))
    if kind == 4:
        body = rng.randbytes(rng.randint(0, 64))
        return struct.pack(">I", len(body)) + body
    return struct.pack(">I", rng.randint(0, 2**32 - 1)) + rng.randbytes(rng.randint(0, 16))


async def test_ten_thousand_fuzzed_frames_leave_the_daemon_serving(served: tuple[Node, ControlServer, str]) -> None:
    """10,000 random and mutated frames (seeded): the server stays up, answers every bad request
    with an error naming it (none reaches a bug: no InternalError), serves a well-formed client
    afterwards, and leaks no file descriptors or tasks."""
    host, server, path = served
    rng = random.Random(20261122)
    gc.collect()  # earlier tests' unreachable sockets must not be counted as ours, then as closed
    fds, tasks = open_fds(), len(asyncio.all_tasks())
    sent = 0
    while sent < 10_000:
        batch = [fuzz_frame(rng) for _ in range(rng.randint(1, 50))]
        sent += len(batch)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(frame({"id": 0, "op": "hello", "v": 1}) + b"".join(batch))
        try:
            await writer.drain()
            async with asyncio.timeout(0.2):
                while await reader.read(65536):
                    pass
        except (ConnectionError, TimeoutError):
            pass
        writer.close()
        await writer.wait_closed()
    await wait_until(lambda: server.connections == 0)
    for handle in host.list():
        await handle.kill("fuzz cleanup")
    async with Client.connect(path) as client:
        remote = await client.spawn("counter", {"n": 41})
        await remote.cast(1)
        assert 42 == await remote.call("get", timeout=5)
        await remote.kill()
    await wait_until(lambda: server.connections == 0)
    assert server.internal_errors == 0, "a fuzzed request reached a bug instead of a ProtocolError"
    gc.collect()
    assert fds == open_fds()
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks)


async def test_tcp_requires_the_token(tmp_path: Path) -> None:
    """On TCP a client with the right token is served; no token or a wrong one is refused; a
    TCP server without a token cannot even be created."""
    from supervisor import ConfigurationError

    host = Node(machines=[Counter])
    await host.start()
    with pytest.raises(ConfigurationError, match="needs a token"):
        ControlServer(host, str(tmp_path / "a.sock"), tcp=("127.0.0.1", 0))
    server = ControlServer(host, str(tmp_path / "c.sock"), tcp=("127.0.0.1", 0), token="s3cret-token")
    await server.start()
    try:
        port = server.tcp_port
        assert port is not None
        async with Client.connect_tcp("127.0.0.1", port, token="s3cret-token") as client:
            handle = await client.spawn("counter", {"n": 2})
            assert 2 == await handle.call("get", timeout=5)
            await handle.kill()
        for wrong in ("", "guess"):
            with pytest.raises(ProtocolError, match="valid token is required"):
                async with Client.connect_tcp("127.0.0.1", port, token=wrong):
                    pass
        no_token = await raw_exchange_tcp(port, [frame({"id": 0, "op": "hello", "v": 1})])
        assert "valid token is required" in no_token[0]["error"]["message"]  # type: ignore[index]
        assert 3 == server.refused
    finally:
        await server.close()
        await host.runtime.kill_all()


async def raw_exchange_tcp(port: int, frames: list[bytes]) -> list[dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for data in frames:
        writer.write(data)
    await writer.drain()
    header = await reader.readexactly(4)
    reply = msgpack.unpackb(await reader.readexactly(struct.unpack(">I", header)[0]))
    writer.close()
    await writer.wait_closed()
    return [reply]


class Sink:
    """A watcher's end of a connection, recording frames; ``stuck`` makes it report a backlog."""

    def __init__(self, stuck: bool = False) -> None:
        self.frames: list[bytes] = []
        self.stuck = stuck

    def write_now(self, frame: bytes) -> None:
        self.frames.append(frame)

    def backlog(self) -> int:
        return 10**9 if self.stuck else 0


async def test_watch_fanout_skips_backlogged_watchers_but_always_sends_the_terminal() -> None:
    """One tick pushes the latest snapshot, encoded once, to every watcher behind; a watcher
    whose connection holds a backlog is skipped (it sees a later version), yet it gets the
    current snapshot at once and the terminal one at the end, and then its stream ends."""
    from supervisor.control._fanout import WatchFanout

    host = Node(machines=[Counter])
    handle = await host.spawn(Counter, {"n": 0})
    await handle.call("get")
    encoded: list[int] = []

    def encode(snapshot: Snapshot) -> bytes:
        encoded.append(snapshot.version)
        return msgpack.packb(["v", snapshot.version])  # type: ignore[no-any-return]

    fanout = WatchFanout(encode, lambda: 3600.0)  # the ticker never fires by itself: the test ticks
    fast, slow, other = Sink(), Sink(stuck=True), Sink()
    process = handle._process
    streams = [asyncio.ensure_future(fanout.watch(s, i, process)) for i, s in enumerate((fast, slow, other))]
    await wait_until(lambda: all(len(s.frames) == 1 for s in (fast, slow, other)))
    assert 3 == handle.statistics().watchers
    await handle.cast(1)
    await handle.call("get")
    before = len(encoded)
    fanout.tick()
    assert (2, 1, 2) == (len(fast.frames), len(slow.frames), len(other.frames))
    assert 1 == len(encoded) - before, "one encoding per version, whatever the number of watchers"
    fanout.tick()  # nothing changed: nothing sent
    assert (2, 1, 2) == (len(fast.frames), len(slow.frames), len(other.frames))
    final = await handle.kill()
    fanout.tick()
    await asyncio.wait_for(asyncio.gather(*streams), 5)
    terminal = msgpack.packb(["v", final.version])
    assert all(s.frames[-1].endswith(terminal) for s in (fast, slow, other))
    assert 0 == handle.statistics().watchers
    fanout.close()


async def test_watch_fanout_paces_many_streams_to_its_push_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tick interval is the configured one until the streams would together exceed the
    push budget; then it stretches to keep them within it."""
    from supervisor.control import _fanout

    host = Node(machines=[Counter])
    handle = await host.spawn(Counter, {"n": 0})
    fanout = _fanout.WatchFanout(lambda s: b"x", lambda: 0.05)
    sinks = [Sink() for _ in range(40)]
    streams = [asyncio.ensure_future(fanout.watch(s, i, handle._process)) for i, s in enumerate(sinks)]
    await wait_until(lambda: handle.statistics().watchers == 40)
    assert 0.05 == fanout.pace()  # 40 streams / 0.05 s = 800 pushes/s: within the default budget
    monkeypatch.setattr(_fanout, "PUSH_BUDGET", 200)
    assert 0.2 == fanout.pace()  # 40 streams at 200 pushes/s: one push each per 0.2 s
    await handle.kill()
    fanout.tick()
    await asyncio.wait_for(asyncio.gather(*streams), 5)
    fanout.close()


class Grower(Machine[dict[str, Any]]):
    """A state that grows on request: ("grow", n) stores n bytes of text."""

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Cast(("grow", int(size))):
                state["blob"] = "x" * size


async def test_a_snapshot_over_the_frame_limit_ends_its_own_watch_streams_not_everyones(tmp_path: Path) -> None:
    """A watched process whose snapshot outgrows a frame (1 MiB) ends its watchers' streams with
    an error that says so, and a watch started afterwards gets the same; watchers of other
    processes go on receiving (the one ticker that serves every stream must not die of it)."""
    host = Node(machines=[Counter, Grower])
    await host.start()
    server = ControlServer(host, str(tmp_path / "control.sock"))
    await server.start()
    try:
        async with Client.connect(str(tmp_path / "control.sock")) as client:
            small = await client.spawn("counter", {"n": 0})
            big = await client.spawn("grower")
            seen: list[int] = []

            async def watch_small() -> None:
                async for snapshot in small.watch():
                    seen.append(snapshot.state.get("n", 0))

            async def watch_big() -> None:
                async for _ in big.watch():
                    pass

            small_stream = asyncio.ensure_future(watch_small())
            big_stream = asyncio.ensure_future(watch_big())
            await wait_until(lambda: bool(seen))
            await big.cast(("grow", 2 * MAX_FRAME))
            with pytest.raises(ProtocolError, match=f"{big.pid}'s snapshot does not fit a frame .*-byte limit"):
                await asyncio.wait_for(big_stream, 10)
            with pytest.raises(ProtocolError, match=f"{big.pid}'s snapshot does not fit a frame .*-byte limit"):
                await asyncio.wait_for(watch_big(), 10)  # a watch started now hears the same
            await small.cast(5)
            await wait_until(lambda: 5 in seen)
            await small.kill()
            await asyncio.wait_for(small_stream, 10)
    finally:
        await server.close()
        await host.runtime.kill_all()


async def test_a_listing_larger_than_a_frame_arrives_whole_in_chunks(tmp_path: Path) -> None:
    """list() returns every live process, in order and each once, when their snapshots together
    are several frames (1,200 of ~2 KB: over 2 MiB); a process whose snapshot alone is over a
    frame is listed with its state left out and a note saying so, not failing the listing (and
    so is it in a single response: state, kill); a client from before chunking (no ``chunked``
    argument) still gets a small listing in one response."""
    host = Node(machines=[Grower])
    await host.start()
    server = ControlServer(host, str(tmp_path / "control.sock"))
    await server.start()
    try:
        handles = [await host.spawn(Grower, pid=f"g{i:04d}") for i in range(1200)]
        for handle in handles:
            await handle.cast(("grow", 2000))
        await handles[7].cast(("grow", 2 * MAX_FRAME))
        for handle in handles:
            await wait_until(lambda handle=handle: "blob" in handle.snapshot().state)  # type: ignore[misc]
        async with Client.connect(str(tmp_path / "control.sock")) as client:
            listed = await client.list()
            assert [h.pid for h in handles] == [s.pid for s in listed]
            assert all(s.state == {"blob": "x" * 2000} for i, s in enumerate(listed) if i != 7)
            assert str(listed[7].state).startswith("(state left out: the snapshot is 2097")
            assert "over a frame; see Machine.view()" in str(listed[7].state)
            huge = await client.get("g0007")  # a single snapshot in a response is trimmed alike
            assert str((await huge.snapshot()).state).startswith("(state left out: the snapshot is 2097")
            final = await huge.kill("too big")
            assert (Lifecycle.KILLED, True) == (final.lifecycle, str(final.state).startswith("(state left out"))
            small = [h for i, h in enumerate(handles) if i < 10 and i != 7]
            for handle in handles:
                if handle not in small:
                    await handle.kill()
            old_style = await client.request("list")
            assert [h.pid for h in small] == [fields["pid"] for fields in old_style]
    finally:
        await server.close()
        await host.runtime.kill_all()


async def test_a_watch_given_up_leaves_nothing_behind_in_the_server(served: tuple[Node, ControlServer, str]) -> None:
    """Watches that end before their process does (the client stops reading, or disconnects)
    leave the server holding no encoded snapshot and no watcher for the still-running process:
    a daemon watched on and off for months does not grow with it."""
    host, server, path = served
    handles = [await host.spawn("counter", {"n": i}) for i in range(20)]
    async with Client.connect(path) as client:
        for handle in handles[:10]:
            remote = await client.get(handle.pid)
            stream = remote.watch()
            assert isinstance(stream, AsyncGenerator)
            await anext(stream)
            await handle.cast(1)
            await anext(stream)  # pushed by the ticker: encoded and cached while watched
            await stream.aclose()  # the client cancels the stream
        await wait_until(lambda: server.fanout.cached == 0)
        watching = [await client.get(h.pid) for h in handles[10:]]
        streams = [w.watch() for w in watching]
        for stream in streams:
            await anext(stream)
        assert 10 == server.fanout.cached
    await wait_until(lambda: server.fanout.cached == 0)  # the connection went away with its streams
    assert all(h.statistics().watchers == 0 for h in handles)
    assert all(not h.snapshot().lifecycle.terminal for h in handles)
