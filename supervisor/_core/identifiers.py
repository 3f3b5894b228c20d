"""What a process id or name may be.

Ids and names do not stay in memory: a shell process's log files are named after it, a batch
job's script carries its id in a comment line, and both appear in log lines and metrics labels.
So neither may hold control characters (a newline would split a script or a log line), and no
``/``-separated part may be empty, ``.`` or ``..``: ``/`` separates directories (a supervised
child ``root/web`` logs under ``root/``), and those parts would lead out of the directory the
files belong in. The length bound keeps ``<name>.out.log`` within a file-name limit of 255 bytes.
"""

from __future__ import annotations

import re

from .._errors import ConfigurationError

MAX_BYTES = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_identifier(value: object, what: str) -> str:
    """``value`` if it can be a process ``what`` ("id" or "name"); else a ConfigurationError."""
    if not isinstance(value, str):
        raise ConfigurationError(f"a process {what} must be a string; got {type(value).__name__} {value!r}")
    problem = _problem(value)
    if problem:
        raise ConfigurationError(f"process {what} {value!r} {problem}")
    return value


def _problem(value: str) -> str | None:
    if not value:
        return "is empty"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return f"is longer than {MAX_BYTES} bytes"
    control = _CONTROL.search(value)
    if control:
        return f"holds the control character {control.group()!r} at {control.start()}"
    for part in value.split("/"):
        if part in ("", ".", ".."):
            return f"has the path part {part!r}; parts between '/' must be non-empty and not '.' or '..'"
    return None


def name_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a declared process's name (a configuration's, or a
    supervised child's), or None. The rule is :func:`check_identifier`'s, and such a name is one
    part of a supervisor path (the process is named ``root/<name>``), so it holds no ``/``."""
    problem = _problem(value)
    if problem is None and "/" in value:
        problem = "holds '/', which separates the parts of a supervisor path"
    return problem
