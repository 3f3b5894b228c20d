"""The job script statevisor submits: the user's command, and a line that records its exit status.

Schedulers forget finished jobs (Slurm's MinJobAge is five minutes by default, and many sites
run no accounting), so the exit status cannot come from the scheduler alone: the script writes
it to ``<name>.status`` in the work directory, atomically (write, then rename), the way batch
systems' own wrappers do.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Mapping, Sequence


def job_script(
    *,
    name: str,
    comment: str,
    work_dir: str,
    argv: Sequence[str] | None = None,
    script: str | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The text to submit on the scheduler's stdin; runs ``argv`` or the ``script`` text."""
    if (argv is None) == (script is None):
        raise ValueError("a job runs either argv or a script, exactly one")
    lines = [
        "#!/bin/sh",
        f"# statevisor job {comment}",
        f"cd {shlex.quote(work_dir)} || exit 111",
    ]
    for key, value in (env or {}).items():
        lines.append(f"{key}={shlex.quote(value)}; export {key}")
    if argv is not None:
        lines.append(shlex.join(argv))
    else:
        assert script is not None
        delimiter = "STATEVISOR_" + hashlib.sha256(script.encode()).hexdigest()[:16]
        body = f"{name}.sh"
        lines += [
            f"cat > {body} <<'{delimiter}'",
            script.rstrip("\n"),
            delimiter,
            f"chmod +x {body}",
            f"./{body}" if script.startswith("#!") else f"sh ./{body}",
        ]
    lines += [
        "rc=$?",
        f"printf '%s\\n' \"$rc\" > {name}.status.tmp && mv -f {name}.status.tmp {name}.status",
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


STATUS_READER = 'for f do printf "%s " "$f"; cat "$f" 2>/dev/null || echo -; done'
"""A fixed ``sh -c`` program (paths come as arguments, never spliced into it) that prints
``<path> <exit status or ->`` per status file: one command for every job that just ended."""


def parse_status_files(stdout: str) -> dict[str, int | None]:
    found: dict[str, int | None] = {}
    for line in stdout.splitlines():
        path, _, code = line.rpartition(" ")
        if path:
            found[path] = int(code) if code.strip().lstrip("-").isdigit() else None
    return found
