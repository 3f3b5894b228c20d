"""A run directory: the on-disk record of one command run, keyed by its action id.

It is the idempotency record: the directory is created (atomically, ``mkdir``) before the
command starts, so an action executed again after a crash finds it and attaches to the run
instead of starting the command a second time. Files, each written by one party::

    started   pid, start ticks, wall-clock start     daemon, right after the spawn (a partial file reads as absent)
    begun     empty                                   wrapper, just before it runs the command
    status    exit code, or "setup <what>"           wrapper, after the command ends
    times     CPU times (sh ``times`` output)          wrapper, after the command ends
    stdin     the command's standard input, if given  daemon, before the spawn
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_FILES = ("started", "begun", "status", "times", "stdin")


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    ticks: int
    wall: float


class RunDir:
    """The files of one run; every method is a few small synchronous file operations."""

    __slots__ = ("path",)

    def __init__(self, root: Path, action_id: str) -> None:
        digest = hashlib.blake2b(action_id.encode(), digest_size=6).hexdigest()
        self.path = root / f"{_UNSAFE.sub('_', action_id)[:80]}-{digest}"

    def create(self) -> bool:
        """Create the directory; False when it exists already (this run may have started)."""
        try:
            os.mkdir(self.path, 0o700)
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self.create()
        except FileExistsError:
            return False
        return True

    def note_started(self, pid: int, ticks: int, wall: float) -> None:
        # No rename dance: a file cut short by a crash lacks its newline and reads as absent,
        # and then the wrapper is found by its command line instead.
        fd = os.open(self.path / "started", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{pid} {ticks} {wall!r}\n".encode())
        finally:
            os.close(fd)

    def started(self) -> Started | None:
        try:
            text = (self.path / "started").read_text()
            pid, ticks, wall = text.split()
        except (FileNotFoundError, ValueError):
            return None
        if not text.endswith("\n"):
            return None
        return Started(int(pid), int(ticks), float(wall))

    def begun(self) -> bool:
        return (self.path / "begun").exists()

    def status(self) -> tuple[str, int | str, float] | None:
        """("exit", code, when) or ("setup", what failed, when); None while not (fully) written."""
        path = self.path / "status"
        try:
            text = path.read_text()
            when = path.stat().st_mtime
        except FileNotFoundError:
            return None
        if not text.endswith("\n"):
            return None  # the wrapper is still writing it (or died while doing so)
        word = text.split()
        if len(word) == 2 and word[0] == "setup":
            return ("setup", word[1], when)
        if len(word) == 1 and word[0].isdigit():
            return ("exit", int(word[0]), when)
        return None

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) seconds of the command and its waited-for descendants."""
        try:
            lines = (self.path / "times").read_text().splitlines()
            user, system = lines[1].split()
        except (FileNotFoundError, IndexError, ValueError):
            return (0.0, 0.0)
        return (_seconds(user), _seconds(system))

    def write_stdin(self, data: str) -> Path:
        path = self.path / "stdin"
        path.write_text(data)
        return path

    def remove(self) -> None:
        for name in _FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / name)
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            shutil.rmtree(self.path, ignore_errors=True)  # something else was put there

    def __repr__(self) -> str:
        return f"<RunDir {self.path}>"


def _seconds(text: str) -> float:
    """sh ``times`` prints e.g. ``0m1.250000s``."""
    minutes, _, rest = text.partition("m")
    return int(minutes) * 60 + float(rest.rstrip("s"))
