"""Benchmarks: each scenario measures a figure and a raw baseline in the same run.

``statevisor bench <scenario> [--json] [--markdown docs/benchmarks.md]``; the JSON is
``{"scenario": ..., "metrics": {name: number}, "environment": {...}}``. They come with the
source checkout (they use the test services in ``tests/services``), not with the package.
"""

from ._harness import SCENARIOS, BenchOptions, BenchResult, print_result, run_scenario
from .table import write_table

__all__ = ["SCENARIOS", "BenchOptions", "BenchResult", "print_result", "run_scenario", "write_table"]
