"""Validation machinery of the configuration: checking tables against a spec, and finding the
line a key is on (tomllib reports none), so every error says file, line, key and what was
expected."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import ConfigError


class Lines:
    """Finds the line of a key (tomllib reports none): the first ``key =`` after its table header."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def find(self, table: str, key: str | None, occurrence: int = 0) -> int | None:
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        seen, start = -1, None
        for number, line in enumerate(self.lines, start=1):
            if header.match(line):
                seen += 1
                if seen == occurrence:
                    start = number
                    break
        if start is None:
            return None
        if key is None:
            return start
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(start, len(self.lines) + 1):
            line = self.lines[number - 1]
            if number > start and re.match(r"^\s*\[", line):
                break
            if pattern.match(line):
                return number
        return start

    def find_in_entry(self, table: str, occurrence: int, key: str) -> int | None:
        """The line of a dotted ``key`` (``limits.stack``, ``argv[0]``) in the ``occurrence``-th
        ``[[table]]`` entry, sub-tables included: its last part, else its first, else the entry."""
        start = self.find(table, None, occurrence)
        if start is None:
            return None
        entry = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        end = next(
            (n for n in range(start + 1, len(self.lines) + 1) if entry.match(self.lines[n - 1])), len(self.lines) + 1
        )
        parts = [p.split("[")[0] for p in key.split(".")]
        for part in dict.fromkeys((parts[-1], parts[0])):
            pattern = re.compile(rf"^\s*({re.escape(part)}\s*=|\[[^\]]*\b{re.escape(part)}\s*\])")
            for number in range(start + 1, end):
                if pattern.match(self.lines[number - 1]):
                    return number
        return start


class Checker:
    """Checks a configuration and collects every mistake it finds, so that a file with several
    is reported whole (:meth:`finish` raises them together), not one per attempt to start."""

    def __init__(self, path: Path, text: str) -> None:
        self.file = str(path)
        self.lines = Lines(text)
        self.errors: list[ConfigError] = []

    def fail(self, key: str, message: str, table: str, name: str | None, occurrence: int = 0) -> ConfigError:
        return ConfigError(self.file, key, self.lines.find(table, name, occurrence), message)

    def report(self, error: ConfigError) -> None:
        self.errors.append(error)

    def section(
        self,
        data: Mapping[str, Any],
        table: str,
        prefix: str,
        spec: Mapping[str, tuple[Any, Any]],
        occurrence: int = 0,
    ) -> dict[str, Any]:
        """Check one table against ``spec``: key -> (expected type(s), default or REQUIRED).

        Each mistake is reported; a key that is wrong or missing gets its default (None for a
        required one), so that the checks after this one can go on.
        """
        for key in data:
            if key not in spec:
                self.report(
                    self.fail(
                        f"{prefix}{key}", f"unknown key; expected one of {', '.join(sorted(spec))}", table, key,
                        occurrence,
                    )
                )  # fmt: skip
        out: dict[str, Any] = {}
        for key, (kind, default) in spec.items():
            fallback = None if default is REQUIRED else default
            if key not in data:
                if default is REQUIRED:
                    self.report(self.fail(f"{prefix}{key}", "missing (required)", table, None, occurrence))
                out[key] = fallback
                continue
            value = data[key]
            kinds = kind if isinstance(kind, tuple) else (kind,)
            # bool is an int in Python, never in a configuration.
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
                got = _TYPE_NAMES.get(type(value), type(value).__name__)
                self.report(
                    self.fail(f"{prefix}{key}", f"expected {names}; got {got} {value!r}", table, key, occurrence)
                )
                out[key] = fallback
                continue
            out[key] = value
        return out

    def check(self, ok: bool, key: str, message: str, table: str, name: str | None, occurrence: int = 0) -> bool:
        """Report ``message`` unless ``ok``; returns ``ok``."""
        if not ok:
            self.report(self.fail(key, message, table, name, occurrence))
        return ok

    def finish(self) -> None:
        """Raise every mistake reported, as one :class:`ConfigError`."""
        if self.errors:
            raise ConfigError.several(self.errors)


REQUIRED = object()
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    list: "an array",
    dict: "a table",
}
