"""Log rotation (copy-and-truncate, capped) and reading a log across rotations by stream offset."""

from __future__ import annotations

import json
import os
from pathlib import Path

from supervisor._files.logrotation import (
    LINE_MAX,
    PATIENCE,
    LogStream,
    Rotation,
    read_rotation,
    record_path,
    remove_log,
)
from supervisor.lowlevel import rotate_log, tail_lines


def write(log: Path, *lines: str) -> None:
    with open(log, "a") as out:
        out.writelines(f"{line}\n" for line in lines)


def drain(stream: LogStream) -> list[str]:
    """Every complete line the stream has now (polls until one finds nothing)."""
    seen: list[str] = []
    while (found := stream.poll(limit=64)) is not None:  # small reads: many polls, many seams
        seen.extend(line for line, _ in found)
    return seen


def test_rotation_keeps_the_cap_and_records_where_the_bytes_went(tmp_path: Path) -> None:
    """rotate_log copies the last max_bytes to <log>.1 and empties the log; the record says the
    live file now begins at the old size and .1 holds the stream range it copied."""
    log = tmp_path / "out.log"
    write(log, *(f"line {i:04d}" for i in range(100)))  # 10 bytes each
    assert rotate_log(log, 300, 2)
    assert 0 == log.stat().st_size
    assert 300 == Path(f"{log}.1").stat().st_size
    assert Rotation(generation=2, base=1000, backups=((700, 1000),)) == read_rotation(log)
    assert not rotate_log(log, 300, 2), "nothing to rotate below the cap"
    assert 0o600 == Path(f"{log}.1").stat().st_mode & 0o777
    assert 0o600 == record_path(log).stat().st_mode & 0o777


def test_a_follower_behind_two_rotations_reads_the_backups_then_the_live_file(tmp_path: Path) -> None:
    """Lines written while a follower was not reading, across two rotations, arrive from <log>.2,
    <log>.1 and the live file in order: none missing, none twice."""
    log = tmp_path / "out.log"
    write(log, *(f"line {i:04d}" for i in range(10)))
    stream = LogStream(log, 0)
    assert [f"line {i:04d}" for i in range(10)] == drain(stream)
    write(log, *(f"line {i:04d}" for i in range(10, 30)))
    rotate_log(log, 1000, 3)
    write(log, *(f"line {i:04d}" for i in range(30, 50)))
    rotate_log(log, 1000, 3)
    write(log, *(f"line {i:04d}" for i in range(50, 55)))
    assert [f"line {i:04d}" for i in range(10, 55)] == drain(stream)
    assert 0 == stream.lost
    assert 550 == stream.position


def test_a_line_cut_by_a_rotation_is_joined(tmp_path: Path) -> None:
    """A line half written when the log was rotated (its start in .1, its end in the new file)
    is yielded whole, with the stream offset after it: by a follower that had read its start
    and by one that had not."""
    log = tmp_path / "out.log"
    ahead = LogStream(log, 0)
    with open(log, "a") as out:
        out.write("first\nsecond ha")
    assert [("first", 6)] == ahead.poll()
    behind = LogStream(log, 6)
    rotate_log(log, 10, 1)  # .1 holds "\nsecond ha"
    with open(log, "a") as out:
        out.write("lf\nthird\n")
    assert [("second half", 18), ("third", 24)] == [item for found in iter(ahead.poll, None) for item in found]
    assert [("second half", 18), ("third", 24)] == [item for found in iter(behind.poll, None) for item in found]


def test_bytes_rotated_away_before_they_were_read_skip_to_the_next_whole_line(tmp_path: Path) -> None:
    """A follower that fell further behind than the backups reach loses those bytes: it goes on
    at the first whole line still kept and counts the loss; no fragment of a line is yielded."""
    log = tmp_path / "out.log"
    stream = LogStream(log, 0)
    write(log, *(f"line {i:04d}" for i in range(100)))
    rotate_log(log, 95, 1)  # .1 keeps the last 95 bytes: a fragment, then 9 whole lines
    write(log, "after")
    assert [f"line {i:04d}" for i in range(91, 100)] + ["after"] == drain(stream)
    assert 1 == stream.lost


def test_a_rotation_under_way_is_waited_for_then_given_up_on(tmp_path: Path) -> None:
    """While the record says a rotation is under way the follower reads nothing (the files are
    half moved); a rotator that died midway is waited for only PATIENCE polls."""
    log = tmp_path / "out.log"
    write(log, "one")
    record_path(log).write_text(json.dumps({"generation": 1, "base": 0, "backups": []}))
    stream = LogStream(log, 0)
    waits = 0
    while (found := stream.poll()) is None:
        waits += 1
        assert waits <= PATIENCE
    assert PATIENCE == waits
    assert [("one", 4)] == found
    write(log, *(f"line {i:04d}" for i in range(100)))
    assert rotate_log(log, 100, 1), "the next rotation recovers the record"
    assert Rotation(4, 1004, ((904, 1004),)) == read_rotation(log), "generation even again, past the odd one"


def test_a_log_truncated_by_someone_else_is_read_again_from_its_start(tmp_path: Path) -> None:
    """A log that shrank with no rotation recorded (an operator emptied it) is followed from its
    beginning again: new lines are not lost behind the old offset."""
    log = tmp_path / "out.log"
    write(log, "a long first line", "and another")
    stream = LogStream(log, 0)
    assert ["a long first line", "and another"] == drain(stream)
    log.write_text("")
    write(log, "new")
    assert ["new"] == drain(stream)


def test_an_unreadable_record_means_the_live_file_alone(tmp_path: Path) -> None:
    """A damaged rotation record is not an error: the log is read as if it had no backups."""
    log = tmp_path / "out.log"
    write(log, "kept")
    record_path(log).write_text("{not json")
    assert Rotation() == read_rotation(log)
    assert ["kept"] == drain(LogStream(log, 0))


def test_the_tail_of_a_just_rotated_log_comes_from_its_backup(tmp_path: Path) -> None:
    """tail_lines right after a rotation (the live file holds fewer lines than asked) goes on
    into <log>.1, joining a line the rotation cut in two."""
    log = tmp_path / "out.log"
    write(log, *(f"line {i:04d}" for i in range(50)))
    with open(log, "a") as out:
        out.write("cut in ")
    rotate_log(log, 200, 1)
    with open(log, "a") as out:
        out.write("two\nlast\n")
    assert ["line 0048", "line 0049", "cut in two", "last"] == tail_lines(log, 4)
    assert ["last"] == tail_lines(log, 1)
    assert ["two", "last"] == tail_lines(log, 4, rotated=False), "told it was not rotated: the live file alone"
    os.unlink(f"{log}.1")
    assert ["two", "last"] == tail_lines(log, 4)


def test_remove_log_deletes_the_log_its_backups_and_its_record_and_nothing_else(tmp_path: Path) -> None:
    """remove_log takes the live file, every backup and the rotation record; a neighbour whose
    name starts the same stays, and a log already gone is no error."""
    log = tmp_path / "out.log"
    neighbour = tmp_path / "out.log.bak"
    neighbour.write_text("keep")
    for _ in range(3):
        write(log, *(f"line {i:04d}" for i in range(100)))
        assert rotate_log(log, 300, 2)
    write(log, "live")
    assert 4 == remove_log(log)  # out.log, .1, .2, the record
    assert ["out.log.bak"] == sorted(p.name for p in tmp_path.iterdir())
    assert 0 == remove_log(log)


def read_bytes() -> int:
    """Bytes this process has read through system calls so far (/proc/self/io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_long_line_comes_out_in_pieces_as_it_grows_and_a_resume_loses_nothing(tmp_path: Path) -> None:
    """A line with no newline yet, longer than LINE_MAX, is handed out in pieces of at most
    LINE_MAX bytes as it grows (a follower never holds it whole), each with the offset after
    it; no piece splits a UTF-8 character; a follower resumed at any piece's offset goes on
    with the rest of the line; the newline ends the last piece."""
    log = tmp_path / "out.log"
    text = ("é" + "x" * 1000) * 30  # 30,030 bytes; two-byte characters land on the cuts
    follower = LogStream(log, 0)
    pieces: list[tuple[str, int]] = []
    with open(log, "a", encoding="utf-8") as out:
        for start in range(0, len(text), 7000):
            out.write(text[start : start + 7000])
            out.flush()
            pieces += [item for found in iter(follower.poll, None) for item in found]
    assert len(pieces) >= 3, "pieces come out before the newline is written"
    with open(log, "a") as out:
        out.write("\nnext\n")
    pieces += [item for found in iter(follower.poll, None) for item in found]
    assert ("next", len(text.encode()) + 6) == pieces[-1]
    pieces = pieces[:-1]
    assert text == "".join(piece for piece, _ in pieces)
    assert all(len(piece.encode()) <= LINE_MAX for piece, _ in pieces)
    assert all("\ufffd" not in piece for piece, _ in pieces)
    ends = [end for _, end in pieces]
    assert ends == sorted(ends)
    assert len(text.encode()) + 1 == ends[-1]
    for index, (_, end) in enumerate(pieces[:-1]):
        resumed = [item for found in iter(LogStream(log, end).poll, None) for item in found]
        assert "".join(piece for piece, _ in pieces[index + 1 :]) == "".join(p for p, _ in resumed[:-1])


def test_the_tail_of_a_huge_line_is_its_last_pieces_read_in_bounded_bytes(tmp_path: Path) -> None:
    """tail_lines of a 20 MB file with no newline returns the last pieces (at most LINE_MAX
    bytes each) and reads about (lines + 1) x LINE_MAX bytes of it, not the whole file; \r
    still ends a line (a progress bar's redraws are its lines, as a terminal shows them)."""
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        out.write(b"a" * 20_000_000 + b"z")
    before = read_bytes()
    tail = tail_lines(log, 3)
    assert read_bytes() - before < 5 * LINE_MAX
    assert 3 == len(tail)
    assert all(len(piece) <= LINE_MAX for piece in tail)
    assert tail[-1].endswith("az")
    with open(log, "w") as out:
        out.write("progress 1%\rprogress 2%\rprogress 3%\r\nCRLF line\r\n\nlast")
    assert ["progress 2%", "progress 3%", "CRLF line", "", "last"] == tail_lines(log, 5)
