"""The ``statevisor`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any


def _benchmarks() -> ModuleType | None:
    """The benchmarks of the checkout this statevisor runs from: they measure the code against
    raw baselines with the test services, and are not part of the installed package."""
    try:
        return importlib.import_module("benchmarks")
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2]
        if not (checkout / "benchmarks" / "__init__.py").is_file():
            return None
        sys.path.insert(0, str(checkout))  # an editable install runs from its checkout
        return importlib.import_module("benchmarks")


def _bench(args: argparse.Namespace) -> int:
    benchmarks = _benchmarks()
    if benchmarks is None:
        print("statevisor bench: the benchmarks come with the source checkout, not the installed package; "
              "run it from a checkout (bash .ci/install)", file=sys.stderr)  # fmt: skip
        return 2
    scenarios: tuple[str, ...] = benchmarks.SCENARIOS
    if args.scenario == "list":
        print("\n".join(scenarios))
        return 0
    if args.scenario not in scenarios:
        print(
            f"statevisor bench: unknown scenario {args.scenario!r}; choose one of: {', '.join(scenarios)}",
            file=sys.stderr,
        )
        return 2
    options = benchmarks.BenchOptions(loop=args.loop, scale=args.scale, repeats=args.repeats)
    result = benchmarks.run_scenario(args.scenario, options)
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        benchmarks.print_result(result)
    if args.markdown:
        benchmarks.write_table(Path(args.markdown), result)
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _backup(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .._store.backup import backup

    report = backup(args.store, args.to)
    if args.json:
        print(json.dumps(asdict(report), sort_keys=True))
    else:
        print(
            f"backed up {report.live} live and {report.ended} ended processes ({report.quarantined} quarantined) "
            f"to {report.target}: {report.bytes / 1e6:.1f} MB in {report.seconds:.2f} s"
        )
    return 0


def _store(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .._errors import ProcessNotFound, StoreError
    from .._store.inspect import inspect, list_quarantined

    try:
        if args.store_command == "backup":
            return _backup(args)
        if args.store_command == "quarantined":
            entries = list_quarantined(args.store)
            if args.json:
                print(json.dumps([asdict(e) for e in entries], default=_json_default, sort_keys=True))
            else:
                for entry in entries:
                    print(f"{entry.pid}\t{entry.reason}")
                if not entries:
                    print("no quarantined processes")
            return 0
        found = inspect(args.store, args.process, None if args.raw else _secret_keys(args.config))
    except ProcessNotFound as exc:
        print(f"statevisor store: {exc}", file=sys.stderr)
        return 4
    except StoreError as exc:
        print(f"statevisor store: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(asdict(found), default=_json_default, sort_keys=True))
    else:
        print(f"pid:        {found.pid}")
        print(f"name:       {found.name}")
        print(f"kind:       {found.kind}")
        print(f"lifecycle:  {found.lifecycle}")
        print(f"version:    {found.version}")
        if found.reason:
            print(f"problem:    {found.reason}")
        print(f"size:       {found.raw_size} bytes")
        if found.record is not None:
            print(json.dumps(found.record, default=_json_default, indent=2, sort_keys=True))
    return 0


def _catalog(config: str) -> Any:
    """The kinds and executors of the configuration at ``config`` if there is one (its [kinds]
    included), else those the installed packages provide."""
    from ..daemon.config import load
    from ..daemon.plugins import load_catalog

    if Path(config).is_file():
        return load(config).catalog
    catalog, _ = load_catalog({}, {}, lambda table, name: "")
    return catalog


def _secret_keys(config: str) -> dict[str, frozenset[str]]:
    """Each installed kind's secret keys, for masking what ``store inspect`` shows."""
    return {kind: machine.secret_keys for kind, machine in _catalog(config).machines.items()}


def _kinds(args: argparse.Namespace) -> int:
    """``statevisor kinds``: every kind and executor a daemon of this configuration runs, and
    where each came from."""
    from ..daemon.config import ConfigFileError

    try:
        catalog = _catalog(args.config)
    except ConfigFileError as exc:
        for error in exc.errors:
            print(f"statevisor kinds: invalid configuration: {error}", file=sys.stderr)
        return 2
    kinds = [
        {"kind": name, "target": loaded.target, "origin": loaded.origin,
         "actions": list(loaded.value.action_types) or list(loaded.value.machine.action_types)}
        for name, loaded in catalog.kinds.items()
    ]  # fmt: skip
    executors = [
        {"action_type": name, "target": loaded.target, "origin": loaded.origin}
        for name, loaded in catalog.executors.items()
    ]
    if args.json:
        print(json.dumps({"kinds": kinds, "executors": executors}, sort_keys=True))
        return 0
    print("KIND        FROM")
    for kind in kinds:
        actions = f"  actions: {', '.join(kind['actions'])}" if kind["actions"] else ""
        print(f"{kind['kind']:<11} {kind['target']} ({kind['origin']}){actions}")
    if executors:
        print("\nACTION TYPE  FROM")
        for executor in executors:
            print(f"{executor['action_type']:<12} {executor['target']} ({executor['origin']})")
    return 0


def _daemon(args: argparse.Namespace) -> int:
    from .._errors import StatevisorError
    from ..daemon.config import ConfigFileError, load
    from ..daemon.service import run

    try:
        config = load(args.config)
    except ConfigFileError as exc:
        for error in exc.errors:  # every mistake in the file, one line each
            print(f"statevisor daemon: invalid configuration: {error}", file=sys.stderr)
        return 2
    if args.loop:
        from dataclasses import replace

        config = replace(config, daemon=replace(config.daemon, loop=args.loop))
    from ..daemon.service import check_tokens

    try:
        check_tokens(config.daemon)
    except (ConfigFileError, OSError) as exc:
        print(f"statevisor daemon: invalid configuration: {exc}", file=sys.stderr)
        return 2
    try:
        return run(config)
    except (StatevisorError, OSError) as exc:  # it could not start: the store is locked, a port taken
        print(f"statevisor daemon: {exc or type(exc).__name__}", file=sys.stderr)  # never an empty message
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statevisor", description="An actor-style process supervisor on asyncio.")
    commands = parser.add_subparsers(dest="command", required=True)
    daemon = commands.add_parser("daemon", help="run the daemon from a configuration file")
    from .commands import CONFIG_VARIABLE, DEFAULT_CONFIG, default_config

    daemon.add_argument(
        "--config", default=default_config(), help=f"TOML file (default ${CONFIG_VARIABLE}, else {DEFAULT_CONFIG})"
    )
    daemon.add_argument("--loop", choices=("uvloop", "asyncio"), help="override the configured event loop")
    daemon.set_defaults(func=_daemon)

    bench = commands.add_parser("bench", help="run a benchmark scenario with its same-run baseline (from a checkout)")
    benchmarks = _benchmarks()
    scenarios = (
        ", ".join(benchmarks.SCENARIOS) if benchmarks is not None else "none: the benchmarks come with a checkout"
    )
    bench.add_argument("scenario", help=f"one of: {scenarios} (`statevisor bench list` lists them)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--markdown", metavar="FILE", help="also put the figures in FILE's table (docs/benchmarks.md)")
    bench.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)")
    bench.add_argument("--scale", type=float, default=1.0, help="shrink or grow the workloads (default 1)")
    bench.add_argument("--repeats", type=int, default=5, help="repeats; medians are reported (default 5)")
    bench.set_defaults(func=_bench)

    kinds = commands.add_parser("kinds", help="the kinds and executors a daemon runs, and where each comes from")
    kinds.add_argument(
        "--config", default=default_config(), help="its [kinds] and [executors] too (default: as daemon)"
    )
    kinds.add_argument("--json", action="store_true", help="print one JSON object")
    kinds.set_defaults(func=_kinds)

    from .commands import add_commands

    add_commands(commands)

    store = commands.add_parser("store", help="look into or back up a checkpoint store (safe while a daemon runs)")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    quarantined = store_commands.add_parser("quarantined", help="list quarantined processes and why")
    quarantined.add_argument("--store", required=True, help="path of the SQLite store")
    quarantined.add_argument("--json", action="store_true")
    inspect = store_commands.add_parser("inspect", help="one process's checkpoint: state, pending actions, timers")
    inspect.add_argument("process", help="process id or name")
    inspect.add_argument("--store", required=True, help="path of the SQLite store")
    inspect.add_argument("--json", action="store_true")
    inspect.add_argument("--raw", action="store_true", help="show secret values as stored (masked by default)")
    inspect.add_argument(
        "--config", default=default_config(), help="its [kinds] tell which values are secret (default: as daemon)"
    )
    copy = store_commands.add_parser("backup", help="a consistent copy of the store, made while a daemon runs")
    copy.add_argument("--store", required=True, help="path of the SQLite store")
    copy.add_argument("--to", required=True, help="the backup's path (replaced if it exists)")
    copy.add_argument("--json", action="store_true")
    store.set_defaults(func=_store)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..daemon.log import capture_warnings, configure
    from .commands import OUTPUT_CLOSED, OutputClosed, quiet_stdout

    capture_warnings()  # first: the process kinds' libraries may warn as they are imported
    args = build_parser().parse_args(argv)
    if args.command != "daemon":
        configure("warning")
    try:
        return int(args.func(args))
    except (OutputClosed, BrokenPipeError):  # stdout's reader went away (`| head`): not our error
        quiet_stdout()
        return OUTPUT_CLOSED


if __name__ == "__main__":
    sys.exit(main())
