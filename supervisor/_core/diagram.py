"""Draw a process type's declared phases and edges as a Mermaid state diagram."""

from __future__ import annotations

from typing import Any

from .._errors import DiagramError
from .machine import Machine


def mermaid(machine: type[Machine[Any]] | Machine[Any]) -> str:
    """A ``stateDiagram-v2`` of the machine: initial phase, declared edges with labels, and
    phases with no outgoing edge drawn as final."""
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
    return "\n".join(lines) + "\n"
