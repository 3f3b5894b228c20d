"""What the executor asks the run monitor to start: the ``run`` request for one command, its
environment built and its program found. A program that is missing or not executable is
refused here, with a clear error, before the monitor is asked for anything.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from ._launch import inherited_environment
from ._settings import CommandSpec
from .errors import CommandNotFound, SecretUnreadable

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
"""PATH for a command that does not inherit the daemon's environment."""


def run_request(action_id: str, spec: CommandSpec, home: str) -> dict[str, Any]:
    """The monitor's ``run`` request for ``spec``; ``home`` is where a relative cwd starts."""
    env = environment(spec)
    cwd = os.path.join(home, spec.cwd) if spec.cwd else home
    return {
        "op": "run",
        "id": action_id,
        "program": program(spec, env, cwd),
        "argv": list(spec.argv),
        "env": env,
        "cwd": cwd,
        "umask": spec.umask,
        "limits": dict(spec.limits) if spec.limits else None,
        "stdin": spec.stdin,
        "stdout": spec.stdout,
        "stderr": spec.stderr,
    }


def environment(spec: CommandSpec) -> dict[str, str]:
    """The daemon's environment (or a bare PATH), less ``env_unset``, plus ``env``, plus the
    values of ``env_files``, read now: they are in no state, checkpoint or payload."""
    env = inherited_environment() if spec.inherit_env else {"PATH": DEFAULT_PATH}
    for name in spec.env_unset:
        env.pop(name, None)
    env.update(spec.env)
    for name, path in (spec.env_files or {}).items():
        env[name] = read_secret(name, path)
    return env


def read_secret(name: str, path: str) -> str:
    """The value of the variable ``name`` from the file at ``path``: owner-only, as a secret's
    file must be (its final newline is not part of the value). The value is never in the error."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretUnreadable(f"env_files.{name}: cannot read {path}: {exc.strerror}") from None
    with open(descriptor, encoding="utf-8", errors="strict") as file:
        mode = os.fstat(descriptor).st_mode & 0o777
        if mode & 0o077:
            raise SecretUnreadable(f"env_files.{name}: {path} must be readable by its owner only (mode {mode:o})")
        try:
            value = file.read()
        except UnicodeDecodeError:
            raise SecretUnreadable(f"env_files.{name}: {path} is not UTF-8 text") from None
    value = value.removesuffix("\n")
    if "\0" in value:
        raise SecretUnreadable(f"env_files.{name}: {path} holds a NUL byte, which no environment value can")
    return value


def program(spec: CommandSpec, env: dict[str, str], cwd: str) -> str:
    """The absolute path of the program to run from ``cwd``; a missing or non-executable one
    is refused before anything starts, with a clear error."""
    name = spec.argv[0]
    if "/" in name:
        found = os.path.join(cwd, name)  # an absolute program stays as it is
        if not os.path.isfile(found):
            raise CommandNotFound(f"{name!r}: no such file")
        if not os.access(found, os.X_OK):
            raise CommandNotFound(f"{name!r}: not executable (mode {os.stat(found).st_mode & 0o777:o})")
    else:
        search = env.get("PATH", DEFAULT_PATH)
        which = shutil.which(name, path=search)
        if which is None:
            raise CommandNotFound(f"{name!r}: not found on PATH ({search})")
        found = os.path.join(cwd, which)  # a relative PATH entry is relative to the command's cwd
    if spec.cwd is not None and not os.path.isdir(cwd):
        raise CommandNotFound(f"cwd {spec.cwd!r}: no such directory")
    return found
