"""Submission claims (processes/batch/_claim.py): the wrapper and probe scripts run by the real
``sh`` here, with a stand-in submit command that records every time it runs."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from processes.batch._claim import (
    ClaimPaths,
    Outcome,
    Verdict,
    claimed,
    incomplete,
    parse_outcome,
    parse_probe,
    script_input,
)
from tests.test_daemon import wait_for


def submit_command(tmp_path: Path, *, exit_status: int = 0, block: Path | None = None) -> list[str]:
    """A stand-in for sbatch: reads the script on stdin, records that it ran, prints a job id
    and a warning on stderr; with ``block``, waits until that file exists first."""
    ran = tmp_path / "ran"
    wait = f'while ! [ -e "{block}" ]; do sleep 0.05; done; ' if block else ""
    script = f'{wait}cat > /dev/null; echo x >> "{ran}"; echo "warning: be nice" >&2; echo 4242; exit {exit_status}'
    return ["sh", "-c", script]


SCRIPT = "#!/bin/sh\necho 'a \\\\ backslash' \"$HOME\"\n  indented\t\nno newline at the end"


def run(argv: list[str], stdin: str = script_input(SCRIPT)) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)


def start(argv: list[str]) -> subprocess.Popen[bytes]:
    """A wrapper in the background, its script already sent."""
    owner = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
    assert owner.stdin is not None
    owner.stdin.write(script_input(SCRIPT).encode())
    owner.stdin.close()
    return owner


def runs(tmp_path: Path) -> int:
    ran = tmp_path / "ran"
    return len(ran.read_text().splitlines()) if ran.exists() else 0


def test_the_first_attempt_submits_and_prints_its_outcome(tmp_path: Path) -> None:
    """The wrapper claims, runs the submit command once with the script on stdin, and prints
    its outcome (exit status, stdout, stderr) in the form parse_outcome reads."""
    paths = ClaimPaths.of(str(tmp_path), "sv-1")
    done = run(paths.submit_argv(submit_command(tmp_path)))
    assert 0 == done.returncode, done.stderr
    assert Outcome(0, "4242", "warning: be nice") == parse_outcome(done.stdout)
    assert 1 == runs(tmp_path)
    assert SCRIPT + "\n" == (tmp_path / "sv-1.sh").read_text()  # what the submit command read
    node, pid = (tmp_path / "sv-1.claim").read_text().split()
    assert node == os.uname().nodename
    assert pid.isdigit()


def test_a_second_attempt_submits_nothing_and_the_probe_gives_the_first_ones_outcome(tmp_path: Path) -> None:
    """Once claimed, any further attempt exits 75 with the claimed mark and runs nothing; the
    probe finds the owner gone and hands over its complete outcome, refusals included."""
    paths = ClaimPaths.of(str(tmp_path), "sv-2")
    run(paths.submit_argv(submit_command(tmp_path, exit_status=1)))
    again = run(paths.submit_argv(submit_command(tmp_path)))
    assert claimed(again.returncode, again.stderr), again
    assert 1 == runs(tmp_path)
    verdict, outcome = parse_probe(run(paths.probe_argv()).stdout)
    assert (Verdict.DEAD, Outcome(1, "4242", "warning: be nice")) == (verdict, outcome)


def test_the_probe_sees_a_running_owner_then_its_outcome(tmp_path: Path) -> None:
    """While the owner's submit command runs, the probe says running (no outcome); when it
    ends, the probe gives its outcome."""
    paths = ClaimPaths.of(str(tmp_path), "sv-3")
    go = tmp_path / "go"
    owner = start(paths.submit_argv(submit_command(tmp_path, block=go)))
    try:
        wait_for(lambda: (tmp_path / "sv-3.claim").exists() and (tmp_path / "sv-3.claim").read_text() != "")
        assert (Verdict.RUNNING, None) == parse_probe(run(paths.probe_argv()).stdout)
        assert claimed(*_status(run(paths.submit_argv(submit_command(tmp_path)))))
        go.touch()
        assert owner.wait(timeout=30) == 0
    finally:
        owner.kill()
    assert parse_probe(run(paths.probe_argv()).stdout)[1] == Outcome(0, "4242", "warning: be nice")
    assert 1 == runs(tmp_path)


def _status(done: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    return done.returncode, done.stderr


def test_an_owner_killed_mid_submit_is_dead_without_an_outcome_and_free_frees_it(tmp_path: Path) -> None:
    """An owner SIGKILLed while its submit command runs: the probe says dead, with no outcome
    (the executor then asks the scheduler by name); freeing the claim lets the next attempt
    submit."""
    paths = ClaimPaths.of(str(tmp_path), "sv-4")
    owner = start(paths.submit_argv(submit_command(tmp_path, block=tmp_path / "never")))
    try:
        wait_for(lambda: (tmp_path / "sv-4.claim").exists() and (tmp_path / "sv-4.claim").read_text() != "")
    finally:
        os.killpg(owner.pid, signal.SIGKILL)
        owner.wait(timeout=30)
    assert (Verdict.DEAD, None) == parse_probe(run(paths.probe_argv()).stdout)
    assert 0 == run(paths.free_argv()).returncode
    assert (Verdict.FREE, None) == parse_probe(run(paths.probe_argv()).stdout)
    assert parse_outcome(run(paths.submit_argv(submit_command(tmp_path))).stdout) is not None
    assert 1 == runs(tmp_path)


@pytest.mark.parametrize(
    ("content", "verdict"),
    [("", Verdict.UNCLAIMED), ("login2.example.org 4711\n", Verdict.ELSEWHERE)],
)
def test_claims_whose_owner_cannot_be_checked(tmp_path: Path, content: str, verdict: Verdict) -> None:
    """A claim file still empty (its owner between creating and writing it) is unclaimed; one
    taken on another node is elsewhere: both are waited on for a while, never assumed dead."""
    paths = ClaimPaths.of(str(tmp_path), "sv-5")
    Path(paths.claim).write_text(content)
    assert (verdict, None) == parse_probe(run(paths.probe_argv()).stdout)


def test_an_unwritable_work_directory_is_an_error_not_a_claim(tmp_path: Path) -> None:
    """A claim file that cannot be created (missing work directory) fails the wrapper with a
    message naming the file; it is not taken for another attempt's claim."""
    paths = ClaimPaths.of(str(tmp_path / "missing"), "sv-6")
    done = run(paths.submit_argv(submit_command(tmp_path)))
    assert not claimed(done.returncode, done.stderr)
    assert 1 == done.returncode
    assert f"cannot create the claim file {paths.claim}" in done.stderr
    assert parse_outcome(done.stdout) is None
    assert 0 == runs(tmp_path)


def test_a_script_cut_short_submits_nothing_and_frees_its_claim(tmp_path: Path) -> None:
    """A script whose end line never arrives (the connection broke while it was sent): the
    wrapper exits 74 with its mark, runs nothing, and leaves no claim behind."""
    paths = ClaimPaths.of(str(tmp_path), "sv-8")
    cut = script_input(SCRIPT)[:-10]
    done = run(paths.submit_argv(submit_command(tmp_path)), stdin=cut)
    assert incomplete(done.returncode, done.stderr), done
    assert 0 == runs(tmp_path)
    assert (Verdict.FREE, None) == parse_probe(run(paths.probe_argv()).stdout)


def test_a_cut_off_outcome_is_not_complete() -> None:
    """An outcome without its end mark, or without an exit status after it, is not complete."""
    assert parse_outcome("warning\n") is None
    assert parse_outcome("--- statevisor: submit outcome ---\n") is None
    with pytest.raises(ValueError, match="the claim probe printed"):
        parse_probe("what\n")


def test_many_attempts_racing_submit_once(tmp_path: Path) -> None:
    """Twenty wrappers started at once for the same name: exactly one runs the submit command;
    the others all report the claim taken."""
    paths = ClaimPaths.of(str(tmp_path), "sv-7")
    argv = paths.submit_argv(submit_command(tmp_path))
    racers = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(20)
    ]
    results = [(p.communicate(script_input(SCRIPT), timeout=30)[1], p.returncode) for p in racers]
    assert 1 == runs(tmp_path)
    assert 19 == sum(1 for err, status in results if claimed(status, err))
