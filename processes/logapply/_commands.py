"""The log-apply kind's commands: ``statevisor propose`` and ``statevisor read`` (entry points of
group ``statevisor.commands``), on a log-apply process of a running daemon."""

from __future__ import annotations

import argparse

from supervisor.cli.commands import OK, argument, emit, json_line
from supervisor.control import RemoteHandle

from ._machine import LogApplyClient


class Propose:
    """``statevisor propose PID ENTRY``: append an entry; print its index and apply's result."""

    help = "log-apply: append an entry; print its index and apply result once applied"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("entry", help="the entry: JSON, or else a plain string")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")

    async def run(self, args: argparse.Namespace, handle: RemoteHandle) -> int:
        machine = LogApplyClient(handle, timeout=args.timeout)
        index, result = await machine.propose_indexed(argument(args.entry))
        emit(json_line({"index": index, "result": result}) if args.json else f"{index}\t{json_line(result)}")
        return OK


class Read:
    """``statevisor read PID QUERY``: answer a query from the applied state."""

    help = "log-apply: answer a query from the applied state"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("query", help="the query: JSON, or else a plain string")
        parser.add_argument("--sync", action="store_true", help="first catch up with the log's current end")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (default 60)")

    async def run(self, args: argparse.Namespace, handle: RemoteHandle) -> int:
        machine = LogApplyClient(handle, timeout=args.timeout)
        emit(json_line(await machine.read(argument(args.query), sync=args.sync)))
        return OK


PROPOSE = Propose()
READ = Read()
