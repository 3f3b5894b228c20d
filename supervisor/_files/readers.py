"""Threads for reads that may hang: callers' log reads (tails and follows).

A log on a slow or hung file system (NFS on a login node) must not stop the event loop, and
however many clients read logs at once they must not take the default executor's threads from
the work that needs them (log-apply appends, rotations). So these reads run on a few threads of
their own. They are daemon threads: a ``ThreadPoolExecutor``'s threads are joined when the
interpreter exits, so a read hung for good would keep a stopped daemon from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class ReaderThreads:
    """``count`` daemon threads taking read jobs first come, first served; started on first use."""

    def __init__(self, count: int, name: str) -> None:
        self.count = count
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._starting = threading.Lock()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on one of the threads; its result or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._start()
        self._jobs.put((loop, future, function, args))
        return await future

    def _start(self) -> None:
        if len(self._threads) >= self.count:
            return
        with self._starting:
            while len(self._threads) < self.count:
                thread = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            loop, future, function, args = self._jobs.get()
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the caller, whatever it is
                _hand_over(loop, _fail, future, exc)
            else:
                _hand_over(loop, _succeed, future, result)

    def __repr__(self) -> str:
        return f"<ReaderThreads {self.name} {len(self._threads)}/{self.count} threads, {self._jobs.qsize()} queued>"


def _hand_over(loop: asyncio.AbstractEventLoop, settle: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
        loop.call_soon_threadsafe(settle, *args)


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the caller may have given up (cancelled) meanwhile
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
