"""A role's run in the daemon: its driver, wired to a real link, a record file and real time.

The session is the I/O around the driver: frames from the link go to :meth:`RoleDriver.deliver`
from the link's own callback (no task, no queue between them), what the driver puts out goes to
the link at once, one timer wakes it at its next deadline, fences run on a thread (the role's
resources, then the record, are made durable), and the record is written out every flush
interval. The role's process sees the run through :meth:`Session.next_report`: a report when
the run ends, and at most every ``report_every`` seconds while it moves.

A paused process holds its session (``hold``): frames are kept for later, nothing is
retransmitted, and a hold frame tells the peer every second or so to keep waiting. A session
whose report nobody collects holds too, so that a process that stopped taking its inputs (a
pause that came between two reports) stops its run within one report interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from ._driver import Need, RoleDriver
from ._links import ChannelHub, Link, make_link
from ._record import END, RecordFile, read_records
from ._settings import RoleSettings
from ._spec import Role
from ._transcript import Transcript, dump
from ._wire import FrameError, decode_frame

log = structlog.get_logger("statevisor.protocol")

FLUSH_EVERY = 0.1
"""Seconds between two writes of the record (a killed daemon loses at most this much, which
replay takes again: only steps that may be taken again are ever left unfenced)."""
MAX_HELD_FRAMES = 1024


class Session:
    """One role process's run: ``pid``'s driver over its link, recorded at ``record_path``,
    transcribed to ``transcript_path``."""

    def __init__(
        self,
        *,
        pid: str,
        name: str,
        settings: RoleSettings,
        record_path: Path,
        transcript_path: Path,
        hub: ChannelHub,
        on_closed: Callable[[Session], None] = lambda session: None,
    ) -> None:
        self.pid = pid
        self.name = name
        self.settings = settings
        self.spec = settings.spec
        self.record_path = record_path
        self.transcript_path = transcript_path
        self._hub = hub
        self._on_closed = on_closed
        self.driver: RoleDriver | None = None
        self.link: Link | None = None
        self.role: Role | None = None
        self._record: RecordFile | None = None
        self._transcript = Transcript(self.spec)
        self._lines: list[str] = []
        self._transcript_file: Any = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flusher: asyncio.TimerHandle | None = None
        self._holder: asyncio.TimerHandle | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._fence: asyncio.Task[None] | None = None
        self._holds: set[str] = set()
        self._held_frames: list[bytes] = []
        self._waiter: asyncio.Future[dict[str, Any]] | None = None
        self._reported: dict[str, Any] | None = None
        self._reported_at = 0.0
        self.replayed = 0
        self.corrupt = 0
        self.closed = False
        self.failure: BaseException | None = None

    # --- opening and closing -------------------------------------------------------------------

    async def open(self) -> None:
        """Read the record, build the role, open the link, replay, go live."""
        settings = self.settings
        records, valid = await asyncio.to_thread(read_records, self.record_path)
        self.replayed = len(records)
        role_class = self.spec.role(settings.role)
        self.role = role = await asyncio.to_thread(role_class.open, settings.options)
        try:
            self._record = RecordFile(self.record_path, valid_length=valid)
            self._transcript_file = await asyncio.to_thread(_open_transcript, self.transcript_path)
            self.link = link = make_link(settings.link, listen=settings.listen, faults=settings.faults, hub=self._hub)
            link.on_frame = self._on_frame
            link.on_state = self._on_link
            await link.open()
        except BaseException:
            await self._release_resources()
            raise
        run = secrets.token_hex(4) if settings.role == "host" else ""
        self.driver = driver = RoleDriver(
            self.spec, role, replay=records, sink=self._record.append, run=run, timing=settings.timing
        )
        self._line({"event": "resume" if records else "start", "records": len(records), "link": settings.link})
        driver.start(self._loop.time())
        self._flusher = self._loop.call_later(FLUSH_EVERY, self._flush)
        self._pump()

    async def close(self) -> None:
        """Stop without ending the run (the daemon shuts down; a restart goes on from the record)."""
        if self.closed:
            return
        self.closed = True
        for handle in (self._timer, self._flusher, self._holder, self._closer):
            if handle is not None:
                handle.cancel()
        if self._fence is not None:
            # Not cancelled: its thread would go on syncing files this close is about to close.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._fence)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()
        await self._release_resources()
        self._on_closed(self)

    async def kill(self, reason: str) -> None:
        """The process was killed: tell the peer (an abort, so it takes its abort path rather
        than wait for its timeout), record the end, close."""
        driver = self.driver
        if driver is not None and driver.outcome is None and self.link is not None and self._record is not None:
            self.link.send(driver.abort_frame(f"killed: {reason}"))
            self._record.append([END, driver.seq, driver.step_name, ["killed", reason]])
        await self.close()

    async def _release_resources(self) -> None:
        if self._record is not None:
            self._transcribe(self._record.pending)
        for lines in self._transcript.flush():
            self._lines.append(dump(lines))
        self._write_lines()
        if self._transcript_file is not None:
            self._transcript_file.close()
            self._transcript_file = None
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.close()
        if self._record is not None:
            with contextlib.suppress(Exception):
                self._record.close()
        if self.role is not None:
            with contextlib.suppress(Exception):
                self.role.close()

    # --- the driver's I/O ----------------------------------------------------------------------

    def _transcribe(self, records: list[list[Any]]) -> None:
        """Fold the records about to be written into the transcript (off the run's hot path)."""
        feed, lines = self._transcript.feed, self._lines
        for record in records:
            for event in feed(record):
                lines.append(dump(event))

    def _on_frame(self, data: bytes) -> None:
        if self.closed:
            return
        if self._holds:
            if len(self._held_frames) < MAX_HELD_FRAMES:
                self._held_frames.append(data)
            return
        try:
            frame = decode_frame(data)
        except FrameError:
            self.corrupt += 1
            return
        driver = self.driver
        if driver is not None:
            driver.deliver(frame, self._loop.time())
            self._pump()

    def _on_link(self, up: bool) -> None:
        if self.closed:
            return
        self._line({"event": "link up" if up else "link down"})
        driver = self.driver
        if up and driver is not None and not self._holds:
            driver.link_up(self._loop.time())
            self._pump()

    def _pump(self) -> None:
        """Send what the driver put out; take its fence; wake it at its deadline; report."""
        driver = self.driver
        if driver is None or self.closed:
            return
        outbox = driver.outbox
        if outbox:
            send = self.link.send  # type: ignore[union-attr]
            for frame in outbox:
                send(frame)
            outbox.clear()
        if driver.outcome is not None:
            if self._closer is None:
                self._flush()
                delay = max(0.0, (driver.linger_until or 0.0) - self._loop.time())
                self._closer = self._loop.call_later(delay, self._linger_over)
            self._report_if_due()
            return
        waiting = driver.waiting
        if waiting is not None and waiting.need is Need.FENCE and self._fence is None:
            self._fence = self._loop.create_task(self._take_fence(), name=f"statevisor-fence:{self.name}")
        deadline = driver.next_deadline()
        if deadline is not None and not self._holds and (self._timer is None or deadline < self._timer_at):
            self._arm(deadline)
        # Reports are due at most every report_every seconds: one clock read on the hot path.
        if self._reported is None or self._loop.time() - self._reported_at >= self.settings.report_every:
            self._report_if_due()

    async def _take_fence(self) -> None:
        record, role = self._record, self.role
        assert record is not None
        assert role is not None
        try:
            self._transcribe(record.pending)
            record.flush()  # on the loop: appends happen here too
            await asyncio.to_thread(_sync, role, record)
        except Exception as exc:
            self._fail(exc)
            return
        finally:
            self._fence = None
        driver = self.driver
        if driver is not None and not self.closed:
            driver.fenced(self._loop.time())
            self._pump()

    def _arm(self, deadline: float | None) -> None:
        if deadline is None or self._holds:
            return
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first, and re-arms for what is due then
            timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        driver = self.driver
        if driver is None or self.closed or self._holds:
            return
        # Timers may fire a hair early: what was due at the timer's time is due now.
        driver.tick(max(self._loop.time(), self._timer_at))
        self._pump()

    def _flush(self) -> None:
        self._flusher = None
        if self.closed:
            return
        try:
            if self._record is not None:
                self._transcribe(self._record.pending)
                self._record.flush()
        except Exception as exc:
            self._fail(exc)
            return
        self._write_lines()
        self._flusher = self._loop.call_later(FLUSH_EVERY, self._flush)

    def _write_lines(self) -> None:
        if self._lines and self._transcript_file is not None:
            self._transcript_file.write("\n".join(self._lines) + "\n")
            self._transcript_file.flush()
        self._lines.clear()

    def _line(self, event: dict[str, Any]) -> None:
        self._lines.append(dump(event))

    def _linger_over(self) -> None:
        self._closer = None
        self._loop.create_task(self.close(), name=f"statevisor-close:{self.name}")

    def _fail(self, error: BaseException) -> None:
        """The session cannot go on (its record cannot be written): the run's action fails."""
        log.error("protocol_session_failed", pid=self.pid, name=self.name, error=repr(error))
        self.failure = error
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        self._loop.create_task(self.close(), name=f"statevisor-close:{self.name}")

    # --- holding (a paused process) ------------------------------------------------------------

    def hold(self, why: str) -> None:
        if why in self._holds or self.closed:
            return
        first = not self._holds
        self._holds.add(why)
        if first:
            self._line({"event": "hold", "why": why})
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._send_hold()

    def release(self, why: str) -> None:
        if why not in self._holds:
            return
        self._holds.discard(why)
        if self._holds or self.closed:
            return
        self._line({"event": "release", "why": why})
        if self._holder is not None:
            self._holder.cancel()
            self._holder = None
        driver = self.driver
        if driver is None:
            return
        now = self._loop.time()
        driver.heard_at = now  # the time held is not the peer's silence
        held, self._held_frames = self._held_frames, []
        for data in held:
            self._on_frame(data)
        driver.link_up(now)
        self._pump()

    def _send_hold(self) -> None:
        self._holder = None
        driver, link = self.driver, self.link
        if not self._holds or self.closed or driver is None or link is None or driver.outcome is not None:
            return
        link.send(driver.hold_frame())
        interval = min(1.0, self.settings.timing.step_timeout / 3)
        self._holder = self._loop.call_later(interval, self._send_hold)

    # --- reports -------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """Where the run stands, as the role's process shows it."""
        driver = self.driver
        stats: dict[str, Any] = driver.statistics() if driver is not None else {}
        outcome = driver.outcome if driver is not None else None
        link = self.link
        return {
            "phase": "ended" if outcome is not None else "running",
            **stats,
            "run": driver.run if driver is not None else "",
            "link_up": bool(link and link.up),
            "held": sorted(self._holds),
            "corrupt": self.corrupt,
            "resumed_from": self.replayed,
            "outcome": outcome.outcome if outcome else None,
            "terminal": outcome.terminal if outcome else None,
            "reason": outcome.reason if outcome else None,
            "record": str(self.record_path),
            "transcript": str(self.transcript_path),
        }

    async def next_report(self) -> dict[str, Any]:
        """The next report: at once if one is due, else when one becomes due."""
        if self.failure is not None:
            raise self.failure
        self.release("uncollected")
        if self._due():
            return self._take_report()
        self._waiter = waiter = self._loop.create_future()
        try:
            report: dict[str, Any] = await waiter
            return report
        finally:
            self._waiter = None

    def _due(self) -> bool:
        driver = self.driver
        if driver is None:
            return False
        last = self._reported
        if last is None or (driver.outcome is not None and last.get("phase") != "ended"):
            return True
        if self._loop.time() - self._reported_at < self.settings.report_every:
            return False  # the common case, on every frame: one clock read
        return (last.get("seq"), last.get("steps"), last.get("link_up"), last.get("held")) != (
            driver.seq,
            driver.steps_done,
            bool(self.link and self.link.up),
            sorted(self._holds),
        )

    def _take_report(self) -> dict[str, Any]:
        report = self.report()
        self._reported = report
        self._reported_at = self._loop.time()
        return report

    def _report_if_due(self) -> None:
        if not self._due():
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._take_report())
        elif waiter is None and self._reported is not None:
            driver = self.driver
            if driver is not None and driver.outcome is None:
                self.hold("uncollected")  # the process takes no input: the run waits for it

    def statistics(self) -> dict[str, Any]:
        return self.report()

    def __repr__(self) -> str:
        return f"<Session {self.name} {self.settings.protocol} {self.settings.role} {self.driver!r}>"


def _open_transcript(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a", encoding="utf-8")  # kept open for the run, closed with it


def _sync(role: Role, record: RecordFile) -> None:
    role.sync()
    record.fsync()
