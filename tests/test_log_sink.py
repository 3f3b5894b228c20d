"""The daemon's log sink: a log reader that stalls or goes away never blocks the daemon, never
breaks what was logging, and every lost line is counted and reported."""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from supervisor.daemon.log import LogSink, configure, current_sink
from tests.test_daemon import ROOT, free_port, kill_if_running, scrape, wait_for

PIPE_SIZE = 4096  # the smallest pipe Linux makes: a few log lines fill it


def small_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    sink = current_sink()
    if sink is not None:
        sink.close(timeout=0.5)
    structlog.reset_defaults()


def test_a_stalled_reader_costs_lines_not_time_and_the_gap_is_reported() -> None:
    """With nobody reading a full pipe, 20,000 writes all return (the test would hang on a
    blocking write); past the capacity lines are dropped and counted; once the reader reads,
    what was queued arrives in order, with lines saying how many were lost where they were."""
    read_end, write_end = small_pipe()
    stream = os.fdopen(write_end, "w")
    sink = LogSink(stream, capacity=100)
    read: list[str] = []

    def read_until_eof() -> None:
        with os.fdopen(read_end, "r") as reader:
            read.extend(reader)

    reading = threading.Thread(target=read_until_eof)
    try:
        for index in range(20_000):
            sink.write(f'{{"event": "line", "n": {index}}}')
        dropped = sink.dropped  # final: every write has returned
        assert dropped > 0
        reading.start()
        assert sink.flush(timeout=30)
    finally:
        sink.close(timeout=1)
        stream.close()
        if reading.ident is not None:
            reading.join(timeout=30)
        else:  # never started
            os.close(read_end)
    entries = [json.loads(line) for line in read]
    numbers = [entry["n"] for entry in entries if entry["event"] == "line"]
    assert numbers == sorted(numbers)  # in order; the gaps are the dropped lines
    assert dropped == sum(entry["count"] for entry in entries if entry["event"] == "log_lines_dropped")
    assert 20_000 == len(numbers) + dropped


def test_a_reader_that_went_away_breaks_nothing_and_the_rest_is_counted() -> None:
    """Writes to a pipe whose reader closed never raise into the caller: the sink notes the
    stream broke and counts every later line as dropped."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    sink = LogSink(stream)
    try:
        sink.write("first")
        wait_for(lambda: sink.broken is not None, timeout=10)
        assert "BrokenPipeError" in (sink.broken or "")
        for _ in range(10):
            sink.write("more")
        assert 11 == sink.dropped
        assert sink.flush(timeout=1)  # a broken sink has nothing left to wait for
    finally:
        sink.close(timeout=1)
        with contextlib.suppress(BrokenPipeError):
            stream.close()  # its buffer may still hold the line that could not be written


class _Recording(io.StringIO):
    """A stream that notes which threads wrote to it."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        return super().write(text)


@pytest.mark.usefixtures("restore_logging")
def test_configured_in_the_background_structlog_and_the_standard_library_share_the_sink() -> None:
    """configure(background=True) routes structlog's lines and the standard library's warnings
    (asyncio's, asyncssh's) through one sink, in the order they were logged, off the caller's
    thread; closing the sink writes what was queued."""
    stream = _Recording()
    sink = configure("info", json=True, stream=stream, background=True)
    assert sink is not None
    assert current_sink() is sink
    structlog.get_logger("t").info("first", n=1)
    logging.getLogger("asyncssh").warning("second %s", 2)
    structlog.get_logger("t").debug("filtered out")
    sink.close()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert ["first", "second 2"] == [entry["event"] for entry in entries]
    assert "asyncssh" == entries[1]["logger"]
    assert 2 == sink.written
    assert {"statevisor-log"} == stream.writers
    assert current_sink() is None


def test_a_daemon_whose_log_reader_stalls_then_goes_away_goes_on_supervising(tmp_path: Path) -> None:
    """A daemon logging into a pipe nobody reads keeps restarting a failing command and
    answering its socket (it used to block on the full pipe); once the reader goes away it goes
    on still (a supervisor used to die of the BrokenPipeError in its log call), counts the lost
    lines in its metrics, and stops cleanly (exit 0)."""
    port = free_port()
    config = tmp_path / "statevisor.toml"
    config.write_text(
        f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{port}"\n'
        'log_dir = "var/log"\nrun_dir = "var/runs"\nlog_level = "info"\n\n'
        "[supervisor]\nmax_restarts = 1000000\nperiod = 1\n\n"
        '[[process]]\nname = "flap"\nkind = "shell"\nrestart = "permanent"\n'
        "backoff = { initial = 0.01, maximum = 0.01 }\nmax_restarts = 1000000\nperiod = 1\n"
        "[process.settings]\nargv = ['sh', '-c', 'exit 3']\n"
    )
    read_end, write_end = small_pipe()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=write_end, text=True,
    )  # fmt: skip
    os.close(write_end)
    try:

        def restarts() -> float:
            return scrape(port).get("statevisor_restarts_total", 0.0)

        def reachable_restarts() -> float:
            try:
                return restarts()
            except OSError:
                return 0.0

        # ~190 bytes of log per restart: 100 restarts are four pipes' worth nobody read.
        wait_for(lambda: reachable_restarts() >= 100, timeout=90)
        status = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--json", "--socket", str(tmp_path / "var" / "s.sock")],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert 0 == status.returncode, status.stderr
        os.close(read_end)
        read_end = -1
        seen = restarts()
        wait_for(lambda: restarts() >= seen + 50, timeout=90)
        assert scrape(port)["statevisor_log_lines_dropped_total"] > 0
        daemon.send_signal(signal.SIGTERM)
        assert 0 == daemon.wait(timeout=30)
    finally:
        if read_end >= 0:
            os.close(read_end)
        kill_if_running(daemon)


class _Held(io.StringIO):
    """A stream whose writes wait until released (a reader that is slow right now)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(timeout=30)
        return super().write(text)


def test_flush_waits_for_the_batch_being_written_not_only_for_the_queue() -> None:
    """A batch already taken off the queue but not yet written still counts: flush says it
    is not done while the write is held, and is once it went out (so close() at exit does not
    lose the daemon's last lines)."""
    stream = _Held()
    sink = LogSink(stream)
    try:
        sink.write("last words")
        assert stream.entered.wait(timeout=30)
        assert not sink.flush(timeout=0.2)
        stream.release.set()
        assert sink.flush(timeout=30)
        assert "last words\n" == stream.getvalue()
        assert 1 == sink.written
    finally:
        stream.release.set()
        sink.close(timeout=1)
