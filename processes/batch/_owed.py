"""Cancels owed to hosts that could not be reached when a process was killed.

A kill never waits on an unreachable cluster: the cancel is written here (``owed-cancels.json``
in the executor's state directory, replaced atomically) and settled in the background, also
after a daemon restart, so a killed process's job is cancelled once its host answers again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import structlog

log = structlog.get_logger("statevisor.batch")


class OwedCancels(dict[str, list[str]]):
    """Host name -> cancel targets (job ids, or ``late:<name>:…`` for a submit that may have
    landed), kept in ``path``. A plain dict otherwise; :meth:`save` after changing it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("batch_owed_cancels_unreadable", path=str(path), error=str(exc))
            return
        self.update({str(k): [str(t) for t in v] for k, v in data.items()})

    def add(self, host: str, target: str) -> None:
        owed = self.setdefault(host, [])
        if target not in owed:
            owed.append(target)
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self))
        os.replace(temporary, self.path)

    def __repr__(self) -> str:
        return f"<OwedCancels {self.path} hosts={len(self)} targets={sum(map(len, self.values()))}>"
