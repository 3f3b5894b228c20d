"""The run monitor's keeper: the monitor's parent, which records the exit status of commands
whose monitor died before them.

Only a process's parent, or the nearest child subreaper above it, learns its exit status. A
command's parent is the monitor; when the monitor is killed, the command is re-parented to the
nearest subreaper above it. That used to be the daemon, so a command still running when both
the monitor and the daemon were killed lost its status (``CommandLost``). The keeper is that
subreaper now: the monitor starts as one process that forks; the parent keeps, the child serves.
It does nothing while its monitor lives (it waits in ``waitid``), costs nothing per command, and
exits once its monitor and every command it inherited have ended. A command it inherits ends
into the journal (``ended``, as the monitor would have written it), where the next monitor
finds it, and so does the daemon however late it asks.

Standard library only: the monitor imports it as a script's sibling.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

if __package__:
    from ._journal import append_ended, ended_entry, started_runs
else:  # imported by the monitor run as a script
    from _journal import append_ended, ended_entry, started_runs  # type: ignore[import-not-found,no-redef]

__all__ = ["keep"]


def keep(journal: str, monitor: int, start_time: Callable[[int], int | None]) -> None:
    """Reap every child (the monitor, then what it left) until none is left; a reaped command
    of a run that ``journal`` saw start and not end gets its ``ended`` line."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            return  # the monitor and everything it left have ended
        except InterruptedError:
            continue
        if info is None:
            continue
        pid = info.si_pid
        run = None if pid == monitor else _run_of(journal, pid, start_time(pid))
        if run is not None:
            # As the monitor does: the rest of the group dies with its leader, whose zombie
            # still pins the group id.
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
        if run is not None:
            try:
                append_ended(journal, run, ended_entry(status, usage))
            except OSError as error:
                print(f"statevisor-keeper: cannot record the end of {run}: {error}", file=sys.stderr, flush=True)


def _run_of(journal: str, pid: int, ticks: int | None) -> str | None:
    """The run whose command is ``pid`` (started at ``ticks``: a reused pid does not match)."""
    if ticks is None:
        return None
    try:
        started = started_runs(journal)
    except OSError:
        return None
    for action_id, started_as in started.items():
        if started_as[:2] == [pid, ticks]:
            return action_id
    return None
