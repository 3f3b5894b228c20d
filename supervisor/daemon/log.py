"""Log configuration for the command line and the daemon (library code only gets loggers).

Logs go to stderr, so ``--json`` output on stdout stays parseable. JSON lines when stderr is not
a terminal (containers, journald, files), readable console lines when it is.

The daemon's logs are written by a thread of their own (:class:`LogSink`), never by the event
loop: stderr is a pipe to journald, a container runtime or a terminal, and a reader that stalls
would block the loop on a full pipe, freezing every process; one that goes away (journald
restarted, the terminal closed) would make every log call raise, inside whatever was logging:
a supervisor deciding a restart stopped restarting. A sink that cannot keep up drops lines and
says how many once it can; one whose stream broke drops and counts the rest.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from collections import deque
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

SINK_CAPACITY = 10_000
"""Lines a sink holds for a slow reader before it drops new ones (a few MB at most)."""

_sinks: list[LogSink] = []  # the sink configure() made last, if any

_held_warnings: list[dict[str, Any]] = []  # raised before configure(): logged by it
_configured = False


class LogSink:
    """Lines written to ``stream`` by one thread; ``write`` never blocks and never raises.

    ``dropped`` counts lines lost: the queue was full (``capacity``) or the stream broke
    (``broken`` says how). After a loss, the next lines written carry a ``log_lines_dropped``
    line with the count, so a gap in the log is never silent.
    """

    def __init__(self, stream: TextIO, *, capacity: int = SINK_CAPACITY, as_json: bool = True) -> None:
        self.stream = stream
        self.as_json = as_json
        self.capacity = capacity
        self.dropped = 0
        self.written = 0
        self.broken: str | None = None
        self._lines: deque[str] = deque()
        self._unreported = 0
        self._closed = False
        self._writing = False  # a batch taken from the queue is being written
        self.handler: logging.Handler | None = None  # the standard library's route in, if configured
        self._changed = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._write_lines, name="statevisor-log", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        with self._changed:
            if self.broken is not None or self._closed or len(self._lines) >= self.capacity:
                self.dropped += 1
                self._unreported += 1
                return
            self._lines.append(line)
            self._changed.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until every line queued so far is written (or lost); False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while (self._lines or self._writing) and self.broken is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (within ``timeout``: a stalled reader must not hold up the exit),
        and stop taking lines (later ones count as dropped)."""
        if self.handler is not None:
            logging.getLogger().removeHandler(self.handler)
        if self in _sinks:
            _sinks.remove(self)
        self.flush(timeout)
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=0.1)

    def _write_lines(self) -> None:
        while True:
            with self._changed:
                while not self._lines and not self._closed:
                    self._changed.wait()
                if not self._lines:
                    return
                batch = list(self._lines)
                self._lines.clear()
                self._writing = True
                unreported, self._unreported = self._unreported, 0
            text = "".join(f"{line}\n" for line in batch)
            if unreported:
                text += _dropped_line(unreported, self.as_json) + "\n"
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError) as error:  # EPIPE, EIO, a closed file: for good
                with self._changed:
                    self._writing = False
                    self.broken = f"{type(error).__name__}: {error}"
                    self.dropped += len(self._lines) + len(batch)
                    self._lines.clear()
                    self._changed.notify_all()
                return
            with self._changed:
                self._writing = False
                self.written += len(batch)
                self._changed.notify_all()  # for flush()

    def __repr__(self) -> str:
        state = f"broken ({self.broken})" if self.broken else "closed" if self._closed else "open"
        return f"<LogSink {state}: {self.written} written, {len(self._lines)} queued, {self.dropped} dropped>"


def _timestamp(seconds: float | None = None) -> str:
    """UTC, to the second, for the lines this module renders itself (structlog renders the rest)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _dropped_line(count: int, as_json: bool) -> str:
    # Rendered here, not through structlog: logging from the writer thread would queue behind
    # the very lines that could not be written.
    now = _timestamp()
    note = "the log's reader did not keep up; these lines were lost"
    if not as_json:
        return f"{now} [warning  ] log_lines_dropped              count={count} note={note!r}"
    fields = {"count": count, "event": "log_lines_dropped", "level": "warning", "timestamp": now, "note": note}
    return json.dumps(fields)


class _SinkLogger:
    """What structlog hands rendered lines to, in place of its PrintLogger."""

    def __init__(self, sink: LogSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _SinkHandler(logging.Handler):
    """Routes the standard library's logging (asyncio, asyncssh, nats) into the same sink."""

    def __init__(self, sink: LogSink, as_json: bool) -> None:
        super().__init__(logging.WARNING)
        self._sink = sink
        self._json = as_json

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        if self._json:
            line = json.dumps(
                {"event": message, "logger": record.name, "level": record.levelname.lower(),
                 "timestamp": _timestamp(record.created)}
            )  # fmt: skip
        else:
            line = f"{record.levelname.lower():9} {record.name}: {message}"
        self._sink.write(line)


def capture_warnings() -> None:
    """Route Python warnings, from any library, through the structured log from now on.

    A warning printed raw (``file:line: Category: text`` and the source line) lands between
    the JSON lines on stderr and breaks whatever parses them. Warnings raised before
    :func:`configure` (a library warning at import, say) are held and logged by it. Which
    warnings are raised at all is still up to the warnings filters (``-W``, ``PYTHONWARNINGS``).
    """
    warnings.showwarning = _log_warning


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    fields = {
        "category": f"{category.__module__}.{category.__qualname__}".removeprefix("builtins."),
        "message": str(message),
        "where": f"{filename}:{lineno}",
    }
    if not _configured:
        _held_warnings.append(fields)
        return
    structlog.get_logger("statevisor.warnings").warning("python_warning", **fields)


def configure(
    level: str = "info", *, json: bool | None = None, stream: TextIO | None = None, background: bool = False
) -> LogSink | None:
    """Send statevisor's logs to ``stream`` (stderr) at ``level``; ``json`` defaults to "not a tty".

    ``background`` (the daemon): lines are written by a :class:`LogSink` thread, returned so the
    caller can close it at exit; the standard library's logging goes there too. Warnings
    :func:`capture_warnings` held until now are logged here.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    sink = LogSink(stream, as_json=json) if background else None
    factory: Any = structlog.PrintLoggerFactory(file=stream)
    if sink is not None:
        logger = _SinkLogger(sink)
        factory = lambda *_: logger  # noqa: E731 - structlog calls the factory with the logger's name
        for old in list(_sinks):
            old.close(timeout=0.5)
        sink.handler = _SinkHandler(sink, json)
        logging.getLogger().addHandler(sink.handler)
        _sinks.append(sink)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    global _configured
    _configured = True
    held, _held_warnings[:] = list(_held_warnings), []
    for fields in held:
        structlog.get_logger("statevisor.warnings").warning("python_warning", **fields)
    return sink


def set_level(level: str) -> None:
    """Change the level of every statevisor logger at once (a reload's ``log_level``), keeping
    the rest of the configuration: the renderer, the sink."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]))


def current_sink() -> LogSink | None:
    """The daemon's log sink, when logs are written in the background (for the metrics)."""
    return _sinks[0] if _sinks else None
