"""Panels a kind adds to its processes' pages: what only the kind knows how to show.

A panel is an object with ``applies_to(kind)`` and ``render(snapshot)``, which returns a
:class:`PanelView` (or None: nothing to show for this snapshot). It is rendered with the page and
again at every live update, from the snapshot the watch stream delivers (secrets already
masked). A view holds text only (a Mermaid diagram, a table, preformatted text, a note), never
HTML: the console escapes everything it shows, so a panel cannot break the page or open it to
script injection, whatever its process's state holds.

Packages install panels as entry points of group ``statevisor.panels`` (see
:func:`supervisor.daemon.plugins.load_panels`); a program that runs a console of its own passes
them to :class:`~supervisor.web.WebConsole`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import structlog

from .._core.snapshot import Snapshot

log = structlog.get_logger("statevisor.web")

_reported: set[tuple[str, str]] = set()  # (panel, kind) whose failure was logged: once is enough


@dataclass(frozen=True, slots=True)
class PanelView:
    """What a panel shows: any of a Mermaid diagram (drawn in the page), a table (its first row
    the header), preformatted text, and a one-line note."""

    title: str
    mermaid: str | None = None
    table: Sequence[Sequence[str]] = ()
    text: str | None = None
    note: str | None = None


@runtime_checkable
class Panel(Protocol):
    """A panel for the pages of some kinds' processes (see the module's text)."""

    def applies_to(self, kind: str) -> bool:
        """Whether processes of ``kind`` get this panel."""
        ...

    def render(self, snapshot: Snapshot) -> PanelView | None:
        """The panel for this snapshot of one of them (None: nothing to show now)."""
        ...


def render_panels(panels: Iterable[Panel], snapshot: Snapshot) -> list[PanelView]:
    """Every panel that applies to the snapshot's kind, rendered; a panel that raises shows that
    it failed (and is logged) instead of failing the page."""
    views = []
    for panel in panels:
        try:
            if not panel.applies_to(snapshot.kind):
                continue
            view = panel.render(snapshot)
        except Exception as exc:
            name = type(panel).__name__
            if (name, snapshot.kind) not in _reported:  # a live page renders it at every update
                _reported.add((name, snapshot.kind))
                log.warning("web_panel_failed", panel=name, pid=snapshot.pid, kind=snapshot.kind, error=repr(exc))
            views.append(PanelView(name, note=f"this panel failed: {exc!r}"))
            continue
        if view is not None:
            views.append(view)
    return views
