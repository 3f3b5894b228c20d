"""A shell process's settings: what to run and how, validated with errors that name the key.

The settings are the process's initial state (or a configuration's ``[process.settings]``);
:func:`parse` turns them into a :class:`CommandSpec` or raises :class:`SettingsError`.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from supervisor import SettingsError

from ._spawn import LIMITS  # the limits the run monitor knows how to set (setrlimit, in the child)

KEYS = frozenset(
    {
        "argv",
        "command",
        "shell",
        "env",
        "env_files",
        "env_unset",
        "inherit_env",
        "cwd",
        "stdin",
        "umask",
        "limits",
        "timeout",
        "stop_signal",
        "stop_grace",
        "success_codes",
        "stdout",
        "stderr",
        "log_max_bytes",
        "log_backups",
        "tail_lines",
    }
)


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command, as the executor runs it (every field is a msgpack value)."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    env_files: Mapping[str, str] | None = None  # NAME -> a file whose content is the value (a secret)
    env_unset: tuple[str, ...] = ()
    inherit_env: bool = True
    cwd: str | None = None
    stdin: str | None = None
    umask: int | None = None
    limits: Mapping[str, int] | None = None
    timeout: float | None = None
    stop_signal: int = signal.SIGTERM
    stop_grace: float = 3.0
    success_codes: tuple[int, ...] = (0,)
    stdout: str | None = None
    stderr: str | None = None  # None: a file of its own; "stdout": merged into stdout
    log_max_bytes: int = 10 * 2**20
    log_backups: int = 3
    tail_lines: int = 20

    @property
    def stderr_path(self) -> str | None:
        """The stderr log file, when stderr has one of its own."""
        return self.stderr if self.stderr != "stdout" else None

    def log_paths(self) -> list[str]:
        """The distinct log files the command writes."""
        return [p for p in dict.fromkeys((self.stdout, self.stderr_path)) if p]

    def payload(self) -> dict[str, Any]:
        """The action payload: every field, as plain msgpack values."""
        return {name: _plain(getattr(self, name)) for name in _FIELDS}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CommandSpec:
        """Back from :meth:`payload`; keys a payload lacks take their defaults."""
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in payload.items() if k in _FIELD_SET
        }
        return cls(**values)


# dataclasses.fields() rebuilds its tuple on every call: twice per command run.
_FIELDS = tuple(f.name for f in fields(CommandSpec))
_FIELD_SET = frozenset(_FIELDS)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def parse(settings: Mapping[str, Any]) -> CommandSpec:
    """Validate ``settings``; every error names the setting and what was expected."""
    unknown = sorted(k for k in settings if k not in KEYS and not k.startswith("_"))
    if unknown:
        raise SettingsError(unknown[0], f"unknown setting (known: {', '.join(sorted(KEYS))})")
    shell = _typed(settings, "shell", bool, False)
    if shell:
        command = _typed(settings, "command", str, None)
        if not command or "argv" in settings:
            raise SettingsError("command", "with shell = true, give the shell command line as a string (no argv)")
        argv: tuple[str, ...] = ("/bin/sh", "-c", command)
    else:
        if "command" in settings:
            raise SettingsError("command", "a command line needs shell = true; otherwise give argv, a list")
        raw = settings.get("argv")
        if not isinstance(raw, list | tuple) or not raw or not all(isinstance(a, str) and "\0" not in a for a in raw):
            raise SettingsError(
                "argv", f"expected a non-empty list of strings (the program and its arguments); got {raw!r}"
            )
        if not raw[0]:
            raise SettingsError("argv[0]", "the program must not be empty")
        argv = tuple(raw)
    env = _typed(settings, "env", dict, {})
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str):
            # The value is not echoed: environment values are often secrets.
            raise SettingsError(f"env.{key}", "expected NAME = \"string\" (a name without '=')")
    env_files = _typed(settings, "env_files", dict, {})
    for key, value in env_files.items():
        if not isinstance(key, str) or not key or "=" in key or not isinstance(value, str) or not value:
            raise SettingsError(f"env_files.{key}", 'expected NAME = "path of a file holding the value"')
        if key in env:
            raise SettingsError(f"env_files.{key}", "is set in env as well; give each variable one source")
    unset = _typed(settings, "env_unset", list, [])
    if not all(isinstance(k, str) for k in unset):
        raise SettingsError("env_unset", "expected a list of variable names")
    umask = settings.get("umask")
    if isinstance(umask, str):
        try:
            umask = int(umask, 8)
        except ValueError:
            raise SettingsError("umask", f'expected an octal string such as "022"; got {umask!r}') from None
    if umask is not None and (not isinstance(umask, int) or isinstance(umask, bool) or not 0 <= umask <= 0o777):
        raise SettingsError("umask", f"expected 0..0o777 (or an octal string); got {umask!r}")
    limits = _typed(settings, "limits", dict, {})
    for key, value in limits.items():
        if key not in LIMITS:
            raise SettingsError(f"limits.{key}", f"unknown limit (known: {', '.join(LIMITS)})")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"limits.{key}", f"expected a whole number >= 1; got {value!r}")
    timeout = settings.get("timeout")
    if timeout is not None:
        timeout = _positive(settings, "timeout")
    stop_signal = _signal(settings.get("stop_signal", "TERM"))
    codes = _typed(settings, "success_codes", list, [0])
    if not codes or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in codes):
        raise SettingsError("success_codes", f"expected a non-empty list of exit codes 0..255; got {codes!r}")
    stderr = _typed(settings, "stderr", str, None)
    return CommandSpec(
        argv=argv,
        env=env,
        env_files=env_files or None,
        env_unset=tuple(unset),
        inherit_env=_typed(settings, "inherit_env", bool, True),
        cwd=_typed(settings, "cwd", str, None),
        stdin=_typed(settings, "stdin", str, None),
        umask=umask,
        limits=limits,
        timeout=timeout,
        stop_signal=stop_signal,
        stop_grace=_positive(settings, "stop_grace", 3.0),
        success_codes=tuple(codes),
        stdout=_typed(settings, "stdout", str, None),
        stderr=stderr,
        log_max_bytes=_whole(settings, "log_max_bytes", 10 * 2**20, minimum=1024),
        log_backups=_whole(settings, "log_backups", 3, minimum=0),
        tail_lines=_whole(settings, "tail_lines", 20, minimum=0),
    )


def _typed(settings: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = settings.get(key, default)
    if value is default:
        return value
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise SettingsError(key, f"expected {kind.__name__}; got {value!r}")
    return value


def _positive(settings: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = settings.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise SettingsError(key, f"expected a number of seconds > 0; got {value!r}")
    return float(value)


def _whole(settings: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = settings.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise SettingsError(key, f"expected a whole number >= {minimum}; got {value!r}")
    return value


def _signal(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            pass
    elif isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name in signal.Signals.__members__:
            return int(signal.Signals[name])
    raise SettingsError("stop_signal", f'expected a signal name such as "TERM" or "INT"; got {value!r}')
