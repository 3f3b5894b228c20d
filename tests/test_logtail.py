"""Reading logs for callers (tails, follows): on log-reader threads, never on the event loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from supervisor._files import logrotation as _logrotation
from supervisor._files import logtail as _logtail
from supervisor._files.logtail import READER_THREADS, follow_positions, read_tail
from supervisor._files.readers import ReaderThreads


def hang_until(gate: threading.Event, entered: threading.Event, real: Any) -> Any:
    """``real``, made to hang (as on a hung NFS mount) until ``gate`` opens (at most 3 s)."""

    def hanging(*args: Any) -> Any:
        entered.set()
        gate.wait(3)
        return real(*args)

    return hanging


async def loop_keeps_running(seconds: float) -> float:
    """How long ``seconds`` of short sleeps took: about ``seconds`` on a loop that runs, much
    more on one that a blocking call holds."""
    started = time.monotonic()
    for _ in range(10):
        await asyncio.sleep(seconds / 10)
    return time.monotonic() - started


async def test_a_follow_whose_read_hangs_holds_up_that_follow_not_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower's read runs on a log-reader thread: while it hangs, the loop goes on (timers
    fire on time), and the follower gets its lines, with their offsets, once the read returns."""
    log = tmp_path / "out.log"
    log.write_text("one\ntwo\n")
    gate, entered = threading.Event(), threading.Event()
    monkeypatch.setattr(_logrotation, "_read", hang_until(gate, entered, _logrotation._read))
    follower = follow_positions(log, start=0)
    first = asyncio.ensure_future(anext(follower))
    assert await asyncio.to_thread(entered.wait, 10)
    assert await loop_keeps_running(0.3) < 2.0  # the old code: held for the whole 3 s hang
    assert not first.done()
    gate.set()
    assert ("one", 4) == await asyncio.wait_for(first, 10)
    assert ("two", 8) == await asyncio.wait_for(anext(follower), 10)
    assert isinstance(follower, AsyncGenerator)
    await follower.aclose()


async def test_a_tail_whose_read_hangs_holds_up_that_tail_not_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handle.logs and the control API's logs read the tail on a log-reader thread too."""
    log = tmp_path / "out.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    gate, entered = threading.Event(), threading.Event()
    monkeypatch.setattr(_logtail, "_read_backwards", hang_until(gate, entered, _logtail._read_backwards))
    tail = asyncio.ensure_future(read_tail(log, 3))
    assert await asyncio.to_thread(entered.wait, 10)
    assert await loop_keeps_running(0.3) < 2.0
    gate.set()
    assert ["line 97", "line 98", "line 99"] == await asyncio.wait_for(tail, 10)


async def test_log_readers_have_threads_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """However many callers read logs at once, they use at most READER_THREADS threads, none of
    the default executor's: with every log reader hung, asyncio.to_thread still runs at once."""
    log = tmp_path / "out.log"
    log.write_text("x\n")
    gate, entered = threading.Event(), threading.Event()
    monkeypatch.setattr(_logtail, "_read_backwards", hang_until(gate, entered, _logtail._read_backwards))
    tails = [asyncio.ensure_future(read_tail(log, 1)) for _ in range(4 * READER_THREADS)]
    assert await asyncio.to_thread(entered.wait, 10)
    readers = [t for t in threading.enumerate() if t.name.startswith("statevisor-logs")]
    assert 1 <= len(readers) <= READER_THREADS
    assert all(t.daemon for t in readers)  # a read hung for good never holds up an exit
    assert "ran" == await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 1.0)
    gate.set()
    assert [["x"]] * len(tails) == await asyncio.wait_for(asyncio.gather(*tails), 10)


async def test_a_reader_passes_on_the_exception_of_its_read_and_serves_on() -> None:
    """A read that raises hands its exception to its caller; the thread takes the next read."""
    readers = ReaderThreads(1, "test-readers")

    def broken() -> None:
        raise PermissionError("log unreadable")

    with pytest.raises(PermissionError, match="log unreadable"):
        await readers.run(broken)
    assert 42 == await readers.run(int, "42")
    assert "1/1 threads" in repr(readers)


async def test_a_caller_that_gives_up_leaves_the_reader_serving_the_next() -> None:
    """A caller cancelled while its read is under way gets CancelledError; the read's late
    result is dropped, and the thread serves the next caller."""
    readers = ReaderThreads(1, "test-readers")
    started, gate = threading.Event(), threading.Event()

    def slow_read() -> None:
        started.set()
        gate.wait(10)

    waiting = asyncio.ensure_future(readers.run(slow_read))
    assert await asyncio.to_thread(started.wait, 10)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    gate.set()
    assert "after" == await asyncio.wait_for(readers.run(str, "after"), 10)


def test_a_read_hung_for_good_does_not_keep_a_process_from_exiting() -> None:
    """The interpreter joins a ThreadPoolExecutor's threads at exit, so one read hung on a dead
    file system would keep a stopped daemon from exiting; log-reader threads are daemon threads
    and the process exits with its read still hung."""
    program = (
        "import asyncio, threading\n"
        "from supervisor._files.readers import ReaderThreads\n"
        "async def main():\n"
        "    readers = ReaderThreads(1, 'hung')\n"
        "    task = asyncio.ensure_future(readers.run(threading.Event().wait))\n"
        "    await asyncio.sleep(0.2)\n"
        "    task.cancel()\n"
        "asyncio.run(main())\n"
        "print('exiting', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False)
    assert (0, "exiting\n") == (done.returncode, done.stdout), done.stderr
