"""Pods' logs, kept in local files: followed live while they run, read to the end once they end.

A pod's log costs one request over its life when nothing breaks: a followed stream (``follow``)
while its container runs, for up to ``log_streams`` pods of a cluster at once (each holds a
connection); a pod that started while every stream was taken is followed when one frees, or
read once when it ends. The file (``<log_dir>/<name>.out.log``, stdout and stderr merged, as
the container runtime keeps them) is what ``handle.logs()``, ``follow()`` and
``statevisor logs [-f]`` read, during the run and after the pod is gone.

Lines are asked for with their timestamps, which are stripped before the file. The last one
written, and how many lines had it, are kept beside the log (``.<log>.k8s``): a stream cut
halfway (the API server restarted, the daemon crashed) is resumed from there, and the lines
the server sends again are skipped, so nothing is written twice. The file is rotated as the
shell kind's logs are (``log_max_bytes``, ``log_backups``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from supervisor import TransportError
from supervisor.lowlevel import rotate_log

from ._api import KubeApi, backoff
from ._status import MAIN, PodView
from .errors import ApiRefused, NotFound

log = structlog.get_logger("statevisor.cloud")

FLUSH_LINES = 200
FLUSH_SECONDS = 0.25
END_WAIT = 30.0  # how long a stream may take to end after its container has


def timestamp_ns(stamp: str) -> int | None:
    """An RFC 3339 time with up to nine decimals, in nanoseconds since the epoch (None if not one)."""
    from datetime import UTC, datetime

    try:
        head, _, rest = stamp.partition(".")
        fraction = rest.rstrip("Z") if rest else ""
        if not rest:
            head = head.rstrip("Z")
        whole = int(datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
        nanos = int((fraction + "000000000")[:9]) if fraction else 0
    except ValueError:
        return None
    return whole * 1_000_000_000 + nanos


@dataclass(slots=True, eq=False)
class PodLog:
    namespace: str
    name: str
    path: Path
    max_bytes: int
    backups: int
    last: int | None = None  # the timestamp (ns) of the last line written
    same: int = 0  # lines written with that timestamp
    started: bool = False  # its container started: there is a log to read
    finishing: bool = False  # its pod ended: finish() reads what is left; no stream starts now
    marked: bool = False  # the mark beside the log has been read
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # its container ended
    complete: bool = False
    error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    lines: int = 0

    @property
    def mark(self) -> Path:
        return self.path.with_name(f".{self.path.name}.k8s")

    def load_mark(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(self.mark.read_text())
            self.last, self.same = data["last"], int(data["same"])
            self.complete = bool(data.get("complete", False))

    def save_mark(self) -> None:
        temporary = self.mark.with_name(self.mark.name + ".tmp")
        temporary.write_text(json.dumps({"last": self.last, "same": self.same, "complete": self.complete}))
        os.replace(temporary, self.mark)


class LogCollector:
    """The logs of one cluster's pods (see the module's docstring)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.streams = api.spec.log_streams
        self.logs: dict[tuple[str, str], PodLog] = {}
        self.following = 0
        self.requests = 0

    def track(self, namespace: str, name: str, path: Path, max_bytes: int, backups: int) -> PodLog:
        """Keep ``name``'s log in ``path`` (from where an earlier daemon left it, if one did)."""
        key = (namespace, name)
        pod = self.logs.get(key)
        if pod is None:
            pod = self.logs[key] = PodLog(namespace, name, path, max_bytes, backups)
        return pod

    def seen(self, view: PodView, namespace: str) -> None:
        """A pod changed (from its watch): follow its log once its container has started."""
        pod = self.logs.get((namespace, view.name))
        if pod is None or not view.started or pod.complete or pod.finishing:
            return
        pod.started = True
        if view.final or view.exit_code is not None:
            pod.ended.set()
        if pod.task is None and self.following < self.streams:
            self._follow(pod)

    def _follow(self, pod: PodLog) -> None:
        self.following += 1
        pod.task = asyncio.get_running_loop().create_task(self._stream(pod))
        pod.task.add_done_callback(lambda _: self._freed(pod))

    def _freed(self, pod: PodLog) -> None:
        self.following -= 1
        # The longest-waiting pod whose container still runs; one that ended is read once by finish().
        waiting = [
            p
            for p in self.logs.values()
            if p.started and p.task is None and not p.complete and not p.finishing and not p.ended.is_set()
        ]
        if waiting and self.following < self.streams:
            self._follow(waiting[0])

    async def _stream(self, pod: PodLog) -> None:
        failures = 0
        while not pod.complete:
            try:
                await self._read(pod, follow=True)
                # A followed log ends when its container does, but also when a server closes it
                # cleanly: complete only once the watch says the container ended too.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):  # not wait_for: it may swallow a cancellation (3.11)
                        await pod.ended.wait()
                if pod.ended.is_set():
                    pod.complete = True
                    self._flush_mark(pod)
                    return
                failures = 0
            except NotFound:
                return  # the pod is gone; finish() says so
            except (TransportError, ApiRefused, OSError) as exc:
                failures += 1
                log.info(
                    "cloud_log_stream_cut", pod=pod.name, namespace=pod.namespace, error=str(exc), failures=failures
                )
                await asyncio.sleep(backoff(failures, self.api.spec.backoff_max))
            except Exception as exc:  # a bug: logged, and finish() reads the log once instead
                log.exception("cloud_log_stream_crashed", pod=pod.name, namespace=pod.namespace, error=repr(exc))
                return

    async def finish(self, view: PodView, namespace: str) -> dict[str, Any]:
        """Make the log whole once its pod has ended; what became of it, for the result."""
        pod = self.logs.get((namespace, view.name))
        if pod is None:
            return {"complete": False, "error": "not collected"}
        if view.started:
            pod.started = True
        pod.finishing = True
        pod.ended.set()
        if pod.task is not None and not pod.task.done():
            await asyncio.wait({pod.task}, timeout=END_WAIT)
            if not pod.task.done():
                pod.task.cancel()
                await asyncio.gather(pod.task, return_exceptions=True)
        if not pod.complete and pod.started and not view.deleted:
            try:
                await self._read(pod, follow=False)
                pod.complete = True
                self._flush_mark(pod)
            except NotFound:
                pod.error = "the pod was deleted before its log was read to the end"
            except (TransportError, ApiRefused, OSError) as exc:
                pod.error = f"the log could not be read to the end: {exc}"
        elif not pod.started:
            pod.complete = True  # its container never ran: it has no log
        elif view.deleted and not pod.complete:
            pod.error = "the pod was deleted before its log was read to the end"
        return {"complete": pod.complete, "error": pod.error, "lines": pod.lines}

    def forget(self, namespace: str, name: str) -> None:
        pod = self.logs.pop((namespace, name), None)
        if pod is not None and pod.task is not None:
            pod.task.cancel()

    async def _read(self, pod: PodLog, *, follow: bool) -> None:
        """Append what the server has after the last line written (and, following, what comes)."""
        if not pod.marked:  # where an earlier daemon left this log, read when it is first needed
            pod.load_mark()
            pod.marked = True
            if pod.complete:
                return  # read to its end before the daemon restarted
        since = None
        if pod.last is not None:  # from the second of the last line written: the rest is skipped below
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pod.last // 1_000_000_000))
        resume, budget = pod.last, pod.same
        self.requests += 1
        opening = asyncio.ensure_future(asyncio.to_thread(_append_to, pod.path))
        try:
            out = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)  # opened after all: closed, not leaked
            raise
        pending = 0
        flushed = time.monotonic()
        try:
            async for line in self.api.log_lines(pod.namespace, pod.name, MAIN, follow=follow, since_time=since):
                stamp, _, text = line.partition(" ")
                at = timestamp_ns(stamp)
                if at is None:  # no timestamp: a line the server split, or a server that sends none
                    at, text = pod.last or 0, line
                if resume is not None and (at < resume or (at == resume and budget > 0)):
                    if at == resume:
                        budget -= 1
                    continue  # written before the stream was cut
                out.write(text.encode("utf-8", "surrogateescape") + b"\n")
                pod.lines += 1
                pod.same = pod.same + 1 if at == pod.last else 1
                pod.last = at
                pending += 1
                if pending >= FLUSH_LINES or time.monotonic() - flushed > FLUSH_SECONDS:
                    self._flush(pod, out)
                    pending, flushed = 0, time.monotonic()
        finally:
            self._flush(pod, out)
            out.close()

    def _flush_mark(self, pod: PodLog) -> None:
        with contextlib.suppress(OSError):
            pod.save_mark()

    def _flush(self, pod: PodLog, out: BinaryIO) -> None:
        out.flush()
        pod.save_mark()
        if rotate_log(pod.path, pod.max_bytes, pod.backups):
            out.seek(0, os.SEEK_END)

    async def close(self) -> None:
        tasks = [p.task for p in self.logs.values() if p.task is not None and not p.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<LogCollector {self.api.spec.name} pods={len(self.logs)} following={self.following}/{self.streams}>"


def _append_to(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def _close_opened(opening: asyncio.Future[BinaryIO]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()
