"""Configuration: a valid file loads; each of many broken ones gives a precise error and the
daemon does not start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor import Restart
from supervisor.daemon.config import ConfigFileError, load

GOOD = """\
[daemon]
store = "var/s.db"
metrics = "127.0.0.1:9999"
[daemon.slots]
ticker = 2

[[process]]
name = "a"
kind = "ticker"

[[process]]
name = "b"
kind = "ticker"
restart = "transient"
depends_on = ["a"]
[process.settings]
interval = 1.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "statevisor.toml"
    path.write_text(text)
    return path


def test_a_good_configuration_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    """Every key lands in typed settings; relative paths resolve against the file's directory."""
    config = load(write(tmp_path, GOOD))
    assert tmp_path / "var" / "s.db" == config.daemon.store
    assert {"ticker": 2} == dict(config.daemon.slots)
    assert ["a", "b"] == [p.name for p in config.processes]
    assert (Restart.TRANSIENT, ("a",), {"interval": 1.5}) == (
        config.processes[1].restart, config.processes[1].depends_on, dict(config.processes[1].settings)
    )  # fmt: skip


def test_relative_paths_in_process_settings_resolve_against_the_file(tmp_path: Path) -> None:
    """A process's local paths (a shell's cwd, a log-apply machine's log, a batch job's local
    staging files) are relative to the configuration file, as [daemon] paths are, so a daemon
    started from another directory uses the same files; absolute paths and the remote side of
    staging are left as written, and so is a shell's stdout (relative to the log directory)."""
    text = """\
[[process]]
name = "sh"
kind = "shell"
[process.settings]
argv = ["true"]
cwd = "work"
stdout = "sh.log"

[[process]]
name = "kv"
kind = "logapply"
[process.settings]
app = "kv"
path = "data/kv.db"

[[process]]
name = "abs"
kind = "logapply"
[process.settings]
app = "kv"
path = "/srv/kv.db"

[[process]]
name = "job"
kind = "batch"
[process.settings]
host = "cluster"
argv = ["true"]
stage_in = [["in/a.dat", "run/a.dat"]]
stage_out = [["run/b.dat", "out/b.dat"]]

[host.cluster]
address = "login.example.org"
"""
    base = tmp_path / "nested"
    base.mkdir()
    config = load(write(base, text))
    shell, kv, absolute, job = (dict(p.settings) for p in config.processes)
    assert (str(base / "work"), "sh.log") == (shell["cwd"], shell["stdout"])
    assert str(base / "data" / "kv.db") == kv["path"]
    assert "/srv/kv.db" == absolute["path"]
    assert [[str(base / "in" / "a.dat"), "run/a.dat"]] == job["stage_in"]
    assert [["run/b.dat", str(base / "out" / "b.dat")]] == job["stage_out"]
    assert "work" == load(write(tmp_path, text), kinds=False).processes[0].settings["cwd"], "without kinds: as written"


def test_restart_policy_loads_for_the_root_and_per_process(tmp_path: Path) -> None:
    """[supervisor] sets the root's strategy, budget and backoff; a process's own backoff and
    budget (max_restarts, period defaulting to 60 s) land in its settings, the backoff keys it
    leaves out taken from [supervisor.backoff] (here jitter = 0); without them a process has
    none (the root's apply)."""
    from supervisor import Backoff, Budget, Strategy

    text = GOOD + (
        "\n[[process]]\nname = 'c'\nkind = 'ticker'\nbackoff = { initial = 2, maximum = 20 }\nmax_restarts = 4\n\n"
        "[[process]]\nname = 'd'\nkind = 'ticker'\nmax_restarts = 1\nperiod = 30\n\n"
        "[supervisor]\nstrategy = 'rest_for_one'\nmax_restarts = 7\nperiod = 9.5\n"
        "[supervisor.backoff]\ninitial = 0.5\njitter = 0\n"
    )
    config = load(write(tmp_path, text))
    root = config.supervisor
    assert (Strategy.REST_FOR_ONE, Budget(7, 9.5)) == (root.strategy, root.budget)
    assert Backoff(initial=0.5, jitter=0.0) == root.backoff
    a, _, c, d = config.processes
    assert (None, None) == (a.backoff, a.budget)
    assert (Backoff(initial=2.0, maximum=20.0, jitter=0.0), Budget(4, 60.0)) == (c.backoff, c.budget)
    assert (None, Budget(1, 30.0)) == (d.backoff, d.budget)
    defaults = load(write(tmp_path, GOOD)).supervisor
    assert (Strategy.ONE_FOR_ONE, Budget(), Backoff()) == (defaults.strategy, defaults.budget, defaults.backoff)


def test_the_shipped_example_configuration_is_valid() -> None:
    """config/statevisor.toml (what the README's first command runs) validates, the kinds'
    own settings checks included."""

    path = Path(__file__).parent.parent / "config" / "statevisor.toml"
    config = load(path)
    assert ["ticker", "ticker", "shell"] == [p.kind for p in config.processes]


BROKEN = [
    ("[daemon\nstore = 1", 1, "", "not valid TOML"),
    ("x = = 1", 1, "", "not valid TOML"),
    ("extra = 1", None, "extra",
     "unknown key; expected one of cluster, daemon, executors, host, kinds, kubernetes, process, supervisor"),
    ("[daemon]\nstores = 'x'", 2, "daemon.stores", "unknown key"),
    ("[daemon]\nstore = 5", 2, "daemon.store", "expected a string; got an integer 5"),
    ("[daemon]\nkill_grace = 'soon'", 2, "daemon.kill_grace", "expected an integer or a number; got a string"),
    ("[daemon]\nkill_grace = -1", 2, "daemon.kill_grace", "expected a number > 0"),
    ("[daemon]\nshutdown_timeout = 0", 2, "daemon.shutdown_timeout", "expected a number > 0"),
    ("[daemon]\nretention_days = true", 2, "daemon.retention_days", "got true/false True"),
    ("[daemon]\nended_kept = -1", 2, "daemon.ended_kept", "expected a whole number >= 0; got -1"),
    ("[daemon]\nended_kept = 1.5", 2, "daemon.ended_kept", "expected an integer; got a number 1.5"),
    ("[daemon]\nmax_connections = 0", 2, "daemon.max_connections", "expected a whole number >= 1; got 0"),
    ("[daemon]\nloop = 'trio'", 2, "daemon.loop", "expected one of uvloop, asyncio; got 'trio'"),
    ("[daemon]\nlog_level = 'loud'", 2, "daemon.log_level", "expected one of debug, info, warning, error"),
    ("[daemon]\nmetrics = 'localhost'", 2, "daemon.metrics", "expected host:port"),
    (f"[daemon]\nsocket = '{'s' * 120}.sock'", 2, "daemon.socket", "a unix socket's path takes at most 107"),
    ("[daemon]\nmetrics = '127.0.0.1:99999'", 2, "daemon.metrics", "expected host:port"),
    ("[daemon.slots]\nshell = 0", 2, "daemon.slots.shell", "expected a whole number >= 1; got 0"),
    ("[daemon.slots]\nshell = 2.5", 2, "daemon.slots.shell", "expected a whole number >= 1; got 2.5"),
    ("[daemon]\nslots = 3", 2, "daemon.slots", "expected a table; got an integer 3"),
    ("[[process]]\nkind = 'ticker'", 1, "process[0].name", "missing (required)"),
    ("[[process]]\nname = 'a'", 1, "process[0].kind", "missing (required)"),
    ("[[process]]\nname = 'a'\nkind = 'nope'", 3, "process[0].kind", "unknown process kind 'nope'"),
    ("[[process]]\nname = 'a/b'\nkind = 'ticker'", 2, "process[0].name",
     "holds '/', which separates the parts of a supervisor path; got 'a/b'"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\n[[process]]\nname = 'a'\nkind = 'ticker'", 5, "process[1].name",
     "'a' is declared twice"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\nrestart = 'sometimes'", 4, "process[0].restart",
     "expected one of permanent, transient, temporary; got 'sometimes'"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\ndepends_on = 'b'", 4, "process[0].depends_on", "expected an array"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\ndepends_on = [1]", 4, "process[0].depends_on",
     "expected an array of process names"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\ndepends_on = ['ghost']", 4, "process[0].depends_on",
     "names 'ghost', which is not a declared process"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\ncolour = 'red'", 4, "process[0].colour", "unknown key"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\nsettings = 1", 4, "process[0].settings", "expected a table"),
    ("process = 3", None, "process", "expected an array; got an integer 3"),
    ("[host]\nhpc = 1", 2, "host.hpc", "expected a table"),
    ("[daemon]\ntcp = '127.0.0.1:7411'", 2, "daemon.token_file", "required when daemon.tcp is set"),
    ("[daemon]\ntcp = '10.0.0.5:7411'\ntoken_file = 't'", 2, "daemon.tls_cert", "required when daemon.tcp is not"),
    ("[daemon]\ntcp = 'nowhere'\ntoken_file = 't'", 2, "daemon.tcp", "expected host:port"),
    ("[supervisor]\nstrategy = 'all_for_none'", 2, "supervisor.strategy",
     "expected one of one_for_one, one_for_all, rest_for_one; got 'all_for_none'"),
    ("[supervisor]\nmax_restarts = -1", 2, "supervisor.max_restarts", "max_restarts >= 0"),
    ("[supervisor]\nperiod = 0", 2, "supervisor.period", "period > 0"),
    ("[supervisor]\nlimit = 3", 2, "supervisor.limit", "unknown key"),
    ("[supervisor.backoff]\nintial = 1", 2, "supervisor.backoff.intial", "unknown key; expected one of initial"),
    ("[supervisor.backoff]\ninitial = 9\nmaximum = 1", 1, "supervisor.backoff", "initial <= maximum"),
    ("[supervisor]\nstrategy = 'one_for_all'\nbackoff = { jitter = 2 }", 3, "supervisor.backoff", "0 <= jitter < 1"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\nbackoff = { initial = 'slow' }", 4, "process[0].backoff.initial",
     "expected an integer or a number; got a string"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\n[process.backoff]\nmultiplier = 0.5", 4, "process[0].backoff",
     "multiplier >= 1"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\nmax_restarts = 2.5", 4, "process[0].max_restarts",
     "expected an integer; got a number"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\nperiod = 10", 4, "process[0].period", "period needs max_restarts"),
    ("[[process]]\nname = 'a'\nkind = 'ticker'\nmax_restarts = 2\nperiod = -1", 5, "process[0].period", "period > 0"),
    ("[daemon]\nmetrics = '0.0.0.0:9464'", 2, "daemon.metrics_token_file",
     "required when daemon.metrics is not on loopback (0.0.0.0:9464)"),
    ("[daemon]\nmetrics = '0.0.0.0:9464'\nmetrics_token_file = 't'", 2, "daemon.metrics_tls",
     "must be true when daemon.metrics is not on loopback"),
    ("[daemon]\nmetrics_tls = true", 2, "daemon.metrics_tls", "needs daemon.tls_cert and daemon.tls_key"),
    ("[daemon]\nmetrics_tls = 'yes'", 2, "daemon.metrics_tls", "expected true/false"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "key", "fragment"), BROKEN)
def test_broken_configurations_name_the_file_key_line_and_expectation(
    tmp_path: Path, text: str, line: int | None, key: str, fragment: str
) -> None:
    """Each broken file raises ConfigFileError naming the file, the key path, the line and what was
    expected (the line is where the offending key or table is)."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    error = caught.value
    assert str(path) == error.file
    assert key == error.key
    if line is not None:
        assert line == error.line, str(error)
    assert fragment in str(error)
    assert str(error).startswith(f"{path}:" if line else str(path))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that cannot be read is reported as such, naming it."""
    with pytest.raises(ConfigFileError, match="cannot read"):
        load(tmp_path / "absent.toml")


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_line(tmp_path: Path) -> None:
    """A configuration saved in another encoding is refused as a ConfigFileError (a daemon's reload
    keeps its running configuration) that names the file, the line and the byte."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[daemon]\nstore = "var/s.db"\n# caf\xe9\n')
    with pytest.raises(ConfigFileError, match="not UTF-8 text") as caught:
        load(path)
    assert 3 == caught.value.line
    assert str(caught.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize("case", [BROKEN[4], BROKEN[18], BROKEN[21]])
def test_the_daemon_refuses_a_broken_configuration_with_exit_code_2(tmp_path: Path, case: tuple[str, ...]) -> None:
    """`statevisor daemon` with a broken file exits 2, prints the precise error, starts nothing."""
    path = write(tmp_path, case[0] + "\n[daemon]\nstore = 'never.db'\n" if "[daemon]" not in case[0] else case[0])
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 2 == done.returncode, done.stderr
    assert "invalid configuration" in done.stderr
    assert case[2] in done.stderr
    assert not (tmp_path / "never.db").exists()
    assert not (tmp_path / "statevisor.db").exists()


def test_a_kinds_settings_are_checked_at_load_naming_file_line_and_key(tmp_path: Path) -> None:
    """A shell process's invalid settings refuse the whole file with where and what."""

    path = tmp_path / "bad.toml"
    path.write_text(
        '[[process]]\nname = "ok"\nkind = "shell"\n[process.settings]\nargv = ["true"]\n\n'
        '[[process]]\nname = "bad"\nkind = "shell"\n[process.settings]\nargv = ["true"]\n'
        "[process.settings.limits]\nstack = 5\n"
    )
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    assert f"{path}:13: process[1].settings.limits.stack: unknown limit" in str(caught.value)


def test_every_kinds_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    """A ticker whose interval is not a number, or a misspelled setting, refuses the file at
    load (it used to start and fail at the first tick, or be accepted silently)."""
    path = write(tmp_path, "[[process]]\nname = 'a'\nkind = 'ticker'\n[process.settings]\ninterval = 'fast'\n")
    with pytest.raises(
        ConfigFileError, match=r":5: process\[0\]\.settings\.interval: expected a number of seconds > 0"
    ):
        load(path)
    path = write(tmp_path, "[[process]]\nname = 'a'\nkind = 'ticker'\n[process.settings]\nintervall = 3\n")
    with pytest.raises(ConfigFileError, match=r":5: process\[0\]\.settings\.intervall: unknown setting"):
        load(path)


def test_a_file_with_several_mistakes_reports_all_of_them_at_once(tmp_path: Path) -> None:
    """Every mistake of a file is reported together, each with its line and key, in the order of
    the file's sections: the operator fixes them in one go, not one per attempt."""
    path = write(
        tmp_path,
        "[daemon]\nloop = 'tokio'\nkill_grace = -1\n\n"
        "[[process]]\nname = 'a'\nkind = 'ticker'\nrestart = 'sometimes'\n\n"
        "[[process]]\nname = 'b'\nkind = 'nonesuch'\n\n"
        "[[process]]\nname = 'c'\nkind = 'ticker'\ndepends_on = ['ghost']\n\n"
        "[supervisor]\nstrategy = 'all_for_none'\n",
    )
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    found = [(error.line, error.key) for error in caught.value.errors]
    assert [
        (3, "daemon.kill_grace"),
        (2, "daemon.loop"),
        (8, "process[0].restart"),
        (12, "process[1].kind"),
        (17, "process[2].depends_on"),
        (20, "supervisor.strategy"),
    ] == found
    assert len(found) == len(str(caught.value).splitlines())


def test_a_start_order_cycle_is_a_configuration_error_naming_the_lines(tmp_path: Path) -> None:
    """depends_on that form a cycle refuse the file (they used to fail later, at start, without
    a file or line): the error walks the cycle and gives each member's depends_on line."""
    path = write(
        tmp_path,
        "[[process]]\nname = 'a'\nkind = 'ticker'\ndepends_on = ['b']\n\n"
        "[[process]]\nname = 'b'\nkind = 'ticker'\ndepends_on = ['c']\n\n"
        "[[process]]\nname = 'c'\nkind = 'ticker'\ndepends_on = ['a']\n",
    )
    with pytest.raises(ConfigFileError) as caught:
        load(path)
    assert (4, "process[0].depends_on") == (caught.value.line, caught.value.key)
    assert "cycle: a -> b -> c -> a; declared at 'a' (line 4), 'b' (line 9), 'c' (line 14)" in str(caught.value)


def test_the_daemon_refuses_a_cycle_with_exit_code_2_naming_file_and_lines(tmp_path: Path) -> None:
    """`statevisor daemon` on a file with a start-order cycle exits 2 (not 1, as a start that
    failed) and names the file and the lines; every other mistake is printed with it."""
    path = write(
        tmp_path,
        "[daemon]\nstore = 'never.db'\nloop = 'tokio'\n\n"
        "[[process]]\nname = 'a'\nkind = 'ticker'\ndepends_on = ['b']\n\n"
        "[[process]]\nname = 'b'\nkind = 'ticker'\ndepends_on = ['a']\n",
    )
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", "daemon", "--config", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert 2 == done.returncode, done.stderr
    lines = done.stderr.splitlines()
    assert [f"statevisor daemon: invalid configuration: {path}:3: daemon.loop: expected one of uvloop, asyncio; "
            "got 'tokio'",
            f"statevisor daemon: invalid configuration: {path}:8: process[0].depends_on: start-order dependencies "
            "form a cycle: a -> b -> a; declared at 'a' (line 8), 'b' (line 13)"] == lines  # fmt: skip
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(
    ("name", "problem"),
    [("web/api", "holds '/'"), ("..", "path part '..'"), ("tab\there", "control character"), ("é" * 101, "200 bytes")],
)
def test_a_declared_name_follows_the_same_rule_as_a_spawned_one(tmp_path: Path, name: str, problem: str) -> None:
    """A [[process]] name is checked by the rule spawn() applies (and the one part of a
    supervisor path a supervised child's name is); names spawn() takes are valid here too."""
    path = write(tmp_path, f"[[process]]\nname = {name!r}\nkind = 'ticker'\n".replace("'", '"'))
    with pytest.raises(ConfigFileError, match=re.escape(problem)):
        load(path)
    for good in ("nightly backup", "données", "v1.2"):
        assert good == load(write(tmp_path, f"[[process]]\nname = '{good}'\nkind = 'ticker'\n")).processes[0].name
