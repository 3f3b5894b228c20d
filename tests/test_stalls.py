"""The loop watchdog: a blocked event loop is reported while it is blocked, naming the process
whose transition blocks it and where, and again when it answers, with how long it lasted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

from structlog.testing import capture_logs

from supervisor import Cast, Context, Input, Machine, Runtime
from supervisor.daemon.metrics import WatchdogCollector
from supervisor.daemon.watchdog import LoopWatchdog
from tests.helpers import wait_until


class Blocker(Machine[dict[str, Any]]):
    """Blocks the whole event loop in its transition when cast "block" (the bug being shown)."""

    kind = "blocker"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        if input == Cast("block"):
            time.sleep(1.0)  # noqa: ASYNC251 - blocking I/O in a transition: what the watchdog is for


def test_a_transition_that_blocks_the_loop_is_named_while_it_blocks_and_timed_after() -> None:
    """With a 0.3 s threshold, a transition blocking the loop for 1 s gives one loop_stalled
    warning (logged from the watchdog's thread, during the stall) naming the process, its kind
    and the transition in the loop's stack, then loop_recovered with the stall's length; the
    metrics count one stall. A loop that answers again is not reported again."""

    async def scenario() -> tuple[list[MutableMapping[str, Any]], LoopWatchdog, str]:
        runtime = Runtime()
        watchdog = LoopWatchdog(asyncio.get_running_loop(), runtime, stall_after=0.3, interval=0.05)
        watchdog.start()
        try:
            with capture_logs() as logged:
                handle = runtime.spawn(Blocker, name="slowpoke")
                await handle.cast("block")
                await wait_until(lambda: any(e["event"] == "loop_recovered" for e in logged))
                await handle.kill("done")
        finally:
            watchdog.stop()
        return logged, watchdog, handle.pid

    logged, watchdog, pid = asyncio.run(scenario())
    stalled = [e for e in logged if e["event"] == "loop_stalled"]
    assert 1 == len(stalled)
    assert (pid, "blocker", "slowpoke") == (stalled[0]["pid"], stalled[0]["kind"], stalled[0]["name"])
    assert "in transition" in stalled[0]["stack"]
    assert "time.sleep(1.0)" in stalled[0]["stack"]  # the line that blocks
    recovered = [e for e in logged if e["event"] == "loop_recovered"]
    assert 1 == len(recovered)
    assert 0.3 <= recovered[0]["seconds"] < 10
    assert 1 == watchdog.stalls
    assert recovered[0]["seconds"] == round(watchdog.longest, 3)
    families = {f.name: f.samples[0].value for f in WatchdogCollector(watchdog).collect()}
    assert 1 == families["statevisor_loop_stalls"]
    assert families["statevisor_loop_stalled_seconds"] >= 0.3
    assert "1 stalls over 0.3 s" in repr(watchdog)


def test_a_loop_that_is_busy_but_answers_is_not_reported() -> None:
    """Many short callbacks are not a stall: with a 0.3 s threshold, a loop kept busy with
    10,000 transitions (the driver letting the loop run every 100 casts) gets no warning."""

    async def scenario() -> tuple[list[MutableMapping[str, Any]], LoopWatchdog]:
        from tests.machines import Counter

        runtime = Runtime()
        watchdog = LoopWatchdog(asyncio.get_running_loop(), runtime, stall_after=0.3, interval=0.05)
        watchdog.start()
        try:
            with capture_logs() as logged:
                handle = runtime.spawn(Counter, {"n": 0})
                for index in range(10_000):
                    await handle.cast(1)
                    if index % 100 == 0:
                        await asyncio.sleep(0)  # a cast with room does not yield; this does
                assert 10_000 == await handle.call("get")
        finally:
            watchdog.stop()
        return logged, watchdog

    logged, watchdog = asyncio.run(scenario())
    assert [] == [e for e in logged if e["event"].startswith("loop_")]
    assert 0 == watchdog.stalls
