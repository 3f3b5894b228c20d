"""Command-line operations on a running daemon, through the control client.

Exit codes (stable, for scripts): 0 done; 1 the operation failed (e.g. WouldBlock, a
transition error); 2 bad usage or configuration; 3 the daemon cannot be reached; 4 no such
process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ._exceptions import ProcessNotFound, StatevisorError
from ._snapshot import Snapshot

OK, FAILED, USAGE, UNREACHABLE, NOT_FOUND = 0, 1, 2, 3, 4


def socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    from .config import load

    return str(load(args.config).daemon.socket)


def _json(value: Any) -> str:
    return json.dumps(value, default=lambda v: v.hex() if isinstance(v, bytes) else str(v), sort_keys=True)


def _row(snapshot: Snapshot) -> list[str]:
    waiting = ", ".join(snapshot.waiting_on) or "-"
    age = f"{max(0.0, time.time() - snapshot.since):.0f}s"
    paused = "paused" if snapshot.paused else ""
    return [snapshot.pid, snapshot.name, snapshot.kind, str(snapshot.lifecycle), paused, snapshot.phase,
            str(snapshot.version), age, waiting]  # fmt: skip


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


HEADER = ["PID", "NAME", "KIND", "LIFECYCLE", "PAUSED", "PHASE", "VERSION", "SINCE", "WAITING ON"]


async def _operate(args: argparse.Namespace, path: str) -> int:
    from .control import Client

    async with Client.connect(path) as client:
        command = args.command
        if command == "ps":
            from ._lifecycle import Lifecycle

            lifecycle = Lifecycle(args.lifecycle) if args.lifecycle else None
            found = await client.list(kind=args.kind, lifecycle=lifecycle, paused=True if args.paused else None)
            print(_json([asdict(s) for s in found]) if args.json else _table([_row(s) for s in found], HEADER))
            return OK
        if command == "status":
            found = await client.list()
            counts: dict[str, int] = {}
            for snapshot in found:
                counts[str(snapshot.lifecycle)] = counts.get(str(snapshot.lifecycle), 0) + 1
            status = {"daemon": client.server_version, "socket": path, "processes": len(found), "by_lifecycle": counts}
            print(_json(status) if args.json else "\n".join(f"{k}: {v}" for k, v in status.items()))
            return OK
        if command == "spawn":
            state = json.loads(args.state) if args.state else None
            handle = await client.spawn(args.kind, state, name=args.name)
            snapshot = await handle.state()
            print(_json(asdict(snapshot)) if args.json else snapshot.pid)
            return OK
        handle = await client.get(args.pid)
        if command in ("pause", "resume", "nudge"):
            await getattr(handle, command)()
        elif command == "kill":
            await handle.kill(args.reason)
        elif command == "inspect":
            snapshot = await handle.state()
            print(_json(asdict(snapshot)) if args.json else json.dumps(asdict(snapshot), indent=2, default=str))
        elif command == "logs":
            stream = "stderr" if args.stderr else "stdout"
            if args.follow:
                async for line in handle.follow(stream, args.lines):
                    print(line, flush=True)
            else:
                for line in await handle.logs(stream, args.lines):
                    print(line)
        elif command == "watch":
            async for snapshot in handle.watch():
                print(_json(asdict(snapshot)) if args.json else "  ".join(_row(snapshot)), flush=True)
        return OK


def run_command(args: argparse.Namespace) -> int:
    try:
        path = socket_path(args)
    except StatevisorError as exc:
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return USAGE
    if not Path(path).exists():
        print(f"statevisor {args.command}: no daemon socket at {path} (is the daemon running?)", file=sys.stderr)
        return UNREACHABLE
    try:
        return asyncio.run(_operate(args, path))
    except ProcessNotFound as exc:
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return NOT_FOUND
    except (ConnectionError, OSError) as exc:
        print(f"statevisor {args.command}: cannot reach the daemon at {path}: {exc}", file=sys.stderr)
        return UNREACHABLE
    except json.JSONDecodeError as exc:
        print(f"statevisor {args.command}: --state is not JSON: {exc}", file=sys.stderr)
        return USAGE
    except (StatevisorError, TimeoutError) as exc:
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return FAILED


def add_commands(commands: Any) -> None:
    """Add the daemon-facing subcommands to the top-level parser's subparsers."""

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
        parser.add_argument("--socket", help="control socket (default: the one in --config)")
        parser.add_argument("--config", default="config/statevisor.toml", help="to find the socket")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.set_defaults(func=run_command)
        return parser

    ps = command("ps", "list live processes")
    ps.add_argument("--kind")
    ps.add_argument("--lifecycle", choices=("created", "running", "waiting"))
    ps.add_argument("--paused", action="store_true")
    command("status", "the daemon and its processes, in counts")
    spawn = command("spawn", "start a process of a kind")
    spawn.add_argument("kind")
    spawn.add_argument("--state", help="initial state as JSON")
    spawn.add_argument("--name")
    for name, text in (("pause", "pause a process"), ("resume", "resume a paused process"),
                       ("nudge", "permit one transition (step mode)"), ("inspect", "a process's full snapshot"),
                       ("watch", "follow a process's snapshots until it ends")):  # fmt: skip
        command(name, text).add_argument("pid", help="process id or name")
    logs = command("logs", "a process's log: the last lines, or follow it (-f)")
    logs.add_argument("pid", help="process id or name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    logs.add_argument("-n", "--lines", type=int, default=20, help="how many last lines (default 20)")
    logs.add_argument("--stderr", action="store_true", help="the stderr log instead of stdout")
    kill = command("kill", "kill a process (never restarted by a policy)")
    kill.add_argument("pid", help="process id or name")
    kill.add_argument("--reason", default="killed from the command line")
