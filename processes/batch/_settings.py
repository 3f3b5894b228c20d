"""A batch job's settings, validated with errors that name the key.

``host`` names a ``[host.NAME]`` of the configuration; the job runs ``argv`` (a list, quoted for
the remote shell) or ``script`` (text, with its own ``#!`` line if it wants one). Scheduler
options (``--partition``, ``-l walltime=...``) go in ``options``, verbatim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor import SettingsError

KEYS = frozenset({"host", "argv", "script", "options", "env", "stage_in", "stage_out", "success_codes"})


@dataclass(frozen=True, slots=True)
class JobSpec:
    host: str
    argv: tuple[str, ...] | None
    script: str | None
    options: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    stage_in: tuple[tuple[str, str], ...] = ()  # (local file, remote path)
    stage_out: tuple[tuple[str, str], ...] = ()  # (remote path, local file)
    success_codes: tuple[int, ...] = (0,)


def parse(settings: Mapping[str, Any]) -> JobSpec:
    """Validate; keys starting with ``_`` are the machine's own and are skipped."""
    for key in settings:
        if not key.startswith("_") and key not in KEYS and key != "result":
            raise SettingsError(key, f"unknown setting; expected one of {', '.join(sorted(KEYS))}")
    host = settings.get("host")
    if not isinstance(host, str) or not host:
        raise SettingsError("host", f"expected the name of a [host.NAME]; got {host!r}")
    argv = settings.get("argv")
    script = settings.get("script")
    if (argv is None) == (script is None):
        raise SettingsError("argv", "give exactly one of argv (a list of strings) and script (text)")
    if argv is not None and (
        not isinstance(argv, list | tuple) or not argv or not all(isinstance(a, str) for a in argv)
    ):
        raise SettingsError("argv", f"expected a non-empty list of strings; got {argv!r}")
    if script is not None and (not isinstance(script, str) or not script.strip()):
        raise SettingsError("script", "expected the job script's text")
    options = settings.get("options", [])
    if not isinstance(options, list | tuple) or not all(isinstance(o, str) for o in options):
        raise SettingsError("options", f"expected a list of strings (scheduler options); got {options!r}")
    env = settings.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and k.replace("_", "a").isalnum() and not k[:1].isdigit() and isinstance(v, str)
        for k, v in env.items()
    ):
        raise SettingsError("env", f'expected a table of NAME = "value" strings; got {env!r}')
    codes = settings.get("success_codes", [0])
    if not isinstance(codes, list | tuple) or not codes or not all(type(c) is int for c in codes):
        raise SettingsError("success_codes", f"expected a non-empty list of exit codes; got {codes!r}")
    return JobSpec(
        host=host,
        argv=tuple(argv) if argv is not None else None,
        script=script,
        options=tuple(options),
        env=dict(env) or None,
        stage_in=_pairs(settings.get("stage_in", []), "stage_in", "local", "remote"),
        stage_out=_pairs(settings.get("stage_out", []), "stage_out", "remote", "local"),
        success_codes=tuple(codes),
    )


def _pairs(value: Any, key: str, first: str, second: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list | tuple):
        raise SettingsError(key, f"expected a list of [{first}, {second}] pairs; got {value!r}")
    pairs = []
    for i, pair in enumerate(value):
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
            raise SettingsError(f"{key}[{i}]", f"expected [{first}, {second}] (two paths); got {pair!r}")
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)
