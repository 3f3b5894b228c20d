"""The benchmark table of the manual (``docs/benchmarks.md``), written by ``statevisor bench
SCENARIO --markdown FILE``: the rows of one scenario are replaced by its latest figures, the
other scenarios' rows are kept, and nothing outside the table's markers is touched."""

from __future__ import annotations

from pathlib import Path

from ._harness import SCENARIOS, BenchResult

BEGIN = "<!-- benchmark table: written by `statevisor bench SCENARIO --markdown docs/benchmarks.md` -->"
END = "<!-- end of the benchmark table -->"
HEADER = ("| scenario | metric | value | measured on |", "|---|---|---|---|")


def write_table(path: Path, result: BenchResult) -> None:
    """Put ``result``'s figures in the table of the Markdown file at ``path`` (made if missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    table, _, tail = rest.partition(END)
    rows = [line for line in table.strip().splitlines() if line.startswith("| ") and line not in HEADER]
    kept = [row for row in rows if _scenario(row) != result.scenario]
    environment = result.environment
    where = (
        f"{environment.get('cpus', '?')} CPUs, Python {environment.get('python', '?')}, {environment.get('loop', '?')}"
    )
    fresh = [f"| {result.scenario} | {name} | {_number(value)} | {where} |" for name, value in result.metrics.items()]
    order = {name: index for index, name in enumerate(SCENARIOS)}
    merged = sorted([*kept, *fresh], key=lambda row: order.get(_scenario(row), len(order)))  # stable: metric order kept
    path.write_text(f"{head}{BEGIN}\n" + "\n".join((*HEADER, *merged)) + f"\n{END}{tail}", encoding="utf-8")


def _scenario(row: str) -> str:
    return row.split("|")[1].strip()


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) >= 1 else f"{value:.3g}"
