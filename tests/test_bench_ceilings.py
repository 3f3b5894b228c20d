"""The benchmarks' ceilings do what they say: the "unwritten" ones skip exactly the SQLite
writes and nothing else, and the "no runtime" one writes every checkpoint for real.

A ceiling that still wrote would understate what the runtime could reach; one that skipped
more than the writes (the encoding, the group commit, the apply) would overstate it. These
tests pin both sides on tiny runs; the figures themselves belong to the benchmarks.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from benchmarks._durability import _durable_rate, _no_runtime_rate
from benchmarks._logapply import _proposed
from supervisor import decode_record


def _versions(path: Path, pattern: str = "checkpoint-*.db") -> list[int]:
    (database,) = path.glob(pattern)
    with sqlite3.connect(database) as db:
        return sorted(version for (version,) in db.execute("SELECT version FROM processes"))


async def test_unwritten_checkpoints_are_counted_but_never_reach_the_file(tmp_path: Path) -> None:
    """With write=False every durable transition still goes through the group commit (at
    least one row counted per transition: a process's start may land in the measured part too)
    while the file keeps only what was written before the measured part (spawn and start)."""
    rate, blobs, _, rows_per_transition = await _durable_rate(str(tmp_path), 5, 3, mode="every", write=False)
    assert rate > 0
    assert 5 == len(blobs)
    assert rows_per_transition >= 1.0
    assert max(_versions(tmp_path)) <= 1
    assert all(decode_record(blob).version >= 4 for blob in blobs)  # start, 3 casts, a call


async def test_written_checkpoints_reach_the_file(tmp_path: Path) -> None:
    """The same run with writes on leaves every process's last version in the file (the
    ceiling's test above would pass vacuously if nothing were ever written)."""
    await _durable_rate(str(tmp_path), 5, 3, mode="every")
    assert min(_versions(tmp_path)) > 1


async def test_unwritten_log_entries_are_applied_but_never_stored(tmp_path: Path) -> None:
    """With write=False the log's writer commits nothing, yet every proposal is answered (a
    proposal answers once its entry is applied); with writes on, every entry is in the file."""
    rate, batch = await _proposed(tmp_path / "unwritten", 300, write=False)
    assert rate > 0
    assert batch >= 1
    with sqlite3.connect(tmp_path / "unwritten" / "log.db") as db:
        assert [(0,)] == db.execute("SELECT count(*) FROM entries").fetchall()
    await _proposed(tmp_path / "written", 300)
    with sqlite3.connect(tmp_path / "written" / "log.db") as db:
        assert [(300,)] == db.execute("SELECT count(*) FROM entries").fetchall()


async def test_the_no_runtime_ceiling_writes_every_checkpoint(tmp_path: Path) -> None:
    """Its bare tasks make each of their transitions durable through the real store: every
    counter's last version (3 steps + 1, as the runtime's counters make) is in the file."""
    assert await _no_runtime_rate(str(tmp_path), 5, 3) > 0
    assert [4] * 5 == _versions(tmp_path, "no-runtime-*.db")
