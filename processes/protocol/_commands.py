"""The protocol kind's command: ``statevisor sequence PID`` (an entry point of group
``statevisor.commands``), on a protocol role of a running daemon, live or ended."""

from __future__ import annotations

import argparse
import sys

from supervisor.cli.commands import OK, USAGE, emit, json_line
from supervisor.control import RemoteHandle

from ._diagram import run_sequence, state_diagram
from ._spec import lookup
from ._transcript import last_run, load


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
        lines = await handle.logs("stdout", args.lines)
        diagram = run_sequence(transcript=lines)
        if args.json:
            emit(json_line({"events": last_run(load(lines)), "diagram": diagram}))
        else:
            emit(diagram.rstrip("\n"))
        return OK


SEQUENCE = Sequence()
