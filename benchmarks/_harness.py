"""Running scenarios and reporting them: medians of repeats, environment, JSON."""

from __future__ import annotations

import asyncio
import importlib
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


_REGISTRY: dict[str, tuple[str, str]] = {
    "transitions": ("_core", "transitions"),
    "spawn": ("_core", "spawn"),
    "control": ("_core", "control"),
    "checkpoint": ("_durability", "checkpoint"),
    "recovery": ("_durability", "recovery"),
    "sim": ("_simulation", "sim"),
    "rpc": ("_control", "rpc"),
    "watch-fanout": ("_control", "watch_fanout"),
    "shell": ("_shell", "shell"),
    "slurm": ("_slurm", "slurm"),
    "logapply": ("_logapply", "logapply"),
    "web": ("_web", "web"),
    "cluster": ("_cluster", "cluster"),
    "cloud": ("_cloud", "cloud"),
    "protocol": ("_protocol", "protocol"),
}
"""Each scenario's module and function, imported only when that scenario runs: importing every
scenario's libraries (aiohttp, lightkube's models, ...) into each run grows the heap that Python's
full garbage collections walk, and slows what makes many objects (``spawn``: 24,500 processes a
second alone, 21,200 with the web console's stack and the cloud and protocol kinds imported)."""


def _scenario(name: str) -> Scenario:
    module, function = _REGISTRY[name]
    scenario: Scenario = getattr(importlib.import_module(f"{__package__}.{module}"), function)
    return scenario


SCENARIOS: tuple[str, ...] = tuple(_REGISTRY)


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
    if name not in _REGISTRY:
        raise KeyError(f"unknown scenario {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    scenario = _scenario(name)
    loop = new_loop(options.loop)
    try:
        result = loop.run_until_complete(scenario(options))
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
