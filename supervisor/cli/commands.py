"""Command-line operations on a running daemon, through the control client.

Exit codes (stable, for scripts): 0 done; 1 the operation failed (e.g. WouldBlock, a
transition error); 2 bad usage or configuration; 3 the daemon cannot be reached (or refused the
connection, e.g. a wrong token); 4 no such process.

The daemon is reached on its unix socket (``--socket``, else ``$STATEVISOR_SOCKET``, else the one
``--config`` names: ``$STATEVISOR_CONFIG`` or ``config/statevisor.toml``), or over TCP with
``--tcp host:port``; TCP needs the token, read from ``--token-file`` (or the config's
``daemon.token_file``) or the ``STATEVISOR_TOKEN`` environment variable, never from an argument
(arguments are visible to every user in ``ps``). Beyond loopback the connection is TLS, verified
against ``--tls-ca`` (or the config's ``daemon.tls_cert``, for a self-signed daemon).

Messages on the command line (``call``, ``cast``, ``propose``, ``read``) follow one rule: an
argument that is valid JSON is that JSON value (``42``, ``true``, ``[1, 2]``, ``{"a": 1}``,
``'"quoted"'``); anything else is the string as written, so ``call t1 ticks`` sends ``"ticks"``.

Output goes to stdout line by line; a reader that goes away (``statevisor ps | head -1``) ends
the command quietly with status 141, as SIGPIPE ends other Unix tools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._core.snapshot import Snapshot
from .._errors import ConfigurationError, ProcessNotFound, ProcessPaused, StatevisorError
from .._supervision.summary import LIVE_LIFECYCLES, NodeSummary
from ..control._errors import ConnectionDenied, DaemonNotAnswering, ProtocolError

if TYPE_CHECKING:
    from ..control import Client, RemoteHandle

OK, FAILED, USAGE, UNREACHABLE, NOT_FOUND = 0, 1, 2, 3, 4
OUTPUT_CLOSED = 128 + 13  # as a shell reports a command that SIGPIPE ended
SOCKET_VARIABLE = "STATEVISOR_SOCKET"
CONFIG_VARIABLE = "STATEVISOR_CONFIG"
DEFAULT_CONFIG = "config/statevisor.toml"


class OutputClosed(Exception):
    """Whoever read our stdout went away (a pager quit, ``| head`` had enough): not an error
    of the command's, so it ends quietly. Never raised past :func:`run_command`."""


def emit(text: str) -> None:
    """Print one line (or several) to stdout at once; :class:`OutputClosed` if nobody reads it."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        raise OutputClosed from None


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not report
    the closed pipe a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def default_config() -> str:
    """``--config``'s default: ``$STATEVISOR_CONFIG``, else the repository's example."""
    return os.environ.get(CONFIG_VARIABLE) or DEFAULT_CONFIG


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Target:
    """Where the daemon is, and how to connect to it."""

    where: str
    socket: str | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = None
    tls: ssl.SSLContext | None = None

    def client(self) -> Client:
        from ..control import Client

        if self.tcp is None:
            assert self.socket is not None
            return Client.connect(self.socket)
        assert self.token is not None
        return Client.connect_tcp(self.tcp[0], self.tcp[1], token=self.token, tls=self.tls)


def _token(args: argparse.Namespace, configured: Path | None) -> str:
    if args.token_file:
        return _read_token(Path(args.token_file), "--token-file")
    if os.environ.get("STATEVISOR_TOKEN"):
        return os.environ["STATEVISOR_TOKEN"]
    if configured is not None:
        return _read_token(configured, "daemon.token_file")
    raise ConfigurationError("--tcp needs a token: --token-file FILE, STATEVISOR_TOKEN, or daemon.token_file")


def _read_token(path: Path, source: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{source}: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigurationError(f"{source}: {path} is empty")
    return token


def target(args: argparse.Namespace) -> Target:
    """The daemon the arguments name: ``--tcp`` beats ``--socket`` beats the config's socket."""
    if not args.tcp:
        socket = args.socket or os.environ.get(SOCKET_VARIABLE)
        if socket:
            return Target(str(socket), socket=str(socket))
        from ..daemon.config import load

        socket = str(load(args.config, kinds=False).daemon.socket)
        return Target(socket, socket=socket)
    host, _, port = str(args.tcp).rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"--tcp: expected host:port, got {args.tcp!r}")
    daemon = None
    if Path(args.config).exists():
        # The config may supply the token file and the daemon's certificate; without one,
        # the arguments and the environment must.
        from ..daemon.config import load

        daemon = load(args.config, kinds=False).daemon
    tls = None
    ca = Path(args.tls_ca) if args.tls_ca else daemon.tls_cert if daemon is not None else None
    if ca is not None or host not in LOOPBACK:
        # Beyond loopback the daemon serves TLS only; verify it (a self-signed daemon's own
        # certificate is its CA), never fall back to an unverified connection.
        try:
            tls = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"--tls-ca: cannot load {ca}: {exc}") from None
    token = _token(args, daemon.token_file if daemon is not None else None)
    return Target(f"{host}:{port}", tcp=(host, int(port)), token=token, tls=tls)


def json_line(value: Any) -> str:
    """``value`` as one line of JSON (bytes as hex), keys sorted: what --json prints."""
    return json.dumps(value, default=lambda v: v.hex() if isinstance(v, bytes) else str(v), sort_keys=True)


_TIMER = re.compile(r"timer (.+) at (-?\d+(?:\.\d+)?)")


def _waiting(entries: tuple[str, ...], now: float) -> str:
    """What a process waits on, for a person: the runtime names a timer by its deadline on the
    daemon's clock (the wall clock, an epoch number); the table says how far off it is."""
    shown = []
    for entry in entries:
        timer = _TIMER.fullmatch(entry)
        if timer is None:
            shown.append(entry)
            continue
        left = float(timer.group(2)) - now
        shown.append(f"timer {timer.group(1)} " + (f"in {left:.1f}s" if left >= 0 else f"due {-left:.1f}s ago"))
    return ", ".join(shown) or "-"


def _row(snapshot: Snapshot, reachable: bool = True) -> list[str]:
    waiting = _waiting(snapshot.waiting_on, time.time())
    age = f"{max(0.0, time.time() - snapshot.since):.0f}s"
    paused = "paused" if snapshot.paused else ""
    lifecycle = str(snapshot.lifecycle) if reachable else f"{snapshot.lifecycle}(unreachable)"
    return [snapshot.pid, snapshot.name, snapshot.kind, lifecycle, paused, snapshot.phase,
            str(snapshot.version), age, waiting]  # fmt: skip


def _status_lines(summary: NodeSummary, where: str, now: float) -> list[str]:
    """``statevisor status`` for a person: the daemon, then its processes by kind."""
    up = f", up {_duration(now - summary.started)}" if summary.started is not None else ""
    by_lifecycle = ", ".join(f"{n} {lc}" for lc, n in summary.by_lifecycle().items())
    paused = sum(k.paused for k in summary.kinds.values())
    lines = [
        f"daemon: statevisor {summary.version} at {where}{up}",
        f"processes: {summary.live} live" + (f" ({by_lifecycle})" if by_lifecycle else "")
        + (f", {paused} paused" if paused else ""),
    ]  # fmt: skip
    rows = []
    for kind, counts in summary.kinds.items():
        slot = summary.slots.get(kind)
        rows.append([
            kind, str(counts.live),
            ", ".join(f"{n} {lc}" for lc in LIVE_LIFECYCLES if (n := getattr(counts, str(lc)))),
            str(counts.paused), str(counts.queued_inputs),
            f"{slot.used}/{slot.capacity}" + (f", {slot.queued} waiting" if slot.queued else "") if slot else "-",
        ])  # fmt: skip
    if rows:
        lines += _table(rows, ["KIND", "LIVE", "LIFECYCLES", "PAUSED", "QUEUED", "SLOTS"]).splitlines()
    ended = ", ".join(f"{n} {how}" for how, n in summary.ended.items())
    lines.append(f"since start: {ended}; {summary.restarts} restarts, {summary.given_up} children given up")
    for path, why in summary.failed_supervisors.items():
        lines.append(f"supervisor {path} FAILED: {why}; what it supervised is not restarted until the daemon restarts")
    if summary.quarantined:
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(summary.quarantined_why.items()))
        lines.append(
            f"quarantined at start: {summary.quarantined}" + (f" ({why})" if why else "")
            + " (statevisor store quarantined --store STORE)"
        )  # fmt: skip
    lines.append(f"store: {summary.store or 'none (checkpoints off)'}")
    if summary.store_problem:
        lines.append(f"store PROBLEM: {summary.store_problem} (see the daemon's log; the next start may lose state)")
    return lines


def _cluster_lines(cluster: dict[str, Any]) -> list[str]:
    """A cluster member's part of ``statevisor status``: the members as it sees them."""
    lines = [
        f"cluster {cluster['name']}: this daemon is {cluster['node']} ({cluster['standing']}), "
        f"lease {cluster['lease']:g} s; {cluster['failovers']} failovers, {cluster['taken']} processes taken, "
        f"{cluster['dropped']} dropped, {cluster['fenced_writes']} fenced writes"
    ]
    rows = [
        [name, str(m.get("processes", "-")), f"{m['lease_left']:.1f}s", m.get("incarnation", "-")]
        + (["(this daemon)"] if m.get("self") else [""])
        for name, m in sorted(cluster["members"].items())
    ]
    return lines + _table(rows, ["MEMBER", "PROCESSES", "LEASE LEFT", "INCARNATION", ""]).splitlines()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days}d"] * bool(days) + [f"{hours}h"] * bool(hours) + [f"{minutes}m"] * bool(minutes)
    return " ".join(parts) or f"{seconds}s"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


HEADER = ["PID", "NAME", "KIND", "LIFECYCLE", "PAUSED", "PHASE", "VERSION", "SINCE", "WAITING ON"]


DEADLINE = 60.0
"""Seconds a command waits for the daemon's answer: a daemon whose event loop is blocked still
takes connections (the kernel does), and a command would otherwise wait on it for good."""


async def _operate_within_deadline(args: argparse.Namespace, daemon: Target) -> int:
    """Run the command; all but the endless ones (watch, logs -f) within ``--deadline``, which
    a ``--timeout`` of the command's own extends."""
    if args.command == "watch" or (args.command == "logs" and args.follow):
        return await _operate(args, daemon)
    own: float | None = getattr(args, "timeout", None)
    limit = args.deadline if own is None else max(args.deadline, own + 10.0)
    try:
        async with asyncio.timeout(limit) as scope:
            return await _operate(args, daemon)
    except TimeoutError:
        if not scope.expired():
            raise  # a timeout of the operation's own (CallTimeout...), not ours
        raise DaemonNotAnswering(
            f"the daemon did not answer within {limit:g} s (is its event loop blocked? "
            "look for loop_stalled in its log)"
        ) from None


async def _operate(args: argparse.Namespace, daemon: Target) -> int:
    async with daemon.client() as client:
        command = args.command
        if command == "ps":
            from .._core.lifecycle import Lifecycle

            lifecycle = Lifecycle(args.lifecycle) if args.lifecycle else None
            placed = await client.placed(kind=args.kind, lifecycle=lifecycle, paused=True if args.paused else None)
            if args.json:
                emit(json_line([{**asdict(p.snapshot), **p.where()} for p in placed]))
            elif any(p.owner is not None for p in placed):  # a cluster's: every member's, with its owner
                rows = [[*_row(p.snapshot, p.reachable), p.owner or "-"] for p in placed]
                emit(_table(rows, [*HEADER, "OWNER"]))
            else:
                emit(_table([_row(p.snapshot) for p in placed], HEADER))
            return OK
        if command == "status":
            try:
                summary = await client.summary()
            except ProtocolError as exc:
                if "unknown operation 'summary'" not in str(exc):
                    raise
                return await _older_status(client, daemon, args.json)
            cluster = await client.cluster()
            if args.json:
                where = {"daemon": client.server_version, "address": daemon.where, "socket": daemon.socket}
                counts = {"processes": summary.live, "by_lifecycle": summary.by_lifecycle()}
                emit(json_line({**where, **counts, **summary.to_fields(), "cluster": cluster}))
            else:
                lines = _status_lines(summary, daemon.where, time.time())
                emit("\n".join(lines + (_cluster_lines(cluster) if cluster is not None else [])))
            return OK
        if command == "spawn":
            state = json.loads(args.state) if args.state else None
            handle = await client.spawn(args.kind, state, name=args.name, start=not args.held)
            snapshot = await handle.snapshot()
            emit(json_line(asdict(snapshot)) if args.json else snapshot.pid)
            return OK
        handle = await client.get(args.pid)
        if command in ("pause", "resume", "nudge", "start"):
            await getattr(handle, command)()
        elif command == "kill":
            await handle.kill(args.reason)
        elif command == "inspect":
            snapshot = await handle.snapshot()
            emit(json_line(asdict(snapshot)) if args.json else json.dumps(asdict(snapshot), indent=2, default=str))
        elif command == "logs":
            stream = "stderr" if args.stderr else "stdout"
            if args.follow:
                async for line in handle.follow(stream, args.lines):
                    emit(line)
            else:
                for line in await handle.logs(stream, args.lines):
                    emit(line)
        elif command in ("call", "cast"):
            message = argument(args.message)
            if command == "cast":
                await handle.cast(message)
            else:
                snapshot = await handle.snapshot()
                if snapshot.paused:  # a call would only wait for its timeout: say why at once
                    why = snapshot.pause_reason or "by an operator"
                    raise ProcessPaused(
                        f"process {snapshot.name} is paused ({why}): it handles no call until it is resumed "
                        f"(statevisor resume {snapshot.name})"
                    )
                emit(json_line(await handle.call(message, timeout=args.timeout)))
        elif command in KIND_COMMANDS:
            return await KIND_COMMANDS[command].run(args, handle)
        elif command == "watch":
            async for snapshot in handle.watch():
                emit(json_line(asdict(snapshot)) if args.json else "  ".join(_row(snapshot)))
        return OK


async def _older_status(client: Client, daemon: Target, as_json: bool) -> int:
    """Status of a daemon from before ``summary`` (the package upgraded under a running
    daemon): the live processes counted from a listing, as status did then."""
    found = await client.list()
    counts: dict[str, int] = {}
    for snapshot in found:
        counts[str(snapshot.lifecycle)] = counts.get(str(snapshot.lifecycle), 0) + 1
    status = {
        "daemon": client.server_version, "address": daemon.where, "socket": daemon.socket,
        "processes": len(found), "by_lifecycle": counts,
    }  # fmt: skip
    emit(json_line(status) if as_json else "\n".join(f"{k}: {v}" for k, v in status.items()))
    print(f"statevisor status: the daemon ({client.server_version}) predates status counts; "
          "restart it for the full summary", file=sys.stderr)  # fmt: skip
    return OK


class KindCommand(Protocol):
    """A command a process kind adds to ``statevisor`` (entry point group
    ``statevisor.commands``): it acts on one process, reached like every other command's."""

    @property
    def help(self) -> str: ...

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Its own arguments, after the process's id or name."""
        ...

    async def run(self, args: argparse.Namespace, handle: RemoteHandle) -> int:
        """Do it through ``handle``; print with :func:`emit`; the exit status (:data:`OK`...)."""
        ...


KIND_COMMANDS: dict[str, KindCommand] = {}
"""The kinds' commands by name, as added to the parser."""


def _kind_commands() -> dict[str, KindCommand]:
    """The commands process kinds add (a broken one is left out: the others still work)."""
    from importlib.metadata import entry_points

    found: dict[str, KindCommand] = {}
    for entry in entry_points(group="statevisor.commands"):
        try:
            found[entry.name] = entry.load()
        except Exception as exc:  # an installed package's bug must not take the command line down
            print(f"statevisor: the command {entry.name!r} ({entry.value}) cannot be loaded: {exc!r}", file=sys.stderr)
    return found


def argument(text: str) -> Any:
    """A message from the command line: its JSON value if it is JSON, else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def run_command(args: argparse.Namespace) -> int:
    try:
        daemon = target(args)
    except StatevisorError as exc:
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return USAGE
    if daemon.socket is not None and not Path(daemon.socket).exists():
        problem = f"no daemon socket at {daemon.socket} (is the daemon running?)"
        print(f"statevisor {args.command}: {problem}", file=sys.stderr)
        return UNREACHABLE
    try:
        return asyncio.run(_operate_within_deadline(args, daemon))
    except OutputClosed:
        quiet_stdout()
        return OUTPUT_CLOSED
    except ProcessNotFound as exc:
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return NOT_FOUND
    except ConfigurationError as exc:  # a bad argument, here or as the daemon saw it (e.g. an unknown kind)
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return USAGE
    except (ConnectionDenied, DaemonNotAnswering) as exc:
        print(f"statevisor {args.command}: {daemon.where}: {exc}", file=sys.stderr)
        return UNREACHABLE
    except (StatevisorError, TimeoutError) as exc:  # before OSError, of which TimeoutError is one
        print(f"statevisor {args.command}: {exc}", file=sys.stderr)
        return FAILED
    except (ConnectionError, OSError, ssl.SSLError) as exc:
        print(f"statevisor {args.command}: cannot reach the daemon at {daemon.where}: {exc}", file=sys.stderr)
        return UNREACHABLE
    except json.JSONDecodeError as exc:
        print(f"statevisor {args.command}: --state is not JSON: {exc}", file=sys.stderr)
        return USAGE


def add_commands(commands: Any) -> None:
    """Add the daemon-facing subcommands to the top-level parser's subparsers."""

    def command(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help)
        parser.add_argument("--socket", help=f"control socket (default ${SOCKET_VARIABLE}, else the one in --config)")
        parser.add_argument(
            "--config", default=default_config(),
            help=f"to find socket/token/cert (default ${CONFIG_VARIABLE}, else {DEFAULT_CONFIG})",
        )  # fmt: skip
        parser.add_argument("--tcp", metavar="HOST:PORT", help="reach the daemon over TCP instead (needs its token)")
        parser.add_argument("--token-file", help="file holding the TCP token (or set STATEVISOR_TOKEN)")
        parser.add_argument("--tls-ca", help="CA to verify the daemon's TLS cert (default: daemon.tls_cert)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument(
            "--deadline", type=float, default=DEADLINE, metavar="S",
            help=f"seconds to wait for the daemon's answer (default {DEADLINE:g}; watch and logs -f wait on)",
        )  # fmt: skip
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
    spawn.add_argument("--held", action="store_true", help="spawn it held: it starts on `statevisor start`")
    for name, text in (("start", "start a process spawned held"), ("pause", "pause a process"),
                       ("resume", "resume a paused process"),
                       ("nudge", "permit one transition (step mode)"), ("inspect", "a process's full snapshot"),
                       ("watch", "follow a process's snapshots until it ends")):  # fmt: skip
        command(name, text).add_argument("pid", help="process id or name")
    logs = command("logs", "a process's log: the last lines, or follow it (-f)")
    logs.add_argument("pid", help="process id or name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    logs.add_argument("-n", "--lines", type=int, default=20, help="how many last lines (default 20)")
    logs.add_argument("--stderr", action="store_true", help="the stderr log instead of stdout")
    for name, text in (("call", "send a message and print the reply (JSON in, JSON out)"),
                       ("cast", "send a message, no reply")):  # fmt: skip
        message = command(name, text)
        message.add_argument("pid", help="process id or name")
        message.add_argument("message", help='the message: JSON, or else a plain string (ticks = "ticks")')
        message.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply (default 60)")
    for name, extra in _kind_commands().items():
        parser = command(name, extra.help)
        parser.add_argument("pid", help="process id or name")
        extra.add_arguments(parser)
        KIND_COMMANDS[name] = extra
    kill = command("kill", "kill a process (never restarted by a policy)")
    kill.add_argument("pid", help="process id or name")
    kill.add_argument("--reason", default="killed from the command line")
