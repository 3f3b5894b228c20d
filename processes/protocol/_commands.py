"""The protocol kind's command: ``statevisor sequence PID`` (an entry point of group
``statevisor.commands``), on a protocol role of a running daemon, live or ended."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from supervisor.cli.commands import OK, USAGE, emit, json_line
from supervisor.control import RemoteHandle

from ._diagram import sequence_diagram, state_diagram
from ._spec import lookup
from ._transcript import load


def last_run(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the last run in a role's transcript (a name's log holds each of its runs,
    and a resumed run goes on in the same one)."""
    run: list[dict[str, Any]] = []
    for event in events:
        if event.get("event") == "start":
            run = []
        run.append(event)
    return run


class Sequence:
    """``statevisor sequence PID``: the Mermaid sequence diagram of a protocol role's run, drawn
    from its transcript; ``--states``: the role's state diagram, drawn from its protocol."""

    help = "protocol: the Mermaid sequence diagram of a role's run (--states: the role's state diagram)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--states", action="store_true", help="the role's state diagram, from its protocol's specification"
        )
        parser.add_argument(
            "--lines", type=int, default=100_000, help="how much of the transcript to read (default 100000 lines)"
        )

    async def run(self, args: argparse.Namespace, handle: RemoteHandle) -> int:
        snapshot = await handle.snapshot()
        if snapshot.kind != "protocol":
            print(
                f"statevisor sequence: {snapshot.name} is a {snapshot.kind} process, not a protocol role",
                file=sys.stderr,
            )
            return USAGE
        state = snapshot.state
        if args.states:
            diagram = state_diagram(lookup(str(state["protocol"])), str(state["role"]))
            emit(json_line({"diagram": diagram}) if args.json else diagram.rstrip("\n"))
            return OK
        events = last_run(load(await handle.logs("stdout", args.lines)))
        if args.json:
            emit(json_line({"events": events, "diagram": sequence_diagram(events)}))
        else:
            emit(sequence_diagram(events).rstrip("\n"))
        return OK


SEQUENCE = Sequence()
