"""The ``statevisor`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _bench(args: argparse.Namespace) -> int:
    from .bench import SCENARIOS, run_scenario
    from .bench._harness import BenchOptions, print_result

    if args.scenario not in SCENARIOS:
        print(
            f"statevisor bench: unknown scenario {args.scenario!r}; choose one of: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    options = BenchOptions(loop=args.loop, scale=args.scale, repeats=args.repeats)
    result = run_scenario(args.scenario, options)
    if args.json:
        print(json.dumps(result.to_json(), sort_keys=True))
    else:
        print_result(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="statevisor", description="An actor-style process supervisor on asyncio.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark scenario with its same-run baseline")
    bench.add_argument("scenario", help="transitions, spawn, control, checkpoint, recovery")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop (default uvloop)")
    bench.add_argument("--scale", type=float, default=1.0, help="shrink or grow the workloads (default 1)")
    bench.add_argument("--repeats", type=int, default=5, help="repeats; medians are reported (default 5)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
