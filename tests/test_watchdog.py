"""The suite's last-resort watchdog (tests/_watchdog.py) ends a run stuck past its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_daemon import ROOT

STUCK = """
import time
import pytest

@pytest.fixture
def stuck():
    yield
    while True:  # a teardown that swallows pytest-timeout's failure and never ends
        try:
            time.sleep(0.05)
        except BaseException:
            pass

def test_hangs_in_teardown(stuck):
    pass
"""


def test_a_teardown_stuck_past_the_timeout_ends_the_run_with_its_stack(tmp_path: Path) -> None:
    """A test whose teardown outlives pytest-timeout (it swallows the timeout's failure) is ended
    by the watchdog at timeout + grace: the run exits with status 3 and prints the stuck test's
    name and the stack of the function it was stuck in, instead of hanging until CI's limit."""
    (tmp_path / "test_stuck.py").write_text(STUCK)
    env = {**os.environ, "STATEVISOR_WATCHDOG_GRACE": "2", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests._watchdog", "-p", "no:cacheprovider", "-o", "timeout=1",
         "--rootdir", str(tmp_path), str(tmp_path / "test_stuck.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 3 == run.returncode, run.stdout + run.stderr
    assert "watchdog: test_stuck.py::test_hangs_in_teardown still running 3 s" in run.stderr, run.stderr
    assert "in stuck" in run.stderr, run.stderr
