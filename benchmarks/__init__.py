"""Benchmarks: each scenario measures a figure and a raw baseline in the same run.

``statevisor bench <scenario> [--json]``; the JSON is
``{"scenario": ..., "metrics": {name: number}, "environment": {...}}``.
"""

from ._harness import SCENARIOS, BenchResult, run_scenario

__all__ = ["SCENARIOS", "BenchResult", "run_scenario"]
