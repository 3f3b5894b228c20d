"""The daemon's open-files limit: raised to the hard limit at start, given back to children.

Why: most systems start programs with a soft limit of 1,024 descriptors, kept that low for
programs built on ``select()``, which cannot watch a descriptor past 1,023. The hard limit is
far higher (524,288 under systemd). A daemon serving ``daemon.max_connections`` clients (1,024
by default) beside its store, logs, SSH and NATS connections needs more than 1,024, and would
fail with "too many open files" at the worst moment, under load. So, as systemd's authors advise
and as Go's runtime does, the daemon raises its own soft limit to the hard one, and the commands
it starts get the soft limit it was given, not the raised one (their ``select()`` stays safe).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

RESERVED = 64
"""Descriptors the daemon needs beside its control connections: the store, the metrics
listener, log files, monitor links, SSH and NATS connections (a generous count)."""

_CEILING = 1 << 20
"""Used when the hard limit is unlimited (some systems): Linux refuses more than ``nr_open``."""

_given: list[int | None] = [None]  # the soft limit this program started with, once raised


@dataclass(frozen=True)
class OpenFilesLimit:
    """What :func:`raise_open_files_limit` found and made of it."""

    before: int
    after: int
    hard: int
    error: str | None = None

    def short_of(self, connections: int) -> bool:
        """Too low for ``connections`` control connections and the daemon's own descriptors."""
        return self.after < connections + RESERVED


def raise_open_files_limit() -> OpenFilesLimit:
    """Raise this program's soft limit on open files to its hard limit (never lowers it).

    The soft limit it had is remembered for :func:`open_files_for_children`. A refusal (a hard
    limit past the kernel's ``nr_open``, or a sandbox) keeps the old limit and says why.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return OpenFilesLimit(soft, soft, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as error:
        return OpenFilesLimit(soft, soft, hard, error=str(error))
    if _given[0] is None:
        _given[0] = soft
    return OpenFilesLimit(soft, target, hard)


def open_files_for_children() -> int | None:
    """The soft limit on open files that programs this one starts should get back: the one it
    was started with, when :func:`raise_open_files_limit` raised it; None otherwise (children
    inherit this program's limit as it is)."""
    return _given[0]
