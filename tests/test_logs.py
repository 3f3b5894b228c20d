"""Log configuration: JSON lines off a terminal, on stderr, with the process's identity."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from supervisor import Runtime, TransitionError
from supervisor.logs import configure
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
