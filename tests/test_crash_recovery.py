"""Crash safety of the whole program: SIGKILL at random moments loses nothing, repeats nothing.

A child Python process (tests/crashworker.py) runs 1,000 processes that each perform sixteen tracked
effects against an executor that appends every effect, with its action id, to a separate SQLite
file. The parent kills the child with SIGKILL at seeded random moments and starts it again, at
least 20 times with work still outstanding, then lets it finish.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor import Lifecycle, decode_record

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 1000
STEPS = 16
KILLS = 20


def start_child(store: Path, effects: Path, seed: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crashworker", str(store), str(effects), str(PROCESSES), str(STEPS), str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_process_and_repeats_no_effect(tmp_path: Path) -> None:
    """Every process reaches its terminal state, every effect is applied exactly once (by id and
    by count per process), and no process vanishes, across 20+ SIGKILLs of the whole program."""
    store, effects = tmp_path / "store.db", tmp_path / "effects.db"
    rng = random.Random(20261122)
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"only {kills} kills landed on a working child in {attempts} runs"
        child = start_child(store, effects, seed=attempts)
        time.sleep(rng.uniform(0.3, 0.75))  # python itself takes ~0.3 s to start
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        if child.returncode == -signal.SIGKILL and "DONE" not in out:
            kills += 1
        else:
            break  # it finished before the kill: all work is done, nothing more to interrupt
    assert kills >= KILLS, f"the workload finished after {kills} kills; make it longer"

    final = start_child(store, effects, seed=0)
    out, _ = final.communicate(timeout=300)
    assert 0 == final.returncode, out
    assert "DONE" in out

    db = sqlite3.connect(store)
    rows = db.execute("SELECT pid, lifecycle, record FROM processes").fetchall()
    assert PROCESSES == len(rows), "a process vanished (or appeared twice)"
    assert {str(Lifecycle.FINISHED)} == {lifecycle for _, lifecycle, _ in rows}
    assert [] == db.execute("SELECT pid FROM quarantine").fetchall()

    log = sqlite3.connect(effects)
    doubled = log.execute("SELECT id, COUNT(*) FROM effects GROUP BY id HAVING COUNT(*) > 1").fetchall()
    assert [] == doubled, f"effects applied twice: {doubled[:5]}"
    per_process = dict(log.execute("SELECT pid, COUNT(*) FROM effects GROUP BY pid").fetchall())
    assert {f"p{i:04d}": STEPS for i in range(PROCESSES)} == per_process
    expected_total = sum(range(1, STEPS + 1))
    for pid, _, blob in rows:
        record = decode_record(blob)
        assert expected_total == record.result["total"], pid
        applied = {r[0] for r in log.execute("SELECT id FROM effects WHERE pid = ?", (pid,))}
        assert applied == set(record.result["ids"]), f"{pid}: its results name other effects than were applied"
    assert os.path.exists(str(store) + ".lock")
