"""A last-resort watchdog: a test that outlives its timeout by far ends the run, with stacks.

pytest-timeout (signal method) fails a test whose call runs too long, but what runs after that
failure (fixture teardown, the event loop's cleanup of the test's tasks) has no bound of its
own: one CI run hung there until its 90-minute limit and printed nothing about where. This
watchdog arms a timer over each test's whole protocol (setup, call, teardown) at its timeout
plus a grace. When it fires it prints every thread's stack and every pending asyncio task's
stack, stops the session's real services (so no nats-server or slurmctld is left behind) and
ends the process with status 3, which fails CI at once and says where it stuck.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import sys
import threading
from collections.abc import Callable, Generator

import pytest

# The grace can be shortened for the watchdog's own test.
GRACE_SECONDS = float(os.environ.get("STATEVISOR_WATCHDOG_GRACE", "120"))
_stoppers: list[Callable[[], None]] = []


def on_abort(stop: Callable[[], None]) -> None:
    """Call ``stop`` (bounded) before the watchdog ends the process: a session service's stop."""
    _stoppers.append(stop)


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout") or 120)


def _fire(item: pytest.Item, limit: float) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # output would go to the capture file, lost at exit
        capture.suspend_global_capture(in_=True)
    err = sys.stderr
    print(f"\n\n=== watchdog: {item.nodeid} still running {limit:.0f} s after it started; stacks follow ===", file=err)
    faulthandler.dump_traceback(file=err, all_threads=True)
    pending = [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()]
    print(f"=== {len(pending)} pending asyncio tasks ===", file=err)
    for task in pending:
        try:
            task.print_stack(limit=12, file=err)
        except Exception as exc:  # the loop's thread is running it: best effort only
            print(f"{task!r}: stack unavailable ({exc})", file=err)
    err.flush()
    for stop in _stoppers:
        stopper = threading.Thread(target=stop, daemon=True)
        stopper.start()
        stopper.join(30)
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    limit = _limit(item) + GRACE_SECONDS
    timer = threading.Timer(limit, _fire, args=(item, limit))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
