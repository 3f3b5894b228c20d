"""The web console's panel for protocol roles: the sequence diagram of the run a role is in (or
its last), drawn from its transcript as the page updates, so the picture is the run's own."""

from __future__ import annotations

import os
from typing import Any

from supervisor import Snapshot
from supervisor.web import PanelView

from ._diagram import sequence_diagram
from ._transcript import last_run, load

TAIL_BYTES = 256 * 1024
"""How much of a transcript's end a page reads at each update. Repeated steps are folded, so a
run fits in far less; a longer one is drawn from where the tail begins, and the panel says so."""


class SequencePanel:
    """The sequence diagram of a protocol role's current run, for its process page."""

    def applies_to(self, kind: str) -> bool:
        return kind == "protocol"

    def render(self, snapshot: Snapshot) -> PanelView | None:
        state: Any = snapshot.state
        path = state.get("transcript") if isinstance(state, dict) else None
        if not isinstance(path, str):
            return None
        try:
            lines, cut = _tail(path)
        except FileNotFoundError:
            return PanelView("Sequence of the run", note="no run yet: the role has not started one")
        run = last_run(load(lines))
        began = bool(run) and run[0].get("event") == "start"
        note = "the run began before the part of its transcript read here" if cut and not began else None
        return PanelView("Sequence of the run", mermaid=sequence_diagram(run), note=note)


def _tail(path: str) -> tuple[list[str], bool]:
    """The last :data:`TAIL_BYTES` of the file, whole lines only; whether anything was left out."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, size - TAIL_BYTES)
        file.seek(start)
        data = file.read()
    lines = data.decode("utf-8", "replace").splitlines()
    if start:
        lines = lines[1:]  # the first is likely cut in two
    return lines, start > 0
