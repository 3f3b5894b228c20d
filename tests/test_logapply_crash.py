"""The embedded log under SIGKILL at random moments: no acknowledged entry lost, none applied
twice, the same state after recovery as a replay of the log from index 1."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes.logapply import KeyValue, Replica, SnapshotStore, SQLiteEntryLog

ROOT = Path(__file__).resolve().parent.parent
TOTAL = 60_000
KILLS = 8


CHILDREN: list[subprocess.Popen[str]] = []


def start_child(directory: Path, first: int) -> subprocess.Popen[str]:
    CHILDREN.append(child := subprocess.Popen(
        [sys.executable, "-m", "tests.logapply_crashworker", str(directory), str(first), str(TOTAL)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ))  # fmt: skip
    return child


def acknowledged(out: str) -> set[int]:
    return {int(line.split()[1]) for line in out.splitlines() if line.startswith("ack ")}


@pytest.fixture(autouse=True)
def _no_child_left_behind() -> Iterator[None]:
    # A failing (or timed-out) test must not leave a worker running for the rest of the suite.
    yield
    for child in CHILDREN:
        if child.poll() is None:
            child.kill()
            child.communicate()
    CHILDREN.clear()


def test_sigkill_of_the_embedded_log_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """8 SIGKILLs while 60,000 proposals are in flight (64 at a time, snapshots every 700, log
    compacted behind them). Each restart re-proposes from the lowest unacknowledged entry under
    the same ids. At the end every entry is applied exactly once (each key is 1), the log holds
    exactly 60,000 entries, and every acknowledged one is among them."""
    rng = random.Random(8)
    acked: set[int] = set()
    kills = 0
    for _ in range(3 * KILLS):
        first = min(set(range(TOTAL)) - acked, default=TOTAL)
        child = start_child(tmp_path, first)
        time.sleep(rng.uniform(0.5, 1.0))  # a random moment: python needs ~0.4 s to start
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        acked |= acknowledged(out)
        if child.returncode != -signal.SIGKILL or "DONE" in out:
            assert 0 == child.returncode, err
            break
        kills += 1
        if kills == KILLS:
            break
    assert KILLS == kills, f"only {kills} kills landed before the work was done; make it longer"
    final = start_child(tmp_path, min(set(range(TOTAL)) - acked, default=TOTAL))
    out, err = final.communicate(timeout=120)
    assert 0 == final.returncode, err
    acked |= acknowledged(out)
    assert set(range(TOTAL)) == acked

    async def check() -> None:
        replica = Replica(
            "crash", KeyValue(), SQLiteEntryLog(tmp_path / "log.db"), SnapshotStore(tmp_path / "snapshots")
        )
        await replica.start()
        state = replica.value.root
        assert TOTAL == replica.applied, "the log holds a doubled (or lost) entry"
        doubled = {k: v for k, v in state.items() if v != 1}
        assert {} == doubled, "applied twice"
        assert TOTAL == len(state)
        await replica.close()

    asyncio.run(check())
