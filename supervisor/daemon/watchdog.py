"""A watchdog for the event loop: it says when the loop is blocked, by what, and for how long.

Why: everything a daemon does runs on one event loop. A transition that loops on the CPU or
calls blocking I/O freezes every process, the control socket and the metrics at once, and
nothing on the loop can say so. A thread can: it asks the loop to answer every ``interval``;
when no answer came for ``stall_after`` it logs ``loop_stalled`` with the loop thread's stack
and the process whose transition is running (if one is), once per stall, and
``loop_recovered`` with how long the stall lasted when the loop answers again. The logs are
written off the loop too (see :mod:`supervisor.daemon.log`), so the warning comes out during the stall.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from .._core.runtime import Runtime

log = structlog.get_logger("statevisor.loop")

STALL_AFTER = 5.0
"""Seconds without an answer from the loop that make a stall worth a warning."""

_STACK_FRAMES = 12  # innermost frames of the loop's stack put in the warning


class LoopWatchdog:
    """Watches ``loop`` from a thread of its own; ``stalls`` and ``stalled_seconds`` count what
    it saw (for the metrics). Start it on the loop's thread; ``stop()`` from anywhere."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runtime: Runtime | None = None,
        *,
        stall_after: float = STALL_AFTER,
        interval: float | None = None,
    ) -> None:
        self.loop = loop
        self.runtime = runtime
        self.stall_after = stall_after
        self.interval = interval if interval is not None else min(1.0, stall_after / 4)
        self.stalls = 0
        self.stalled_seconds = 0.0
        self.longest = 0.0
        self._answered = time.monotonic()
        self._loop_thread: int | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="statevisor-watchdog", daemon=True)

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._answered = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=self.interval + 1.0)

    def _answer(self) -> None:
        self._answered = time.monotonic()

    def _watch(self) -> None:
        stalled_since: float | None = None  # the last answer before the stall
        while not self._stopping.wait(self.interval):
            try:
                self.loop.call_soon_threadsafe(self._answer)
            except RuntimeError:  # the loop is closed: nothing left to watch
                return
            answered = self._answered
            if stalled_since is not None and answered > stalled_since:
                lasted = answered - stalled_since
                self.stalled_seconds += lasted
                self.longest = max(self.longest, lasted)
                log.warning("loop_recovered", seconds=round(lasted, 3))
                stalled_since = None
            silent = time.monotonic() - answered
            if stalled_since is None and silent >= self.stall_after:
                stalled_since = answered
                self.stalls += 1
                try:
                    culprit = self._culprit()
                except Exception as exc:  # reading another thread's stack must not end the watch
                    culprit = {"culprit_unknown": repr(exc)}
                log.warning("loop_stalled", seconds=round(silent, 3), **culprit)

    def _culprit(self) -> dict[str, Any]:
        """What the loop's thread is running now: its stack, and the process in a transition."""
        found: dict[str, Any] = {}
        process = self.runtime.stepping if self.runtime is not None else None
        if process is not None and process._in_transition:
            found.update(pid=process.pid, kind=process.kind, name=process.name)
        frame = sys._current_frames().get(self._loop_thread or -1)
        if frame is not None:
            found["stack"] = "".join(traceback.format_stack(frame, limit=_STACK_FRAMES))
        return found

    def __repr__(self) -> str:
        state = "watching" if self._thread.is_alive() else "stopped"
        return (
            f"<LoopWatchdog {state}: {self.stalls} stalls over {self.stall_after:g} s, "
            f"{self.stalled_seconds:.1f} s stalled, longest {self.longest:.1f} s>"
        )
