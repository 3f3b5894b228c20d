"""Users' own process kinds in a real daemon: an example package installed with its entry
points, the same code named in [kinds] and [executors], problems refused before anything
starts, warnings of a user module logged as JSON, and new kinds picked up by a reload."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.control import Client
from tests.test_daemon import ROOT, free_port, json_lines, kill_if_running, start_daemon, wait_for

EXAMPLE = ROOT / "examples" / "greeter"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed (built by pip from its pyproject.toml, entry points and
    all) into a directory of its own, which the daemons of these tests find on PYTHONPATH. It is
    built from a copy: setuptools leaves build/ and egg-info behind in the tree it builds."""
    source = tmp_path_factory.mktemp("source") / "greeter"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return site


class UserDaemon:
    """A real daemon on a configuration of the test's, with extra module directories on its path."""

    def __init__(self, directory: Path, body: str, paths: list[Path]) -> None:
        self.port = free_port()
        self.directory = directory
        self.config = directory / "statevisor.toml"
        self.config.write_text(
            f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{self.port}"\n'
            'log_dir = "var/log"\nrun_dir = "var/runs"\nloop = "asyncio"\n\n' + body
        )
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *map(str, paths)])}
        self.child: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.child = start_daemon(self.config, self.port, env=self.env)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args, "--config", str(self.config)],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=self.env,
        )  # fmt: skip

    def run(self) -> subprocess.CompletedProcess[str]:
        """The daemon run to its end (for a configuration it must refuse)."""
        return subprocess.run(
            [sys.executable, "-m", "supervisor", "daemon", "--config", str(self.config)],
            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env=self.env,
        )  # fmt: skip

    def stop(self, signum: int = signal.SIGTERM) -> list[dict[str, object]]:
        assert self.child is not None
        self.child.send_signal(signum)
        _, err = self.child.communicate(timeout=60)
        if signum == signal.SIGKILL and not err.endswith("\n"):
            err = err.rpartition("\n")[0]
        return json_lines(err)


@pytest.fixture
def user_daemons() -> Iterator[list[UserDaemon]]:
    made: list[UserDaemon] = []
    yield made
    for daemon in made:
        if daemon.child is not None:
            kill_if_running(daemon.child)


GREETER = '[[process]]\nname = "hello"\nkind = "greeter"\n[process.settings]\nwho = "world"\n'


def test_an_installed_package_s_kind_runs_in_a_daemon(
    tmp_path: Path, installed: Path, user_daemons: list[UserDaemon]
) -> None:
    """The example package, installed: its kind and executor come from its entry points
    (statevisor kinds says so); a process of it is spawned by the configuration and another by
    the CLI, both answer the CLI and a remote handle, and after a SIGKILL of the daemon the next
    daemon revives both with their state."""
    daemon = UserDaemon(tmp_path, GREETER, [installed])
    user_daemons.append(daemon)
    listed = json.loads(daemon.cli("kinds", "--json").stdout)
    [greeter] = [k for k in listed["kinds"] if k["kind"] == "greeter"]
    assert ("greeter:Greeter", ["greeter.compose"]) == (greeter["target"], greeter["actions"])
    assert greeter["origin"].startswith("entry point statevisor.kinds:greeter of statevisor-greeter-example 1.0.0")
    [compose] = listed["executors"]
    assert ("greeter.compose", "greeter:compose") == (compose["action_type"], compose["target"])

    daemon.start()
    wait_for(lambda: json.loads(daemon.cli("call", "hello", "greeting").stdout or "null") is not None)
    assert "Hello, world!" == json.loads(daemon.cli("call", "hello", "greeting").stdout)
    spawned = daemon.cli("spawn", "greeter", "--state", '{"who": "CLI"}', "--name", "from-cli")
    assert 0 == spawned.returncode, spawned.stderr
    wait_for(lambda: json.loads(daemon.cli("call", "from-cli", "greeting").stdout or "null") is not None)
    assert 0 == daemon.cli("cast", "from-cli", '["rename", "remote"]').returncode

    async def remotely() -> tuple[str, int]:
        async with Client.connect(str(tmp_path / "var" / "s.sock")) as client:
            handle = await client.get("from-cli")
            for _ in range(100):
                greeting = await handle.call("greeting")
                if greeting == "Hello, remote!":
                    break
                await asyncio.sleep(0.05)
            return greeting, await handle.call("count")

    greeting, count = asyncio.run(remotely())
    assert "Hello, remote!" == greeting
    daemon.stop(signal.SIGKILL)

    daemon.start()
    assert "Hello, world!" == json.loads(daemon.cli("call", "hello", "greeting").stdout)
    assert "Hello, remote!" == json.loads(daemon.cli("call", "from-cli", "greeting").stdout)
    assert count + 1 == json.loads(daemon.cli("call", "from-cli", "count").stdout)
    assert 0 == daemon.stop()[-1].get("exit_code", 0)


def test_a_kind_named_in_the_configuration_runs_without_being_installed(
    tmp_path: Path, user_daemons: list[UserDaemon]
) -> None:
    """The same code, not installed: [kinds] and [executors] name it (its module next to the
    configuration file), and statevisor kinds gives the file and line each came from."""
    shutil.copytree(EXAMPLE / "greeter", tmp_path / "greeter")
    body = '[kinds]\ngreeter = "greeter:Greeter"\n\n[executors]\n"greeter.compose" = "greeter:compose"\n\n' + GREETER
    daemon = UserDaemon(tmp_path, body, [])
    user_daemons.append(daemon)
    listed = json.loads(daemon.cli("kinds", "--json").stdout)
    [greeter] = [k for k in listed["kinds"] if k["kind"] == "greeter"]
    assert f"{daemon.config}:10" == greeter["origin"]  # lines 1-8 are the [daemon] table
    assert f"{daemon.config}:13" == listed["executors"][0]["origin"]
    daemon.start()
    wait_for(lambda: json.loads(daemon.cli("call", "hello", "greeting").stdout or "null") is not None)
    assert "Hello, world!" == json.loads(daemon.cli("call", "hello", "greeting").stdout)
    daemon.stop()


def test_a_kind_that_cannot_be_loaded_refuses_the_configuration_naming_where_and_why(
    tmp_path: Path, installed: Path
) -> None:
    """Before anything starts, with exit status 2 and a line each: a module that does not
    import, an object that is no Machine, a kind name two sources give, an action type no
    executor performs. Nothing is written."""
    (tmp_path / "mistakes.py").write_text(
        "from supervisor import Machine\n\n"
        "def not_a_machine():\n    pass\n\n"
        "class Needy(Machine[dict]):\n    kind = 'needy'\n    action_types = ('needy.fetch',)\n"
    )
    body = (
        '[kinds]\nghost = "no_such_module:Ghost"\nfunc = "mistakes:not_a_machine"\n'
        'greeter = "greeter:Greeter"\nneedy = "mistakes:Needy"\n'
    )
    daemon = UserDaemon(tmp_path, body, [installed])
    done = daemon.run()
    assert 2 == done.returncode, done.stderr
    lines = done.stderr.splitlines()
    config = daemon.config
    expected = [
        f"{config}:10: kinds.ghost: no_such_module:Ghost: ModuleNotFoundError: No module named 'no_such_module'",
        f"{config}:11: kinds.func: mistakes:not_a_machine: TypeError: is not a Machine subclass or a Kind "
        "(it is the function not_a_machine)",
        f"{config}:12: kinds.greeter: 'greeter' is provided twice: here and by entry point "
        "statevisor.kinds:greeter of statevisor-greeter-example 1.0.0",
        f"{config}:13: kinds.needy: kind 'needy' describes action type(s) 'needy.fetch' that no executor performs",
    ]
    for line in expected:
        assert any(line in got for got in lines), (line, lines)
    assert all(got.startswith("statevisor daemon: invalid configuration: ") for got in lines)
    assert not (tmp_path / "var" / "store.db").exists()


def test_a_user_module_s_warning_at_import_is_a_json_log_line(tmp_path: Path, user_daemons: list[UserDaemon]) -> None:
    """A warning raised while a user's kind is imported (at configuration load, before the log
    is set up) reaches the daemon's log as one JSON event; no raw line on stderr."""
    (tmp_path / "noisy.py").write_text(
        "import warnings\n\nfrom supervisor import Machine\n\n"
        "warnings.warn('noisy is about to change', UserWarning, stacklevel=1)\n\n\n"
        "class Noisy(Machine[dict]):\n    kind = 'noisy'\n"
    )
    daemon = UserDaemon(tmp_path, '[kinds]\nnoisy = "noisy:Noisy"\n', [])
    user_daemons.append(daemon)
    daemon.start()
    events = daemon.stop()
    warned = [e for e in events if e["event"] == "python_warning" and e["category"] == "UserWarning"]
    assert ["noisy is about to change"] == [e["message"] for e in warned]
    assert str(warned[0]["where"]).startswith(str(tmp_path / "noisy.py"))


def test_a_reload_picks_up_a_new_kind_and_a_changed_one(tmp_path: Path, user_daemons: list[UserDaemon]) -> None:
    """SIGHUP with a new [kinds] entry makes the kind spawnable at once; an entry changed to
    another class makes new processes use it while a live one goes on with the class it
    started with."""
    for version, greeting in (("v1", "Hello"), ("v2", "Howdy")):
        (tmp_path / f"greet_{version}.py").write_text(
            "from typing import Any\n\nfrom supervisor import Call, Context, Input, Machine\n\n\n"
            "class Greeter(Machine[dict[str, Any]]):\n    kind = 'greeter'\n\n"
            "    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:\n"
            f"        if isinstance(input, Call):\n            ctx.reply(input, '{greeting}')\n\n\n"
            "class Echo(Greeter):\n    kind = 'echo'\n"
        )
    daemon = UserDaemon(tmp_path, '[kinds]\ngreeter = "greet_v1:Greeter"\n', [])
    user_daemons.append(daemon)
    daemon.start()
    assert 2 == daemon.cli("spawn", "echo").returncode  # not a kind yet
    assert 0 == daemon.cli("spawn", "greeter", "--name", "old").returncode
    daemon.config.write_text(
        daemon.config.read_text().replace('greet_v1:Greeter"', 'greet_v2:Greeter"\necho = "greet_v1:Echo"')
    )
    assert daemon.child is not None
    daemon.child.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.cli("spawn", "echo").returncode == 0)  # the reload is through
    assert 0 == daemon.cli("spawn", "greeter", "--name", "new").returncode
    assert "Howdy" == json.loads(daemon.cli("call", "new", "hi").stdout)
    assert "Hello" == json.loads(daemon.cli("call", "old", "hi").stdout)
    events = daemon.stop()
    [reloaded] = [e for e in events if e["event"] == "kinds_reloaded"]
    assert (["echo"], ["greeter"]) == (reloaded["added"], reloaded["changed"])
