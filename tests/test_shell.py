"""The local shell kind, against real subprocesses: results, process groups, signals, limits,
logs and rotation, errors, supervision, and re-attaching to commands after a restart."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
import stat
import subprocess
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from processes.shell import RUN, Shell, ShellExecutor, executors
from processes.shell._journal import Journal, append_ended, marker, started_runs
from processes.shell._launch import inherited_environment, is_our_child, start_time
from processes.shell._link import MonitorLink, MonitorLost
from processes.shell._monitor import JOURNAL, MARKER
from processes.shell._proc import stat_fields
from processes.shell.errors import CommandLost
from supervisor import (
    Backoff,
    Budget,
    ChildSpec,
    ConfigurationError,
    Handle,
    Lifecycle,
    LogNotFound,
    ManualClock,
    Node,
    Restart,
    SettingsError,
    SupervisorSpec,
    SupervisorState,
    TrackedAction,
)
from supervisor.lowlevel import rotate_log
from tests.helpers import wait_until


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Node]:
    host = Node(machines=[Shell(tmp_path / "logs")], executors=executors(tmp_path / "runs"), kill_grace=10.0)
    await host.start()
    yield host
    await host.shutdown(timeout=10)


async def run(host: Node, settings: dict[str, Any], name: str | None = None, timeout: float = 20) -> Handle:
    handle = await host.spawn("shell", settings, name=name)
    await handle.wait(timeout=timeout)
    return handle


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process, zombies included, whose process group is ``pgid``."""
    found = []
    for entry in os.scandir("/proc"):
        fields = stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None and int(fields[2]) == pgid:
            found.append((int(entry.name), fields[0].decode()))
    return found


def zombie(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] == b"Z"


def cpu_ticks(pid: int) -> int:
    fields = stat_fields(pid)
    assert fields is not None, f"no process {pid}"
    return int(fields[11]) + int(fields[12])


async def command_pid(handle: Handle) -> int:
    """The command's pid, which is also its process group's id (it leads its own session),
    once the run monitor has noted it."""
    await wait_until(lambda: "_run" in handle.snapshot().state)
    journal = Path(handle.snapshot().state["_stdout"]).parent.parent / "runs" / JOURNAL
    action_id = handle.snapshot().state["_run"]

    def started() -> int | None:
        if not journal.exists():
            return None
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            if entry[:2] == ["started", action_id]:
                return int(entry[2][0])
        return None

    await wait_until(lambda: started() is not None)
    pid = started()
    assert pid is not None
    return pid


async def test_a_command_that_exits_zero_finishes_with_its_result(host: Node) -> None:
    """Exit code 0 finishes the process; the result has the code, times and the output's tail."""
    handle = await run(host, {"argv": ["sh", "-c", "echo out; echo err >&2"]}, name="hello")
    snapshot = handle.snapshot()
    assert Lifecycle.FINISHED == snapshot.lifecycle
    result = handle.result()
    assert 0 == result["exit_code"]
    assert None is result["signal"]
    assert ["out"] == result["stdout_tail"]
    assert ["err"] == result["stderr_tail"]
    assert result["started"] <= result["ended"]
    assert ["out"] == await handle.logs("stdout")
    assert ["err"] == await handle.logs("stderr")


async def test_a_path_name_logs_in_a_subdirectory_of_the_log_directory(host: Node, tmp_path: Path) -> None:
    """A name with '/' (a supervised child's path) puts its logs in a subdirectory of log_dir,
    made when missing; the runtime refuses names that would lead out of it."""
    handle = await run(host, {"argv": ["sh", "-c", "echo out; echo err >&2"]}, name="team/nightly")
    logs = tmp_path / "logs" / "team"
    assert (str(logs / "nightly.out.log"), str(logs / "nightly.err.log")) == (
        handle.snapshot().state["_stdout"],
        handle.snapshot().state["_stderr"],
    )
    assert ["out"] == (logs / "nightly.out.log").read_text().splitlines()
    with pytest.raises(ConfigurationError, match=r"path part '\.\.'"):
        await host.spawn("shell", {"argv": ["true"]}, name="team/../../outside")


async def test_exit_codes_decide_success_as_configured(host: Node) -> None:
    """A non-zero exit fails the process (saying the code) unless success_codes lists it."""
    failed = await run(host, {"argv": ["sh", "-c", "exit 3"]})
    assert Lifecycle.FAILED == failed.snapshot().lifecycle
    assert "exited with code 3" == failed.snapshot().error
    assert 3 == failed.snapshot().state["result"]["exit_code"]
    accepted = await run(host, {"argv": ["sh", "-c", "exit 3"], "success_codes": [0, 3]})
    assert Lifecycle.FINISHED == accepted.snapshot().lifecycle


async def test_a_command_killed_by_a_signal_reports_the_signal(host: Node) -> None:
    """A command that dies of a signal fails with that signal's name, not an exit code."""
    handle = await run(host, {"argv": ["sh", "-c", "kill -SEGV $$"]})
    assert "killed by SIGSEGV" == handle.snapshot().error
    assert "SIGSEGV" == handle.snapshot().state["result"]["signal"]


async def test_argv_is_not_a_shell_unless_asked(host: Node) -> None:
    """argv runs without a shell ($HOME stays literal); shell = true runs a command line."""
    plain = await run(host, {"argv": ["echo", "$HOME", ";", "true"]})
    assert ["$HOME ; true"] == plain.result()["stdout_tail"]
    shelled = await run(host, {"shell": True, "command": "echo $((6 * 7))"})
    assert ["42"] == shelled.result()["stdout_tail"]


async def test_environment_cwd_stdin_and_umask_reach_the_command(host: Node, tmp_path: Path) -> None:
    """env set/unset/inherit, cwd, stdin data and umask are applied in the child."""
    os.environ["STATEVISOR_TEST_INHERITED"] = "yes"
    os.environ["STATEVISOR_TEST_UNSET"] = "present"
    try:
        script = 'echo "$A|$STATEVISOR_TEST_INHERITED|${STATEVISOR_TEST_UNSET-unset}"; pwd; cat; umask'
        handle = await run(
            host,
            {
                "argv": ["sh", "-c", script],
                "env": {"A": "set"},
                "env_unset": ["STATEVISOR_TEST_UNSET"],
                "cwd": str(tmp_path),
                "stdin": "from stdin\n",
                "umask": "027",
            },
        )
        clean = await run(
            host, {"argv": ["sh", "-c", 'echo "${STATEVISOR_TEST_INHERITED-none}"'], "inherit_env": False}
        )
    finally:
        del os.environ["STATEVISOR_TEST_INHERITED"], os.environ["STATEVISOR_TEST_UNSET"]
    assert ["set|yes|unset", str(tmp_path), "from stdin", "0027"] == handle.result()["stdout_tail"]
    assert ["none"] == clean.result()["stdout_tail"]
    assert {"A": "***"} == handle.snapshot().state["env"], "environment values never show in snapshots"


async def test_env_files_give_a_command_secrets_that_no_state_or_checkpoint_holds(host: Node, tmp_path: Path) -> None:
    """A variable from env_files is read from its owner-only file when the command starts: the
    command sees the value (its final newline dropped), while the state, the snapshot and the
    action's payload hold only the file's path."""
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value\n")
    secret.chmod(0o600)
    digest = 'printf %s "$API_TOKEN" | sha256sum'  # the command tells the value without showing it
    handle = await run(host, {"argv": ["sh", "-c", digest], "env_files": {"API_TOKEN": str(secret)}})
    assert [f"{hashlib.sha256(b's3cr3t-value').hexdigest()}  -"] == handle.result()["stdout_tail"]
    record = handle._process.record()
    assert {"API_TOKEN": str(secret)} == record.state["env_files"]
    assert "s3cr3t-value" not in repr(record)
    assert "s3cr3t-value" not in repr(handle.snapshot())


async def test_an_env_file_open_to_others_or_missing_fails_the_start_naming_it(host: Node, tmp_path: Path) -> None:
    """A secret's file that others may read, or that does not exist, fails the process with
    SecretUnreadable naming the variable and the file (never a value); nothing is started."""
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-value\n")
    secret.chmod(0o644)
    shared = await run(host, {"argv": ["true"], "env_files": {"API_TOKEN": str(secret)}})
    assert f"SecretUnreadable: env_files.API_TOKEN: {secret} must be readable by its owner only (mode 644)" == (
        shared.snapshot().error
    )
    missing = await run(host, {"argv": ["true"], "env_files": {"API_TOKEN": str(tmp_path / "nope")}})
    assert f"SecretUnreadable: env_files.API_TOKEN: cannot read {tmp_path / 'nope'}: No such file or directory" == (
        missing.snapshot().error
    )
    assert "s3cr3t-value" not in f"{shared.snapshot()} {missing.snapshot()}"
    assert not (tmp_path / "runs" / JOURNAL).exists(), "nothing was claimed"


async def test_a_variable_set_in_the_daemon_reaches_the_next_command(host: Node) -> None:
    """The inherited environment is the daemon's at each spawn: set, changed or removed after
    earlier commands ran (the executor keeps a decoded copy while the environment is unchanged)."""
    show = {"argv": ["sh", "-c", 'echo "${STATEVISOR_TEST_LATE-none}"']}
    assert ["none"] == (await run(host, show)).result()["stdout_tail"]
    os.environ["STATEVISOR_TEST_LATE"] = "first"
    try:
        assert ["first"] == (await run(host, show)).result()["stdout_tail"]
        os.environ["STATEVISOR_TEST_LATE"] = "second"
        assert ["second"] == (await run(host, show)).result()["stdout_tail"]
    finally:
        del os.environ["STATEVISOR_TEST_LATE"]
    assert ["none"] == (await run(host, show)).result()["stdout_tail"]


def test_the_inherited_environment_is_a_fresh_copy_that_follows_changes() -> None:
    """inherited_environment returns the current environment, decoded as os.environ decodes it,
    as a copy a caller may change without touching the next one."""
    first = inherited_environment()
    assert dict(os.environ) == first
    first["STATEVISOR_TEST_COPY"] = "mine"
    assert "STATEVISOR_TEST_COPY" not in inherited_environment()
    os.environ["STATEVISOR_TEST_COPY"] = "caf\u00e9"
    try:
        assert "caf\u00e9" == inherited_environment()["STATEVISOR_TEST_COPY"]
    finally:
        del os.environ["STATEVISOR_TEST_COPY"]
    assert dict(os.environ) == inherited_environment()


async def test_resource_limits_apply_in_the_child(host: Node) -> None:
    """open_files, address_space and cpu_seconds become the child's rlimits."""
    handle = await run(
        host,
        {
            "argv": ["sh", "-c", "ulimit -n; ulimit -v; ulimit -t"],
            "limits": {"open_files": 64, "address_space": 2**30, "cpu_seconds": 7},
        },
    )
    assert ["64", str(2**30 // 1024), "7"] == handle.result()["stdout_tail"]
    burner = await run(host, {"argv": ["sh", "-c", "while :; do :; done"], "limits": {"cpu_seconds": 1}})
    assert burner.snapshot().state["result"]["signal"] in ("SIGXCPU", "SIGKILL")


async def test_kill_takes_down_a_tree_that_ignores_sigterm(host: Node) -> None:
    """kill: stop signal to the group, then SIGKILL after stop_grace; no process of the group
    is left, not even a zombie."""
    script = "trap '' TERM; (trap '' TERM; sleep 1000) & (sh -c 'trap \"\" TERM; sleep 1000') & sleep 1000"
    handle = await host.spawn("shell", {"argv": ["sh", "-c", script], "stop_grace": 0.5})
    await wait_until(lambda: "_run" in handle.snapshot().state)
    pgid = await command_pid(handle)
    await wait_until(lambda: len(group_members(pgid)) >= 5)
    began = time.monotonic()
    snapshot = await handle.kill("test")
    assert Lifecycle.KILLED == snapshot.lifecycle
    assert time.monotonic() - began < 5.0
    await wait_until(lambda: group_members(pgid) == [], timeout=5)


async def test_pause_stops_the_group_and_resume_continues_it(host: Node) -> None:
    """pause sends SIGSTOP to the group: a CPU burner's CPU time stops advancing; resume
    continues it."""
    handle = await host.spawn("shell", {"argv": ["sh", "-c", "while :; do :; done"]})
    await wait_until(lambda: "_run" in handle.snapshot().state)
    pgid = await command_pid(handle)
    burner = pgid  # the shell runs the loop itself
    await wait_until(lambda: cpu_ticks(burner) > 0)
    await handle.pause()
    await wait_until(lambda: all(state == "T" for _, state in group_members(pgid)))
    stopped = cpu_ticks(burner)
    await asyncio.sleep(0.3)  # a stretch of time for the CPU counter to (not) move in
    assert stopped == cpu_ticks(burner)
    await handle.resume()
    await wait_until(lambda: cpu_ticks(burner) > stopped)
    await handle.kill()


async def test_a_result_tail_reaches_into_the_backup_when_the_run_was_rotated(host: Node, tmp_path: Path) -> None:
    """A run whose log was rotated while it ran, ending with fewer lines in the live file than
    its tail asks for: the result's tail goes on into <log>.1 (the executor skips that lookup
    only for runs it started and never rotated)."""
    log = tmp_path / "logs" / "rotated.out.log"
    script = f'seq 1 400; while [ ! -e "{log}.1" ]; do sleep 0.02; done; echo last'
    handle = await run(host, {"argv": ["sh", "-c", script], "log_max_bytes": 1024, "tail_lines": 5}, name="rotated")
    assert ["397", "398", "399", "400", "last"] == handle.result()["stdout_tail"]


async def test_fast_output_is_rotated_and_the_daemon_does_not_buffer_it(host: Node, tmp_path: Path) -> None:
    """100 MB written as fast as possible: the log and its backups stay within the cap, the
    newest output is kept, and the daemon's memory does not grow with the output. (`yes | head`
    ends only because the command gets SIGPIPE's default back, which Python ignores.)"""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    handle = await run(
        host,
        {"argv": ["sh", "-c", "yes 0123456789 | head -c 99999999; echo last line"], "log_max_bytes": 2**20},
        name="flood",
        timeout=60,
    )
    assert Lifecycle.FINISHED == handle.snapshot().lifecycle
    log = tmp_path / "logs" / "flood.out.log"
    files = sorted(tmp_path.joinpath("logs").glob("flood.out.log*"))
    assert Path(f"{log}.1") in files, "rotated at least once"
    assert len(files) <= 4, "the file and at most log_backups (3) backups"
    for path in files:
        assert path.stat().st_size <= 2**20, path
    assert not Path(f"{log}.4").is_file()  # noqa: ASYNC240 - a test's quick look
    assert "last line" == handle.result()["stdout_tail"][-1]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB


async def test_output_with_no_newline_stays_small_in_the_result_and_the_logs(host: Node) -> None:
    """5 MB written with no newline, then a progress bar redrawn with \\r: the result's tails
    hold at most tail_lines lines of at most LINE_MAX bytes each (the 5 MB never goes into the
    checkpoint), the redraws are lines as a terminal shows them, and logs() answers in pieces."""
    from supervisor._files.logrotation import LINE_MAX

    script = "head -c 5000000 /dev/zero | tr '\\0' x; printf 'done 1%%\\rdone 50%%\\rdone 100%%' >&2"
    handle = await run(host, {"argv": ["sh", "-c", script], "tail_lines": 4}, name="noline", timeout=60)
    result = handle.result()
    assert 4 == len(result["stdout_tail"])
    assert all(set(line) == {"x"} and len(line) <= LINE_MAX for line in result["stdout_tail"])
    assert ["done 1%", "done 50%", "done 100%"] == result["stderr_tail"]
    assert [LINE_MAX] * 20 == [len(line) for line in await handle.logs("stdout", 20)]


async def test_a_remote_tail_longer_than_a_frame_arrives_whole(host: Node, tmp_path: Path) -> None:
    """logs() through the control socket for 200,000 lines (about 4 MB, four frames' worth)
    returns every one of them in order, as the in-process handle does."""
    from supervisor.control import Client, ControlServer

    script = "seq -f 'line %015g' 1 200000"
    handle = await run(host, {"argv": ["sh", "-c", script], "log_max_bytes": 2**26}, name="many", timeout=60)
    expected = [f"line {i:015d}" for i in range(1, 200001)]
    assert expected == await handle.logs("stdout", 200000)
    server = ControlServer(host, str(tmp_path / "control.sock"))
    await server.start()
    try:
        async with Client.connect(str(tmp_path / "control.sock")) as client:
            remote = await client.get("many")
            assert expected == await remote.logs("stdout", 200000)
    finally:
        await server.close()


async def test_a_pipe_as_log_target_is_never_rotated(host: Node, tmp_path: Path) -> None:
    """stdout into a FIFO (like /dev/stdout in a container): output beyond the cap flows on,
    no rotation is attempted and nothing breaks."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = bytearray()
    # The reader is there before the command starts (a FIFO without one fails the start), and
    # the test holds a write end too, so that the reader sees EOF only once it lets go.
    source = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(source, True)
    holder = os.open(fifo, os.O_WRONLY)

    def drain() -> None:
        with open(source, "rb") as pipe:
            while chunk := pipe.read(65536):
                received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        handle = await run(
            host, {"argv": ["sh", "-c", "yes 0123456789 | head -c 3000000"], "stdout": str(fifo), "log_max_bytes": 1024}
        )
    finally:
        os.close(holder)
    reader.join(timeout=10)
    assert Lifecycle.FINISHED == handle.snapshot().lifecycle
    assert 3_000_000 == len(received)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert not Path(f"{fifo}.1").is_file()  # noqa: ASYNC240 - a test's quick look


async def test_follow_yields_new_lines_as_they_are_written(host: Node) -> None:
    """handle.follow streams the log as it grows (what was written before it began included,
    no line lost or doubled at the seam); an unknown stream is a clear error."""
    handle = await host.spawn(
        "shell", {"argv": ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done; sleep 30"]}
    )
    await wait_until(lambda: "_run" in handle.snapshot().state)
    seen: list[str] = []
    async with asyncio.timeout(10):
        async for line in handle.follow("stdout", lines=10):
            seen.append(line)
            if len(seen) == 3:
                break
    assert ["line 1", "line 2", "line 3"] == seen
    with pytest.raises(LogNotFound, match="no 'journal' log"):
        await handle.logs("journal")
    await handle.kill()


def lines_in(log: Path) -> int:
    return log.read_bytes().count(b"\n")


async def test_a_remote_follow_resumes_after_a_disconnection_missing_and_repeating_nothing(
    host: Node, tmp_path: Path
) -> None:
    """A remote follow cut off while the command keeps writing (the control server goes away
    and comes back on the same socket, as in a daemon restart) resumes after the last line it
    yielded, even though the log was rotated meanwhile: the lines arrive in order, none
    missing, none twice."""
    from supervisor.control import Client, ControlServer

    handle = await host.spawn(
        "shell",
        {"argv": ["sh", "-c", "i=0; while [ $i -lt 400 ]; do i=$((i+1)); echo n$i; sleep 0.01; done; sleep 30"]},
    )
    await wait_until(lambda: "_run" in handle.snapshot().state)
    path = str(tmp_path / "control.sock")
    server = ControlServer(host, path)
    await server.start()
    log = Path(handle.log_files()["stdout"])
    seen: list[str] = []
    async with Client.connect(path) as client:
        remote = await client.get(handle.pid)
        follower = cast(AsyncGenerator[str, None], remote.follow("stdout", lines=1000))
        async with asyncio.timeout(60):
            async for line in follower:
                seen.append(line)
                if len(seen) == 20:
                    await server.close()  # cut off: the follower reconnects by itself
                    written = lines_in(log)
                    await wait_until(lambda w=written: lines_in(log) > w + 15)  # type: ignore[misc]
                    assert rotate_log(log, os.stat(log).st_size - 1, 3)  # keeps all but the first byte, read
                    await wait_until(lambda: lines_in(log) > 15)
                    server = ControlServer(host, path)
                    await server.start()
                if line == "n200":
                    break
        await follower.aclose()
    await server.close()
    assert [f"n{i}" for i in range(1, 201)] == seen
    await handle.kill()


async def test_a_timeout_kills_the_command_with_a_distinct_reason(host: Node) -> None:
    """timeout: the command is stopped and the process fails saying it timed out."""
    handle = await run(host, {"argv": ["sleep", "30"], "timeout": 0.3})
    assert "timed out (killed by SIGTERM)" == handle.snapshot().error
    assert "timeout" == handle.snapshot().state["result"]["reason"]


async def test_missing_or_non_executable_programs_fail_clearly(host: Node, tmp_path: Path) -> None:
    """A program not on PATH, a path that is no file, and a file without x bit: each fails with
    a CommandNotFound naming it; nothing is started."""
    missing = await run(host, {"argv": ["statevisor-no-such-program"]})
    assert str(missing.snapshot().error).startswith("CommandNotFound: 'statevisor-no-such-program': not found on PATH")
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    plain = await run(host, {"argv": [str(script)]})
    assert f"CommandNotFound: '{script}': not executable (mode 644)" == plain.snapshot().error
    nowhere = await run(host, {"argv": ["/nonexistent/bin/x"]})
    assert "CommandNotFound: '/nonexistent/bin/x': no such file" == nowhere.snapshot().error
    assert not (tmp_path / "runs" / JOURNAL).exists(), "nothing was claimed"


async def test_invalid_settings_are_refused_at_spawn_naming_the_key(host: Node, tmp_path: Path) -> None:
    """spawn checks the settings before anything runs: SettingsError names the key, in process
    and through the control socket alike, and nothing is spawned. A process that reaches its
    start with invalid settings anyway (spawned on the bare runtime) fails naming the key too;
    a supervisor's child with invalid settings is refused when it is declared."""
    from supervisor.control import Client, ControlServer

    with pytest.raises(SettingsError) as caught:
        await host.spawn("shell", {"argv": "echo hi"})
    assert ("argv", True) == (caught.value.key, caught.value.problem.startswith("expected a non-empty list"))
    with pytest.raises(SettingsError, match=r"limits\.stack: unknown limit"):
        await host.spawn("shell", {"argv": ["true"], "limits": {"stack": 1}})
    server = ControlServer(host, str(tmp_path / "control.sock"))
    await server.start()
    try:
        async with Client.connect(str(tmp_path / "control.sock")) as client:
            with pytest.raises(SettingsError) as remote:
                await client.spawn("shell", {"argv": ["true"], "cwd": 7})
    finally:
        await server.close()
    assert "cwd" == remote.value.key
    assert [] == host.list()
    handle = host.runtime.spawn(host.machines["shell"], {"argv": "echo hi"})
    await handle.wait(timeout=20)
    assert str(handle.snapshot().error).startswith("invalid settings: argv: expected a non-empty list")
    with pytest.raises(SettingsError, match="argv: expected a non-empty list"):
        ChildSpec("bad", machine=Shell, state={"argv": "echo hi"})  # a supervisor's child: when declared


async def test_a_failing_command_restarts_only_after_the_backoff(tmp_path: Path) -> None:
    """A command that cannot start is failed and restarted by its supervisor only when the
    backoff delay has passed on the clock: no restart storm."""
    clock = ManualClock()
    spec = ChildSpec("broken", machine=Shell, state={"argv": ["statevisor-no-such-program"]})
    root = SupervisorSpec("root", [spec], backoff=Backoff(initial=5.0, maximum=60.0, jitter=0.0))
    host = Node(machines=[Shell(tmp_path)], executors=executors(tmp_path / "runs"), root=root, clock=clock)
    await host.start()
    try:
        await wait_until(lambda: host.root.statistics().pending_restarts == 1)
        first = host.root.child("broken")
        assert isinstance(first, Handle)
        clock.advance(4.9)
        await asyncio.sleep(0.05)
        assert first == host.root.child("broken")
        assert 0 == host.root.restarts
        clock.advance(0.2)
        await wait_until(lambda: host.root.restarts == 1)
    finally:
        await host.shutdown()


async def test_a_flapping_command_exhausts_its_restart_budget(tmp_path: Path) -> None:
    """A command that keeps failing is restarted until the budget is spent; then its
    supervisor gives up (failed) instead of restarting forever."""
    spec = ChildSpec("flapper", machine=Shell, state={"argv": ["sh", "-c", "exit 1"]}, restart=Restart.PERMANENT)
    root = SupervisorSpec(
        "root", [spec], budget=Budget(max_restarts=3, period=60.0), backoff=Backoff(initial=0.01, jitter=0.0)
    )
    host = Node(machines=[Shell(tmp_path)], executors=executors(tmp_path / "runs"), root=root)
    await host.start()
    try:
        await wait_until(lambda: host.root.state is SupervisorState.FAILED, timeout=20)
        assert 3 == host.root.restarts
    finally:
        await host.shutdown()


# --- idempotency and re-attaching ---------------------------------------------------------


def action(action_id: str, argv: list[str], tmp_path: Path) -> TrackedAction:
    from processes.shell import parse

    payload = parse({"argv": argv}).payload()
    payload["stdout"] = str(tmp_path / f"{action_id}.out")
    return TrackedAction(action_id, RUN, payload, "p1")


def gated_action(tmp_path: Path, *, exit_code: int) -> tuple[Path, Path, TrackedAction]:
    """A run action whose command notes that it started (in ``marker``), then waits for
    ``release`` to exist and exits with ``exit_code``."""
    release, marker = tmp_path / "release", tmp_path / "ran"
    argv = ["sh", "-c", f"echo x >> {marker}; while [ ! -e {release} ]; do sleep 0.02; done; exit {exit_code}"]
    return release, marker, action("p1:1:0", argv, tmp_path)


async def attach_then_release(executor: ShellExecutor, act: TrackedAction, release: Path) -> dict[str, Any]:
    """Execute ``act`` on ``executor``, which must attach to its already started command (not
    start it), release the command, and return its result; the executor is closed after."""
    try:
        running = asyncio.ensure_future(executor.execute(act))
        await wait_until(lambda: executor.attached == 1)
        await asyncio.to_thread(release.touch)
        result: dict[str, Any] = await asyncio.wait_for(running, 10)
        return result
    finally:
        await executor.close()


async def test_executing_an_action_id_again_never_reruns_the_command(tmp_path: Path) -> None:
    """The same action id executed twice (a restart re-issues it) returns the first outcome;
    the command ran once."""
    executor = ShellExecutor(tmp_path / "runs")
    marker = tmp_path / "ran"
    act = action("p1:1:0", ["sh", "-c", f"echo x >> {marker}; exit 4"], tmp_path)
    try:
        first = await executor.execute(act)
        second = await executor.execute(act)
    finally:
        await executor.close()
    assert 4 == first["exit_code"] == second["exit_code"]
    assert "x\n" == marker.read_text()


async def test_a_running_command_is_reattached_not_restarted(tmp_path: Path) -> None:
    """A second executor (a restarted daemon) finds the run monitor that outlived the first
    one, attaches to the still-running command, and collects its exit status when it ends."""
    release, marker, act = gated_action(tmp_path, exit_code=7)
    first = ShellExecutor(tmp_path / "runs")
    running = asyncio.ensure_future(first.execute(act))
    await wait_until(lambda: marker.exists())
    running.cancel()  # the daemon went away: the command goes on
    await asyncio.gather(running, return_exceptions=True)
    await first.close()
    second = ShellExecutor(tmp_path / "runs")
    result = await attach_then_release(second, act, release)
    assert 7 == result["exit_code"]
    assert "x\n" == marker.read_text()
    assert 0 == second.spawned
    assert 1 == first.monitor.monitors_started
    assert 0 == second.monitor.monitors_started, "the monitor that started the command was found again"


async def test_a_killed_monitor_loses_no_exit_status_while_the_daemon_lives(tmp_path: Path) -> None:
    """The run monitor is SIGKILLed while a command runs: the monitor's keeper inherits the
    command and records its exit status, which the daemon reads from the next monitor it starts
    (that one also runs the next command)."""
    release, marker, act = gated_action(tmp_path, exit_code=5)
    executor = ShellExecutor(tmp_path / "runs")
    try:
        running = asyncio.ensure_future(executor.execute(act))
        await wait_until(lambda: marker.exists() and executor.spawned == 1)  # the monitor has answered
        monitor = executor.monitor.monitor_pid
        assert monitor is not None
        os.kill(monitor, signal.SIGKILL)
        await wait_until(lambda: start_time(monitor) is None or zombie(monitor))
        release.touch()
        result = await asyncio.wait_for(running, 10)
        again = await executor.execute(action("p1:2:0", ["sh", "-c", "exit 3"], tmp_path))
    finally:
        await executor.close()
    assert 5 == result["exit_code"]
    assert 3 == again["exit_code"]
    assert "x\n" == marker.read_text()
    assert 2 == executor.monitor.monitors_started


class _AnswerLostLink(MonitorLink):
    """Fault injection: the monitor is SIGKILLed right after it starts the first command, and
    its answer is dropped, as if it died before writing it."""

    async def _run_once(
        self, action_id: str, request: dict[str, Any]
    ) -> tuple[dict[str, Any], asyncio.Future[dict[str, Any]]]:
        answer, ended = await super()._run_once(action_id, request)
        if self.monitors_started == 1 and answer["kind"] == "started":
            monitor = self.monitor_pid
            assert monitor is not None
            os.kill(monitor, signal.SIGKILL)
            await wait_until(lambda: start_time(monitor) is None or zombie(monitor))
            ended.cancel()
            raise MonitorLost("injected: the answer was lost with the monitor")
        return answer, ended


async def test_a_monitor_killed_before_it_answers_loses_no_command(tmp_path: Path) -> None:
    """The run monitor starts a command and dies before its answer reaches the daemon: the
    daemon asks the next monitor, which finds the run claimed and started; the daemon attaches
    to the command (never starting it again) and collects its exit status."""
    release, marker, act = gated_action(tmp_path, exit_code=6)
    executor = ShellExecutor(tmp_path / "runs")
    executor.monitor = _AnswerLostLink(executor.runs)
    result = await attach_then_release(executor, act, release)
    assert 6 == result["exit_code"]
    assert "x\n" == marker.read_text(), "started once"
    assert 0 == executor.spawned
    assert 2 == executor.monitor.monitors_started


async def test_the_monitor_exits_once_nothing_runs_and_nobody_is_connected(tmp_path: Path) -> None:
    """After the executor closes with no command running, its monitor exits and is reaped:
    nothing is left behind, not even a zombie."""
    executor = ShellExecutor(tmp_path / "runs")
    assert 0 == (await executor.execute(action("p1:1:0", ["true"], tmp_path)))["exit_code"]
    monitor = executor.monitor.monitor_pid
    assert monitor is not None
    await executor.close()
    assert start_time(monitor) is None, "the monitor is gone and reaped"


async def test_a_monitor_that_outlives_its_keeper_is_reaped_by_the_daemon(tmp_path: Path) -> None:
    """The keeper is SIGKILLed while its monitor lives: the monitor, now the daemon's child
    (a subreaper's), is reaped when it exits, not left a zombie."""
    executor = ShellExecutor(tmp_path / "runs")
    try:
        assert 0 == (await executor.execute(action("p1:1:0", ["true"], tmp_path)))["exit_code"]
        monitor = executor.monitor.monitor_pid
        assert monitor is not None
        fields = stat_fields(monitor)
        assert fields is not None
        keeper = int(fields[1])
        os.kill(keeper, signal.SIGKILL)
        await wait_until(lambda: is_our_child(monitor))
    finally:
        await executor.close()  # nothing runs: the monitor exits
    await wait_until(lambda: start_time(monitor) is None)


async def test_a_bad_frame_does_not_stop_the_monitor(tmp_path: Path) -> None:
    """Garbage on the monitor's socket closes that connection only; the monitor goes on
    starting commands."""
    executor = ShellExecutor(tmp_path / "runs")
    try:
        assert 0 == (await executor.execute(action("p1:1:0", ["true"], tmp_path)))["exit_code"]
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "runs" / ".monitor.sock"))
        writer.write(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # 0xc1: never valid msgpack
        assert b"" == await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert 0 == (await executor.execute(action("p1:2:0", ["true"], tmp_path)))["exit_code"]
    finally:
        await executor.close()
    assert 1 == executor.monitor.monitors_started


async def test_a_reused_pid_is_not_mistaken_for_the_command(tmp_path: Path) -> None:
    """The journal names a pid that now belongs to another process (start time differs): the
    executor does not attach to it; with no exit status left, it says the run was lost. A run
    whose end the journal holds returns that end, without starting or attaching anything."""
    reused, ended = action("p1:1:0", ["true"], tmp_path), action("p1:2:0", ["true"], tmp_path)
    (tmp_path / "runs").mkdir()
    journal = Journal(str(tmp_path / "runs" / JOURNAL))  # as a monitor killed earlier left it
    me = os.getpid()
    ticks = start_time(me)
    assert ticks is not None
    journal.append("claim", reused.id)
    journal.append("started", reused.id, [me, ticks - 1, time.time()])  # our pid, someone else's start time
    journal.append("claim", ended.id)
    journal.append("started", ended.id, [me, ticks - 1, time.time()])
    journal.append("ended", ended.id, {"exit": 5, "user": 0.25, "system": 0.5, "ended": time.time()})
    journal.close()
    executor = ShellExecutor(tmp_path / "runs")
    try:
        with pytest.raises(CommandLost, match="left no exit status"):
            await asyncio.wait_for(executor.execute(reused), 5)
        result = await executor.execute(ended)
    finally:
        await executor.close()
    assert (5, 0.25, 0.5) == (result["exit_code"], result["user_cpu"], result["system_cpu"])
    assert 0 == executor.spawned + executor.attached


class _LateKeeperLink(MonitorLink):
    """The keeper's record of a run's end lands just after the daemon first asks for it."""

    def __init__(self, runs: Path, late: dict[str, Any]) -> None:
        super().__init__(runs)
        self.late: dict[str, Any] | None = late

    async def query(self, action_id: str) -> dict[str, Any]:
        answer = await super().query(action_id)
        if self.late is not None:
            append_ended(str(self.runs / JOURNAL), action_id, self.late)
            self.late = None
        return answer


async def test_an_end_the_keeper_records_late_is_waited_for_and_is_not_a_timeout(tmp_path: Path) -> None:
    """A run whose command ended unwatched (its pid no longer matches), with its end recorded by
    the keeper only after the daemon first asked: the daemon waits for that record and returns
    the exit code, with reason "exited" although the run's timeout passed long ago."""
    from processes.shell import parse

    payload = parse({"argv": ["true"], "timeout": 1}).payload()
    act = TrackedAction("p1:1:0", RUN, payload, "p1")
    runs = (tmp_path / "runs").resolve()
    runs.mkdir()
    journal = Journal(str(runs / JOURNAL))
    ticks = start_time(os.getpid())
    assert ticks is not None
    journal.append("claim", act.id)
    journal.append("started", act.id, [os.getpid(), ticks - 1, time.time() - 100])  # gone: the pid was reused
    journal.close()
    executor = ShellExecutor(runs)
    executor.monitor = _LateKeeperLink(runs, {"exit": 3, "user": 0.0, "system": 0.0, "ended": time.time() - 50})
    try:
        result = await asyncio.wait_for(executor.execute(act), 10)
    finally:
        await executor.close()
    assert (3, "exited") == (result["exit_code"], result["reason"])
    assert executor.monitor.late is None, "recorded only after the first question"
    assert 0 == executor.spawned + executor.attached


async def test_an_interrupted_start_is_never_repeated(tmp_path: Path) -> None:
    """The monitor died after claiming a run but before noting its start: a command that names
    the run in its environment is found and attached to; with none, the run is reported lost
    (it may have run), never started a second time."""
    lost, found = action("p1:1:0", ["true"], tmp_path), action("p1:2:0", ["true"], tmp_path)
    runs = (tmp_path / "runs").resolve()
    runs.mkdir()
    journal = Journal(str(runs / JOURNAL))
    journal.append("claim", lost.id)
    journal.append("claim", found.id)
    journal.close()
    # A plain child that no event loop watches (the executor must be the one to reap it).
    orphan = subprocess.Popen(["sleep", "30"], env={**os.environ, MARKER: marker(str(runs), found.id)})  # noqa: ASYNC220
    executor = ShellExecutor(runs)
    try:
        with pytest.raises(CommandLost, match="whether it ran is unknown"):
            await asyncio.wait_for(executor.execute(lost), 5)
        attached = asyncio.ensure_future(executor.execute(found))
        await wait_until(lambda: executor.attached == 1)
        orphan.terminate()
        result = await asyncio.wait_for(attached, 10)
    finally:
        orphan.kill()
        orphan.wait()
        await executor.close()
    assert "SIGTERM" == result["signal"]
    assert 0 == executor.spawned


def test_the_journal_survives_a_torn_line_and_compacts_forgotten_runs(tmp_path: Path) -> None:
    """A journal whose last line was cut short (the monitor died mid-write) loads every whole
    line and drops the torn one; forgotten runs are dropped from it once it has grown."""
    path = tmp_path / "journal"
    journal = Journal(str(path))
    journal.append("claim", "a")
    journal.append("started", "a", [1, 2, 3.0])
    journal.close()
    with open(path, "ab") as torn:
        torn.write(b'["ended","a",{"exit":')
    again = Journal(str(path))
    assert [1, 2, 3.0] == again.runs["a"].started
    assert again.runs["a"].ended is None
    for index in range(20_000):
        again.append("claim", f"run-{index}")
        again.append("ended", f"run-{index}", {"exit": 0, "user": 0.0, "system": 0.0, "ended": 0.0})
        again.append("forget", f"run-{index}")
    again.close()
    assert path.stat().st_size < 200_000, "compacted: forgotten runs are gone from the file"
    reloaded = Journal(str(path))
    assert ["a"] == list(reloaded.runs)
    reloaded.close()


def test_a_keepers_ended_line_reaches_the_monitor_and_survives_its_rewrite(tmp_path: Path) -> None:
    """A keeper (a second writer) appends the end of a run the monitor saw start: it lists the
    run as started-not-ended before, the monitor takes the end in on refresh, and a rewrite of
    the journal made before the monitor read it keeps it."""
    path = str(tmp_path / "journal")
    journal = Journal(path)
    for run in ("a", "b"):
        journal.append("claim", run)
        journal.append("started", run, [100, 7, 1.0])
    journal.append("ended", "b", {"exit": 0, "user": 0.0, "system": 0.0, "ended": 2.0})
    assert {"a": [100, 7, 1.0]} == started_runs(path)
    append_ended(path, "a", {"exit": 9, "user": 0.5, "system": 0.25, "ended": 3.0})
    assert {} == started_runs(path)
    assert journal.runs["a"].ended is None, "not read yet"
    journal.refresh()
    assert {"exit": 9, "user": 0.5, "system": 0.25, "ended": 3.0} == journal.runs["a"].ended
    journal.append("claim", "c")
    journal.append("started", "c", [101, 8, 1.0])
    append_ended(path, "c", {"exit": 4, "user": 0.0, "system": 0.0, "ended": 3.0})
    for index in range(30_000):  # grow past the rewrite threshold before "c"'s end is read
        journal.append("claim", f"run-{index}")
        journal.append("forget", f"run-{index}")
    journal.close()
    assert os.path.getsize(path) < 1_000_000, "rewritten (1.3 MB were written)"
    reloaded = Journal(path)
    assert {"exit": 4, "user": 0.0, "system": 0.0, "ended": 3.0} == reloaded.runs["c"].ended
    reloaded.close()


async def test_a_fifo_without_a_reader_fails_the_start_instead_of_stalling(host: Node, tmp_path: Path) -> None:
    """stdout into a FIFO nobody reads: the start fails at once, saying so, and the monitor
    goes on starting other commands."""
    fifo = tmp_path / "lonely"
    os.mkfifo(fifo)
    handle = await run(host, {"argv": ["true"], "stdout": str(fifo)})
    assert "setup failed: stdout" == handle.snapshot().error
    assert 0 == (await run(host, {"argv": ["true"]})).result()["exit_code"]


async def test_a_run_is_forgotten_once_the_result_is_durable(host: Node, tmp_path: Path) -> None:
    """After the result's transition is committed, the monitor forgets the run (its journal
    says so); the stdin file given to the command is gone too."""
    handle = await run(host, {"argv": ["cat"], "stdin": "hello\n"})
    assert ["hello"] == handle.result()["stdout_tail"]
    journal = tmp_path / "runs" / JOURNAL
    await wait_until(lambda: f'["forget","{handle.snapshot().state["_run"]}"]' in journal.read_text())
    assert [] == list((tmp_path / "runs").glob(".stdin-*"))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_shell_runs_each_command_once_across_crashes(seed: int) -> None:
    """In simulation, shell processes under repeated crashes: every command runs exactly once
    and every process ends as its simulated exit code says; same seed, same trace."""
    from processes.shell import SimulatedShell
    from supervisor import Simulation

    def once() -> tuple[str, SimulatedShell, dict[str, Lifecycle]]:
        shell = SimulatedShell(exit_codes={0: 3.0, 2: 1.0}, duration=(0.1, 2.0))
        sim = Simulation([Shell("/nonexistent-logs")], seed=seed, executors=shell.executors)
        pids = [sim.spawn(Shell, {"argv": ["job", str(n)]}) for n in range(20)]
        for _ in range(5):
            sim.run(40)
            sim.crash()
        sim.run_until_idle()
        return sim.trace_hash, shell, {pid: sim.lifecycle(pid) for pid in pids}

    trace, shell, ends = once()
    assert 20 == len(shell.runs)
    assert {1} == set(shell.runs.values()), "a command ran twice"
    assert set(ends.values()) <= {Lifecycle.FINISHED, Lifecycle.FAILED}
    assert trace == once()[0]


async def test_a_log_in_a_missing_directory_is_made_and_one_under_a_file_fails_clearly(
    host: Node, tmp_path: Path
) -> None:
    """A log file whose directories do not exist yet gets them made; one whose parent is a
    regular file fails the start with the path and the reason, and nothing else is disturbed."""
    handle = await run(host, {"argv": ["echo", "deep"], "stdout": "new/deeper/out.log"})
    assert ["deep"] == (tmp_path / "logs" / "new" / "deeper" / "out.log").read_text().split()
    assert 0 == handle.result()["exit_code"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    failed = await run(host, {"argv": ["true"], "stdout": str(blocker / "out.log")})
    assert "setup failed: stdout" == failed.snapshot().error
    assert 0 == (await run(host, {"argv": ["true"]})).result()["exit_code"]
