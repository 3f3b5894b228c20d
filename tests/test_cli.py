"""The command line over a running daemon: tables, --json, and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.test_daemon import ROOT, Daemon, daemon, wait_for  # noqa: F401 - the fixture

__all__ = ["daemon"]


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--config", str(daemon.config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_ps_spawn_inspect_pause_resume_kill(daemon: Daemon) -> None:
    """ps lists the declared processes (table and JSON); spawn starts one from JSON state;
    inspect shows its state; ps shows how far off a timer it waits on is; pause/resume/kill
    change it; each exits 0."""
    daemon.start()
    table = cli(daemon, "ps")
    assert 0 == table.returncode, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["PID", "NAME", "KIND", "LIFECYCLE"]
    assert "root/fast" in table.stdout
    listed = json.loads(cli(daemon, "ps", "--json").stdout)
    assert {"root/fast", "root/after"} == {p["name"] for p in listed}

    spawned = cli(daemon, "spawn", "ticker", "--state", '{"interval": 60}', "--name", "adhoc")
    assert 0 == spawned.returncode, spawned.stderr
    pid = spawned.stdout.strip()
    shown = json.loads(cli(daemon, "inspect", "adhoc", "--json").stdout)
    assert (pid, 60, "waiting") == (shown["pid"], shown["state"]["interval"], shown["lifecycle"])
    [row] = [line for line in cli(daemon, "ps").stdout.splitlines() if " adhoc " in line]
    far_off = re.search(r" timer tick in (\d+\.\d)s$", row)  # the table: how far off; --json: the deadline
    assert far_off is not None, row
    assert 0 < float(far_off[1]) <= 60, row
    [listed_adhoc] = [p for p in json.loads(cli(daemon, "ps", "--json").stdout) if p["name"] == "adhoc"]
    assert listed_adhoc["waiting_on"][0].startswith("timer tick at ")
    assert 0 == cli(daemon, "pause", pid).returncode
    assert json.loads(cli(daemon, "inspect", pid, "--json").stdout)["paused"] is True
    assert 0 == cli(daemon, "resume", pid).returncode
    assert 0 == cli(daemon, "nudge", pid).returncode  # automatic mode: accepted, no effect
    assert 0 == cli(daemon, "kill", pid, "--reason", "test").returncode
    assert "adhoc" not in cli(daemon, "ps").stdout
    status = json.loads(cli(daemon, "status", "--json").stdout)
    assert 2 == status["processes"] == status["live"]
    # The two declared tickers: waiting for their next tick, or running one (every 20 ms).
    assert 2 == sum(status["by_lifecycle"].values())
    assert set(status["by_lifecycle"]) <= {"running", "waiting"}
    assert 1 == status["ended"]["killed"]
    text = cli(daemon, "status").stdout.splitlines()
    assert re.fullmatch(r"daemon: statevisor \S+ at \S+, up \d+s", text[0]), text
    assert re.fullmatch(r"processes: 2 live \((2 waiting|2 running|1 running, 1 waiting)\)", text[1]), text
    [ticker] = [line.split() for line in text if line.startswith("ticker ")]
    assert ["ticker", "2"] == ticker[:2], text
    assert "-" == ticker[-1], text  # no slots for tickers


def test_watch_follows_a_process_to_its_end(daemon: Daemon) -> None:
    """watch prints snapshots until the process ends (here: killed from another command)."""
    daemon.start()
    pid = cli(daemon, "spawn", "ticker", "--state", '{"interval": 0.05}').stdout.strip()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "watch", pid, "--json", "--config", str(daemon.config)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watcher.stdout is not None
    first = json.loads(watcher.stdout.readline())
    assert pid == first["pid"]
    assert 0 == cli(daemon, "kill", pid).returncode
    rest = [json.loads(line) for line in watcher.stdout]
    watcher.stdout.close()
    assert 0 == watcher.wait(timeout=30)
    assert "killed" == rest[-1]["lifecycle"]


def test_exit_codes(daemon: Daemon, tmp_path: Path) -> None:
    """4: no such process; 2: bad --state, or a kind the daemon does not know; 1: a call with no
    reply in its --timeout; 3: no daemon to reach."""
    daemon.start()
    missing = cli(daemon, "kill", "nobody")
    assert 4 == missing.returncode
    assert "no live or recently ended process" in missing.stderr
    assert 2 == cli(daemon, "spawn", "ticker", "--state", "{not json").returncode
    unknown = cli(daemon, "spawn", "no-such-kind")
    assert 2 == unknown.returncode
    assert "no-such-kind" in unknown.stderr
    unanswered = cli(daemon, "call", "fast", '"nothing-replies-to-this"', "--timeout", "0.3")
    assert 1 == unanswered.returncode  # the process did not reply: not "cannot reach the daemon"
    assert "no reply within 0.3 s" in unanswered.stderr
    daemon.stop()
    gone = cli(daemon, "ps")
    assert 3 == gone.returncode
    assert "is the daemon running" in gone.stderr or "cannot reach" in gone.stderr


def test_commands_reach_a_daemon_over_tcp_with_its_token_and_tls(daemon: Daemon, tmp_path: Path) -> None:
    """--tcp HOST:PORT reaches the daemon over TLS-wrapped TCP: the token comes from the config's
    token file, or --token-file, or STATEVISOR_TOKEN (never an argument); the certificate is
    verified against the config's tls_cert or --tls-ca. A wrong token exits 3 (refused), a
    missing one exits 2; the token never appears in the output."""
    import os

    from tests.helpers import self_signed
    from tests.test_daemon import free_port

    cert, key = self_signed(tmp_path)
    secret = "a-long-enough-secret-token"
    token_file = daemon.config.parent / "token"
    token_file.write_text(secret + "\n")
    os.chmod(token_file, 0o600)
    port = free_port()
    daemon.config.write_text(
        daemon.config.read_text().replace(
            "[daemon]\n",
            f'[daemon]\ntcp = "127.0.0.1:{port}"\ntoken_file = "token"\ntls_cert = "{cert}"\ntls_key = "{key}"\n',
        )
    )
    daemon.start()
    address = f"127.0.0.1:{port}"

    def run(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "STATEVISOR_TOKEN"}
        if token is not None:
            env["STATEVISOR_TOKEN"] = token
        return subprocess.run(
            [sys.executable, "-m", "supervisor", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env=env, check=False,
        )  # fmt: skip

    configured = run("ps", "--json", "--tcp", address, "--config", str(daemon.config))
    assert 0 == configured.returncode, configured.stderr
    assert {"root/fast", "root/after"} == {p["name"] for p in json.loads(configured.stdout)}
    nowhere = str(tmp_path / "absent.toml")
    by_env = run("status", "--json", "--tcp", address, "--config", nowhere, "--tls-ca", str(cert), token=secret)
    assert 0 == by_env.returncode, by_env.stderr
    assert (2, address) == (json.loads(by_env.stdout)["processes"], json.loads(by_env.stdout)["address"])
    by_file = run("ps", "--tcp", address, "--config", nowhere, "--tls-ca", str(cert), "--token-file", str(token_file))
    assert 0 == by_file.returncode, by_file.stderr

    wrong = run("ps", "--tcp", address, "--config", nowhere, "--tls-ca", str(cert), token="not-the-token-at-all")
    assert 3 == wrong.returncode
    assert "refused the connection" in wrong.stderr
    assert "valid token is required" in wrong.stderr
    missing = run("ps", "--tcp", address, "--config", nowhere, "--tls-ca", str(cert))
    assert 2 == missing.returncode
    assert "needs a token" in missing.stderr
    bad_address = run("ps", "--tcp", "no-port-here", "--config", nowhere, token=secret)
    assert 2 == bad_address.returncode
    assert "--tcp: expected host:port" in bad_address.stderr
    for done in (configured, by_env, by_file, wrong, missing, bad_address):
        assert secret not in done.stdout + done.stderr


def test_call_cast_propose_and_read_from_the_command_line(daemon: Daemon) -> None:
    """call prints a process's reply as JSON; cast sends without one; propose appends to a
    log-apply machine and prints the entry's index and apply result (the old value); read
    answers from the applied state (--sync after catching up). An entry apply rejects exits 1
    naming the error. A message that is JSON is its value; anything else is the string as
    written (`call fast ticks` sends "ticks")."""
    log = daemon.config.parent / "kv.db"
    daemon.config.write_text(
        daemon.config.read_text()
        + f'\n[[process]]\nname = "kv"\nkind = "logapply"\n[process.settings]\napp = "kv"\npath = "{log}"\n'
    )
    daemon.start()
    assert isinstance(json.loads(cli(daemon, "call", "fast", '"ticks"').stdout), int)
    assert 0 == cli(daemon, "cast", "fast", '"hello"').returncode

    first = cli(daemon, "propose", "kv", '{"op": "set", "key": "a", "value": 1}', "--json")
    assert 0 == first.returncode, first.stderr
    assert {"index": 1, "result": None} == json.loads(first.stdout)
    second = cli(daemon, "propose", "kv", '{"op": "add", "key": "a", "by": 41}')
    assert ["2", "1"] == second.stdout.split()
    assert 42 == json.loads(cli(daemon, "read", "kv", '"a"', "--sync").stdout)
    assert json.loads(cli(daemon, "read", "kv", '"missing"').stdout) is None

    rejected = cli(daemon, "propose", "kv", '{"op": "explode", "key": "a"}')
    assert 1 == rejected.returncode
    assert "unknown kv op 'explode'" in rejected.stderr
    assert 42 == json.loads(cli(daemon, "read", "kv", '"a"').stdout)  # a rejected entry changes nothing
    assert isinstance(json.loads(cli(daemon, "call", "fast", "ticks").stdout), int)  # a bare word is a string
    assert 42 == json.loads(cli(daemon, "read", "kv", "a").stdout)


def test_the_table_says_how_far_off_a_timer_is() -> None:
    """ps's WAITING ON column turns a timer's deadline into "in Ns" or "due Ns ago" (a timer
    whose name has spaces included) and leaves actions as the runtime names them."""
    from supervisor.cli.commands import _waiting

    entries = ("action shell.run a1", "timer tick at 1000.250", "timer back off at 990.0")
    assert "action shell.run a1, timer tick in 0.2s, timer back off due 10.0s ago" == _waiting(entries, 1000.0)
    assert "-" == _waiting((), 1000.0)


def test_a_command_gives_up_on_a_daemon_that_greets_and_then_never_answers(tmp_path: Path) -> None:
    """A daemon whose loop is blocked after the hello (the kernel still takes connections, and
    the hello may have come first) no longer keeps a command waiting for good: past --deadline
    it exits 3 saying the daemon did not answer and where to look."""
    import socket
    import threading

    from supervisor.control._protocol import encode

    path = tmp_path / "stuck.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    held: list[socket.socket] = []

    def greet_then_say_nothing() -> None:
        peer, _ = listener.accept()
        held.append(peer)
        peer.recv(4096)  # the hello
        peer.sendall(encode({"id": 0, "ok": True, "result": {"version": 1, "server": "stuck"}}))

    stuck = threading.Thread(target=greet_then_say_nothing, daemon=True)
    stuck.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "supervisor", "status", "--socket", str(path), "--deadline", "0.5"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        stuck.join(timeout=10)
        for peer in held:
            peer.close()
        listener.close()
    assert 3 == done.returncode, done.stderr
    assert "the daemon did not answer within 0.5 s" in done.stderr
    assert "loop_stalled" in done.stderr


def test_a_reader_that_goes_away_ends_a_command_quietly(daemon: Daemon) -> None:
    """`statevisor ps | head -1` and `statevisor watch X | head -1`: once stdout's reader is
    gone the command ends with 141 (as SIGPIPE ends other tools) and says nothing on stderr;
    it used to report "cannot reach the daemon ... Broken pipe" and exit 3."""
    daemon.start()
    command = [sys.executable, "-m", "supervisor", "--config", str(daemon.config)]
    listing = subprocess.Popen([*command[:3], "ps", *command[3:]], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert listing.stdout is not None
    listing.stdout.close()  # gone before it writes a line
    _, err = listing.communicate(timeout=60)
    assert (141, "") == (listing.returncode, err)
    watching = subprocess.Popen([*command[:3], "watch", "fast", *command[3:]], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert watching.stdout is not None
    assert "root/fast" in watching.stdout.readline()  # the ticker changes every 20 ms: lines keep coming
    watching.stdout.close()
    _, err = watching.communicate(timeout=60)
    assert (141, "") == (watching.returncode, err)


def test_the_socket_may_come_from_the_environment_outside_the_repository(daemon: Daemon, tmp_path: Path) -> None:
    """With STATEVISOR_SOCKET set, commands run from any directory reach the daemon without
    --config (the default config path is relative to the repository); STATEVISOR_CONFIG
    names the configuration the same way."""
    daemon.start()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "supervisor", "ps", "--json"]
    without = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=60, check=False)
    assert 2 == without.returncode, without.stderr  # no config/statevisor.toml here
    socket = str(daemon.config.parent / "var" / "s.sock")
    for variable, value in (("STATEVISOR_SOCKET", socket), ("STATEVISOR_CONFIG", str(daemon.config))):
        done = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, variable: value})  # fmt: skip
        assert 0 == done.returncode, done.stderr
        assert {"root/fast", "root/after"} == {p["name"] for p in json.loads(done.stdout)}


def test_a_call_to_a_paused_process_says_it_is_paused(daemon: Daemon) -> None:
    """`statevisor call` to a paused process fails at once (exit 1) saying it is paused and how
    to resume it, instead of waiting out its timeout; resumed, the same call is answered."""
    daemon.start()
    assert 0 == cli(daemon, "pause", "fast").returncode
    paused = cli(daemon, "call", "fast", "ticks", "--timeout", "60")
    assert 1 == paused.returncode
    assert "process root/fast is paused (by an operator): it handles no call until it is resumed" in paused.stderr
    assert "statevisor resume root/fast" in paused.stderr
    assert 0 == cli(daemon, "resume", "fast").returncode
    assert isinstance(json.loads(cli(daemon, "call", "fast", "ticks").stdout), int)


def test_the_cli_and_the_configuration_leave_the_web_stack_unimported() -> None:
    """A CLI command (and the daemon's configuration, which the CLI reads) imports neither the
    web console's server and templates nor a kind's heavy client: each command would pay for
    them at start, and every object they make is walked by the garbage collector's full passes."""
    probe = (
        "import sys, supervisor.cli.main, supervisor.daemon.config, supervisor.daemon.plugins; "
        "print(sorted(m for m in ('aiohttp', 'jinja2', 'lightkube', 'supervisor.web') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert "[]" == done.stdout.strip()
