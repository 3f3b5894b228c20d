"""A recorded run read as steps: the transcript a role writes as its log, and what the sequence
diagram of a run is drawn from.

A role's records (``_record``) hold every message; the transcript folds them into **events**,
one per run of consecutive steps of the same name (sixteen ``write_next_chunk`` in a row are one
event with a count, the messages of the first and the last), plus the aborts, the errors raised
into the protocol and the end. Events are plain dicts, written one JSON object a line: the
role's ``stdout`` log, which ``statevisor logs`` shows and ``statevisor sequence`` draws.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._record import EFFECT, END, IN, OUT, RAISE, RUN
from ._spec import Specification, message_info
from ._wire import FrameKind

_REQUEST, _ANSWER, _ABORT = int(FrameKind.REQUEST), int(FrameKind.ANSWER), int(FrameKind.ABORT)


def field_names(spec: Specification[Any] | None) -> dict[str, tuple[str, ...]]:
    """The field names of a protocol's messages, by tag."""
    names: dict[str, tuple[str, ...]] = {}
    if spec is not None:
        for step in spec.steps.values():
            for cls in (*step.sends, *step.answers):
                info = message_info(cls)
                names[info.tag] = info.names
    return names


def summarize(
    body: Any,
    spec: Specification[Any] | None = None,
    *,
    width: int = 48,
    names: Mapping[str, tuple[str, ...]] | None = None,
) -> str:
    """A message as a line shows it: ``Chunk(offset=4096, data=b[256])``."""
    if not isinstance(body, list) or not body:
        return repr(body)[:width]
    tag, values = str(body[0]), body[1:]
    fields = (names if names is not None else field_names(spec)).get(tag, ())
    names = None
    parts = []
    for index, value in enumerate(values):
        text = _value(value, width)
        parts.append(f"{fields[index]}={text}" if index < len(fields) else text)
    return f"{tag}({', '.join(parts)})"


def _value(value: Any, width: int) -> str:
    if isinstance(value, bytes):
        return f"b[{len(value)}]"
    if isinstance(value, str):
        return repr(value if len(value) <= width else value[: width - 1] + "…")
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


class Transcript:
    """Folds one side's records into events as they come (:meth:`feed`), or a whole record
    (:func:`events`). ``spec`` (optional) names the messages' fields."""

    def __init__(self, spec: Specification[Any] | None = None) -> None:
        self.spec = spec
        self.names = field_names(spec)
        self.side = ""
        self._fold: dict[str, Any] | None = None  # the messages of the fold under way
        self._seq = self._to = self._count = 0
        self._step = ""

    def feed(self, record: list[Any]) -> list[dict[str, Any]]:
        """The events ``record`` completes (usually none: a fold goes on)."""
        kind, seq, step, data = record
        if kind in (IN, OUT):
            frame_kind, body = data[0], data[1]
            fold = self._fold
            if fold is not None and step == self._step and frame_kind != _ABORT:
                # The common case, a step like the last: the fold goes on (kept in attributes
                # until it is flushed: this runs for every frame of a run).
                last = self._to
                if seq == last + 1:
                    self._to = seq
                    self._count += 1
                elif seq != last:
                    return self._start(seq, step, frame_kind, body)
                if self._count == 1:
                    fold.setdefault("request" if frame_kind == _REQUEST else "answer", body)
                else:
                    fold["last_request" if frame_kind == _REQUEST else "last_answer"] = body
                return []
            if frame_kind == _ABORT:
                done = self.flush()
                reason = str(body[1]) if isinstance(body, list) and len(body) > 1 else ""
                done.append({"seq": seq, "step": "abort", "from": self._sender(kind), "reason": reason})
                return done
            return self._start(seq, step, frame_kind, body)
        if kind == EFFECT:
            return []  # effects are the role's own business: the sequence shows the messages
        if kind == RUN:
            self.side = str(data.get("side", "")) if isinstance(data, dict) else ""
            return [{"run": data.get("run", "") if isinstance(data, dict) else "", **(data or {})}]
        if kind == RAISE:
            done = self.flush()
            done.append({"seq": seq, "step": step, "raised": str(data[0]), "reason": str(data[1])})
            return done
        if kind == END:
            done = self.flush()
            done.append({"seq": seq, "end": str(data[0]), "terminal": step, "reason": str(data[1])})
            return done
        return []

    def _start(self, seq: int, step: str, frame_kind: int, body: Any) -> list[dict[str, Any]]:
        done = self.flush()
        self._fold = {"request" if frame_kind == _REQUEST else "answer": body}
        self._seq = self._to = seq
        self._step = step
        self._count = 1
        return done

    def flush(self) -> list[dict[str, Any]]:
        """The fold under way, as an event (a list of none or one)."""
        fold, self._fold = self._fold, None
        if fold is None:
            return []
        fold = {"seq": self._seq, "to": self._to, "step": self._step, "count": self._count, **fold}
        self._step = ""
        for slot in ("request", "answer", "last_request", "last_answer"):
            if slot in fold:
                fold[slot] = summarize(fold[slot], names=self.names)
        return [fold]

    def _sender(self, kind: str) -> str:
        if self.side == "host":
            return "host" if kind == OUT else "client"
        return "client" if kind == OUT else "host"


def events(records: Iterable[list[Any]], spec: Specification[Any] | None = None) -> list[dict[str, Any]]:
    """A whole record's events."""
    transcript = Transcript(spec)
    found: list[dict[str, Any]] = []
    for record in records:
        found.extend(transcript.feed(record))
    found.extend(transcript.flush())
    return found


def dump(event: Mapping[str, Any]) -> str:
    """An event as its transcript line."""
    return json.dumps(event, separators=(", ", ": "), default=str)


def last_run(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the last run in a role's transcript (a name's log holds each of its runs,
    and a resumed run goes on in the same one)."""
    run: list[dict[str, Any]] = []
    for event in events:
        if event.get("event") == "start":
            run = []
        run.append(event)
    return run


def load(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The events of transcript lines (lines that are not events are skipped)."""
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value
