"""Reading logs for callers (tails, follows): on log-reader threads, never on the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from supervisor import _logrotation, _logtail
from supervisor._logtail import READER_THREADS, follow_positions, read_tail


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
    assert "ran" == await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 1.0)
    gate.set()
    assert [["x"]] * len(tails) == await asyncio.wait_for(asyncio.gather(*tails), 10)
