"""Reading ``/proc/<pid>/stat``: whether a process exists, and when it started.

A pid alone does not name a process for long (pids are reused); a pid and its start time do.
Shared by the run monitor (a plain script) and the daemon's side, so it imports nothing.
"""

from __future__ import annotations


def stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            raw = stat.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields is not None else None
