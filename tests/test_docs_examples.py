"""Every Python example of the README and the manual runs as written.

The examples are the ```python blocks of README.md and docs/**/*.md, and the files in
docs/examples/, which pages include with pymdownx.snippets in ```{.python} blocks (ruff's
formatter leaves those alone; a block that only includes a file is left to the file's own
case). Each runs in a fresh interpreter, in an empty temporary directory, with the repository
on PYTHONPATH; one that talks to a daemon (it names STATEVISOR_SOCKET) gets a real
``statevisor daemon`` of its own, with a ticker named t1, and its socket in that variable.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_daemon import free_port, kill_if_running, start_daemon

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TIMEOUT = 120.0
"""Seconds one example may run."""
SOCKET_VARIABLE = "STATEVISOR_SOCKET"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>\{[^}]*\}|[^\s`]*)")
_PYTHON = {"python", "py", "python3"}
_SNIPPET = re.compile(r"^\s*-+8<-+\s")


@dataclass(frozen=True)
class Example:
    """One example: where it is written and its source."""

    path: Path  # the Markdown page or the example file
    line: int  # the first line of its code in ``path``
    source: str

    @property
    def where(self) -> str:
        relative = self.path.relative_to(ROOT)
        return f"{relative}:{self.line}" if self.path.suffix == ".md" else str(relative)

    @property
    def needs_daemon(self) -> bool:
        return SOCKET_VARIABLE in self.source


def python_blocks(page: Path) -> Iterator[Example]:
    """The ```python blocks of a Markdown page (indented ones too), each with its first line;
    blocks that only include a file with the snippets syntax are that file's."""
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        indent, fence = opening["indent"], opening["fence"]
        start = index
        while index < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence)}[ \t]*$", lines[index]):
            index += 1
        body = [line.removeprefix(indent) for line in lines[start:index]]
        index += 1  # past the closing fence
        if _language(opening["info"]) not in _PYTHON:
            continue
        code = [line for line in body if line.strip()]
        if code and all(_SNIPPET.match(line) for line in code):
            continue
        yield Example(page, start + 1, "\n".join(body) + "\n")


def _language(info: str) -> str:
    """A fence's language: ``python``, or the first class of an attribute list (``{.python}``)."""
    if info.startswith("{"):
        first = re.search(r"\.([\w-]+)", info)
        return first.group(1).lower() if first else ""
    return info.lower()


def examples() -> list[Example]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = [example for page in pages for example in python_blocks(page)]
    for path in sorted((ROOT / "docs" / "examples").glob("*.py")):
        found.append(Example(path, 1, path.read_text(encoding="utf-8")))
    return found


EXAMPLES = examples()


def _daemon_config(directory: Path, port: int) -> Path:
    config = directory / "statevisor.toml"
    config.write_text(
        f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{port}"\n\n'
        '[[process]]\nname = "t1"\nkind = "ticker"\n[process.settings]\ninterval = 0.1\n'
    )
    return config


def _script(example: Example, directory: Path) -> Path:
    """The file to run: an example file as it is; a Markdown block written out after as many
    blank lines as precede it on its page, so a traceback's line numbers are the page's."""
    if example.path.suffix == ".py":
        return example.path
    script = directory / f"{example.path.stem}_line_{example.line}.py"
    script.write_text("\n" * (example.line - 1) + example.source, encoding="utf-8")
    return script


def test_the_readme_and_the_manual_have_examples() -> None:
    """The collection finds the README's example and the manual's (an empty parametrization
    would pass without running anything)."""
    places = {example.path.relative_to(ROOT).parts[0] for example in EXAMPLES}
    assert {"README.md", "docs"} <= places, places
    assert any(example.needs_daemon for example in EXAMPLES), "no example talks to a daemon"


def test_every_example_file_is_shown_in_the_manual() -> None:
    """Each file in docs/examples/ is included by a page (a file no page shows is dead weight
    that would still be run and kept up)."""
    pages = "\n".join(page.read_text(encoding="utf-8") for page in (ROOT / "docs").rglob("*.md"))
    for path in (ROOT / "docs" / "examples").glob("*.py"):
        assert f'"{path.relative_to(ROOT)}"' in pages, f"no page includes {path.relative_to(ROOT)}"


@pytest.mark.timeout(EXAMPLE_TIMEOUT + 90)
@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_example_runs_as_written(example: Example, tmp_path: Path) -> None:
    """The example runs to exit status 0 in a fresh interpreter, from an empty directory, with
    no network and no deprecated name (DeprecationWarning is an error); one that names
    STATEVISOR_SOCKET runs against a real daemon found through that variable."""
    env = {k: v for k, v in os.environ.items() if k not in (SOCKET_VARIABLE, "STATEVISOR_CONFIG")}
    env["PYTHONPATH"] = str(ROOT)
    work = tmp_path / "work"
    work.mkdir()
    daemon = None
    if example.needs_daemon:
        port = free_port()
        daemon = start_daemon(_daemon_config(tmp_path, port), port)
        env[SOCKET_VARIABLE] = str(tmp_path / "var" / "s.sock")
    command = [sys.executable, "-W", "error::DeprecationWarning", str(_script(example, tmp_path))]
    try:
        ran = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        output = _output(expired.stdout, expired.stderr)
        pytest.fail(f"{example.where}: still running after {EXAMPLE_TIMEOUT:g} s\n{output}")
    finally:
        log = _stop(daemon) if daemon is not None else ""
    assert 0 == ran.returncode, f"{example.where}: exit status {ran.returncode}\n{_output(ran.stdout, ran.stderr)}" + (
        f"\n--- the daemon's log\n{log}" if log else ""
    )


def _stop(daemon: subprocess.Popen[str]) -> str:
    """Stop the example's daemon as an operator would (SIGTERM), killing it if it lingers; its log."""
    daemon.send_signal(signal.SIGTERM)
    try:
        _, log = daemon.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        kill_if_running(daemon)
        return "(did not stop within 30 s of SIGTERM: killed)"
    return log


def _output(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(value: str | bytes | None) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else value or ""

    return f"--- stdout\n{text(stdout)}\n--- stderr\n{text(stderr)}"
