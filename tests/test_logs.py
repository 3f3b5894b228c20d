"""Log configuration: JSON lines off a terminal, on stderr, with the process's identity."""

from __future__ import annotations

import io
import json
import sys
import warnings

import pytest
import structlog

import supervisor.daemon.log
from supervisor import Runtime, TransitionError
from supervisor.daemon.log import capture_warnings, configure
from tests.machines import Counter


async def test_transition_errors_are_logged_as_json_with_pid_kind_and_lifecycle() -> None:
    """Off a terminal, each log line is one JSON object naming the process, its kind and lifecycle."""
    stream = io.StringIO()
    configure("info", stream=stream)
    runtime = Runtime()
    handle = runtime.spawn(Counter, pid="p1")
    with pytest.raises(TransitionError):
        await handle.call("boom")
    await handle.kill()
    structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failed = [line for line in lines if line["event"] == "transition_failed"]
    assert 1 == len(failed)
    assert ("p1", "counter", "running", "error") == (
        failed[0]["pid"], failed[0]["kind"], failed[0]["lifecycle"], failed[0]["level"]
    )  # fmt: skip


def test_unknown_level_is_refused() -> None:
    """configure() names the allowed levels when given another."""
    with pytest.raises(ValueError, match="debug, info, warning, error"):
        configure("loud")


def test_a_warning_from_any_library_is_one_json_log_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once captured, a Python warning is logged through structlog as one JSON line
    (``python_warning`` with its category, text and where it was raised), never printed raw."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # where a raw warning would land
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure("info", json=True, stream=stream)
        capture_warnings()
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert ("python_warning", "warning", "DeprecationWarning", "old API") == (
        entry["event"], entry["level"], entry["category"], entry["message"]
    )  # fmt: skip
    assert entry["where"].startswith(f"{__file__}:")


def test_warnings_raised_before_the_log_is_configured_are_held_and_logged_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A warning raised before configure() (a library's, as it is imported) is held, then
    logged as a JSON line by configure(), with the category's module named for a foreign one."""
    monkeypatch.setattr(supervisor.daemon.log, "_configured", False)
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        capture_warnings()
        warnings.warn("too early", _LibraryWarning, stacklevel=1)
        assert "" == stream.getvalue()
        configure("info", json=True, stream=stream)
    structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert ("python_warning", f"{__name__}._LibraryWarning", "too early") == (
        entry["event"], entry["category"], entry["message"]
    )  # fmt: skip


class _LibraryWarning(UserWarning):
    """A warning class of a module other than builtins, as a library's would be."""
