"""Draw a process type's declared phases and edges as a Mermaid state diagram, with what
entering each phase does and the timeouts it arms (``entry_notes``, ``timeout_notes``)."""

from __future__ import annotations

from typing import Any

from .._errors import DiagramError
from .machine import Machine


def mermaid(machine: type[Machine[Any]] | Machine[Any]) -> str:
    """A ``stateDiagram-v2`` of the machine: initial phase, declared edges with labels, phases
    with no outgoing edge drawn as final, and beside each phase its ``entry / ...`` and
    ``timeout / ...`` notes (a machine with ``state_enter`` and no note for a phase is drawn with
    ``entry / enter()``, so the diagram never hides that entering it runs code)."""
    cls = machine if isinstance(machine, type) else type(machine)
    if cls.phases is None:
        raise DiagramError(f"{cls.__name__} declares no phases; set `phases` (and `edges`) to draw it")
    lines = ["stateDiagram-v2", f"    [*] --> {cls.initial_phase}"]
    for source, targets in cls.edges.items():
        for target, label in targets.items():
            suffix = f" : {label}" if label else ""
            lines.append(f"    {source} --> {target}{suffix}")
    for phase in cls.phases:
        if cls.edges and not cls.edges.get(str(phase)):
            lines.append(f"    {phase} --> [*]")
    for phase in cls.phases:
        entry = cls.entry_notes.get(str(phase)) or ("enter()" if cls.state_enter else "")
        if entry:
            lines.append(f"    {phase} : entry / {entry}")
        timeout = cls.timeout_notes.get(str(phase))
        if timeout:
            lines.append(f"    {phase} : timeout / {timeout}")
    return "\n".join(lines) + "\n"
