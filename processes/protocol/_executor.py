"""The protocol kind's executor: each role process's session, by process id.

``protocol.run`` opens the role's session the first time (reading its record, replaying it,
opening its link) and then returns its next report: the process issues it again after each
report, so the session is in flight for the role's whole run, and a re-issued run action after a
crash opens the session again from its record (nothing of the run is done twice: replay does it
from what was recorded). ``protocol.record`` reads a role's record as transcript events.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from supervisor import TrackedAction, UntrackedAction

from ._record import read_records
from ._session import Session
from ._settings import parse
from ._spec import lookup
from ._transcript import events
from .errors import RecordError

RUN = "protocol.run"
RECORD = "protocol.record"
ACTION_TYPES = (RUN, RECORD)


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "_"


class ProtocolExecutor:
    """Sessions by process id; records under ``directory``, transcripts under ``log_dir``."""

    idempotent = True  # a re-issued run resumes the run from its record
    uses_slot = False  # a session waits on its peer: it holds no slot

    def __init__(self, directory: str | Path, log_dir: str | Path | None = None) -> None:
        from ._links import ChannelHub

        self.directory = Path(directory)
        self.log_dir = Path(log_dir) if log_dir is not None else self.directory
        self.sessions: dict[str, Session] = {}
        self.hub = ChannelHub()
        self.ended: Counter[tuple[str, str, str]] = Counter()

    def record_path(self, pid: str) -> Path:
        return self.directory / f"{file_name(pid)}.record"

    def transcript_path(self, name: str) -> Path:
        return self.log_dir / f"{file_name(name)}.protocol.log"

    async def execute(self, action: TrackedAction | UntrackedAction) -> Any:
        if action.type == RUN:
            return await self._run(action.pid, action.payload)
        if action.type == RECORD:
            return await self._read(action.pid, action.payload)
        raise RecordError(action.type, "not a protocol action")

    async def _run(self, pid: str, payload: Any) -> dict[str, Any]:
        session = self.sessions.get(pid)
        if session is None:
            name = str(payload.get("name") or pid)
            session = Session(
                pid=pid,
                name=name,
                settings=parse(payload["settings"]),
                record_path=self.record_path(pid),
                transcript_path=self.transcript_path(name),
                hub=self.hub,
                on_closed=self._closed,
            )
            self.sessions[pid] = session
            try:
                await session.open()
            except BaseException:
                self.sessions.pop(pid, None)
                raise
        return await session.next_report()

    async def _read(self, pid: str, payload: Any) -> dict[str, Any]:
        path = self.record_path(pid)
        records, _ = await asyncio.to_thread(read_records, path)
        spec = None
        settings = payload.get("settings") if isinstance(payload, dict) else None
        if isinstance(settings, dict):
            spec = lookup(str(settings.get("protocol")))
        return {"record": str(path), "events": events(records, spec)}

    def _closed(self, session: Session) -> None:
        if self.sessions.get(session.pid) is session:
            del self.sessions[session.pid]
        driver = session.driver
        outcome = driver.outcome.outcome if driver is not None and driver.outcome is not None else "stopped"
        self.ended[(session.settings.protocol, session.settings.role, outcome)] += 1

    async def cancel(self, action: TrackedAction) -> None:
        session = self.sessions.get(action.pid)
        if action.type == RUN and session is not None:
            await session.kill("the process was killed")

    async def pause(self, action: TrackedAction) -> None:
        session = self.sessions.get(action.pid)
        if action.type == RUN and session is not None:
            session.hold("paused")

    async def resume(self, action: TrackedAction) -> None:
        session = self.sessions.get(action.pid)
        if action.type == RUN and session is not None:
            session.release("paused")

    def metric_families(self) -> Iterator[Any]:
        labels = ["protocol", "role"]
        sessions = GaugeMetricFamily("statevisor_protocol_sessions", "Role sessions running", labels=labels)
        steps = GaugeMetricFamily("statevisor_protocol_steps", "Joint steps completed by running roles", labels=labels)
        moved = GaugeMetricFamily("statevisor_protocol_bytes", "Message data moved by running roles", labels=labels)
        retransmitted = GaugeMetricFamily(
            "statevisor_protocol_retransmissions", "Frames sent again by running roles", labels=labels
        )
        rejected = GaugeMetricFamily(
            "statevisor_protocol_rejected_frames",
            "Frames running roles rejected (checksum, another run, a kind out of place)",
            labels=labels,
        )
        up = GaugeMetricFamily("statevisor_protocol_links_up", "Running roles whose link has a peer", labels=labels)
        totals: dict[tuple[str, str], list[int]] = {}
        for session in list(self.sessions.values()):
            driver = session.driver
            if driver is None:
                continue
            row = totals.setdefault((session.settings.protocol, session.settings.role), [0] * 6)
            row[0] += 1
            row[1] += driver.steps_done
            row[2] += driver.bytes
            row[3] += driver.retransmissions
            row[4] += driver.rejected + session.corrupt
            row[5] += int(bool(session.link and session.link.up))
        for key, row in sorted(totals.items()):
            for family, value in zip((sessions, steps, moved, retransmitted, rejected, up), row, strict=True):
                family.add_metric(list(key), value)
        ended = CounterMetricFamily(
            "statevisor_protocol_runs_ended", "Role sessions ended, by outcome", labels=[*labels, "outcome"]
        )
        for (protocol, role, outcome), count in sorted(self.ended.items()):
            ended.add_metric([protocol, role, outcome], count)
        yield from (sessions, steps, moved, retransmitted, rejected, up, ended)

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()

    def __repr__(self) -> str:
        return f"<ProtocolExecutor {len(self.sessions)} sessions in {self.directory}>"


def executors(directory: str | Path, log_dir: str | Path | None = None) -> dict[str, ProtocolExecutor]:
    """The protocol kind's action types, all served by one executor."""
    executor = ProtocolExecutor(directory, log_dir)
    return dict.fromkeys(ACTION_TYPES, executor)
