"""Running scenarios and reporting them: medians of repeats, environment, JSON."""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Scenario = Callable[["BenchOptions"], Awaitable["BenchResult"]]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """``scale`` shrinks every workload (tests run scenarios at a small scale for speed)."""

    loop: str = "uvloop"
    scale: float = 1.0
    repeats: int = 5

    def n(self, full: int, minimum: int = 10) -> int:
        return max(minimum, int(full * self.scale))


@dataclass(slots=True)
class BenchResult:
    scenario: str
    metrics: dict[str, float]
    lines: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "metrics": self.metrics, "environment": self.environment}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def environment(options: BenchOptions) -> dict[str, Any]:
    import msgpack  # type: ignore[import-untyped]

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": options.loop,
        "scale": options.scale,
        "repeats": options.repeats,
        "msgpack": msgpack.version,
    }
    if options.loop == "uvloop":
        from importlib.metadata import version

        env["uvloop"] = version("uvloop")
    return env


def _registry() -> dict[str, Scenario]:
    from . import (
        _cloud,
        _cluster,
        _control,
        _core,
        _durability,
        _logapply,
        _protocol,
        _shell,
        _simulation,
        _slurm,
        _web,
    )

    return {
        "transitions": _core.transitions,
        "spawn": _core.spawn,
        "control": _core.control,
        "checkpoint": _durability.checkpoint,
        "recovery": _durability.recovery,
        "sim": _simulation.sim,
        "rpc": _control.rpc,
        "watch-fanout": _control.watch_fanout,
        "shell": _shell.shell,
        "slurm": _slurm.slurm,
        "logapply": _logapply.logapply,
        "web": _web.web,
        "cluster": _cluster.cluster,
        "cloud": _cloud.cloud,
        "protocol": _protocol.protocol,
    }


SCENARIOS: tuple[str, ...] = (
    "transitions", "spawn", "control", "checkpoint", "recovery", "sim", "rpc", "watch-fanout", "shell", "slurm",
    "logapply", "web", "cluster", "cloud", "protocol",
)  # fmt: skip


def new_loop(loop: str) -> asyncio.AbstractEventLoop:
    if loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if loop == "asyncio":
        return asyncio.new_event_loop()
    raise ValueError(f"unknown event loop {loop!r}; choose uvloop or asyncio")


def run_scenario(name: str, options: BenchOptions | None = None) -> BenchResult:
    """Run one scenario on a fresh event loop of the requested kind."""
    options = options or BenchOptions()
    scenarios = _registry()
    if name not in scenarios:
        raise KeyError(f"unknown scenario {name!r}; choose one of {', '.join(sorted(scenarios))}")
    loop = new_loop(options.loop)
    try:
        result = loop.run_until_complete(scenarios[name](options))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    result.environment = environment(options)
    return result


def print_result(result: BenchResult, stream: Any = sys.stdout) -> None:
    print(f"scenario: {result.scenario}", file=stream)
    for line in result.lines:
        print(f"  {line}", file=stream)
    for key, value in result.metrics.items():
        print(f"  {key} = {value:.6g}", file=stream)
