"""Submission claims: at most one submit command per job name, however many attempts reach the host.

A submission whose connection broke has an unknown outcome, and it can stay unknown for a
while: a host stuck in I/O runs the buffered command after the daemon gave up on the
connection, reconnected and asked the scheduler for the job (measured: sshd frozen for 12 s
while 20 jobs were submitted; two jobs landed after the search for them, and were submitted
again). Asking first cannot settle that, so the host settles it.

Every submission runs through a tiny POSIX ``sh`` wrapper (a shell we chose, with the submit
argv passed as positional parameters, never re-split). The wrapper first creates the claim file
``<work_dir>/<name>.claim`` with O_EXCL (``set -C``: atomic on local file systems and NFSv3+)
holding its node name and pid, and runs the submit command only if it created it. It then copies
the job script from stdin to ``<name>.sh`` up to an end line sent after it: a script cut short
by a broken connection (sbatch reads what arrived; "Batch script is empty!" was seen, and a
script cut mid-way would run truncated) frees the claim and submits nothing (exit 74), and the
attempt is retried. The submit command reads the verified copy. The command's
stderr, then an end mark, its exit status and its stdout go to ``<name>.submitted``: the
*outcome*, complete once the end mark is there; the wrapper prints it, so an attempt reads its
own outcome and an earlier one's the same way. An attempt that finds the claim taken submits
nothing (exit 75) and probes the claim instead, until one of these:

* a complete outcome: the earlier attempt's submit ended, and its outcome is taken as this one's.
* ``running``: its wrapper is alive on this node: probe again shortly.
* ``dead``: it died after claiming and before completing its outcome. The scheduler is asked
  for the job by name; if it is not there, nothing landed and the claim is freed for a new try.
* ``elsewhere`` (claimed on another login node behind the same address: its pid cannot be
  checked from here) and ``unclaimed`` (the owner has not written its name yet): treated as
  running until :data:`SETTLE_SECONDS` have passed, then as dead.
* ``free``: nobody holds it (it was freed meanwhile): claim again.

Cost: no process but the submit command itself and the shell (``read``, ``printf`` and the
redirections are builtins).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SETTLE_SECONDS = 120.0
"""How long a claim whose owner cannot be checked is waited on before it is taken as dead."""
PROBE_INTERVAL = 1.0
CLAIMED_EXIT = 75  # EX_TEMPFAIL: what the wrapper exits with when another attempt holds the claim
CLAIMED_MARK = "statevisor: submission already claimed"
INCOMPLETE_EXIT = 74  # EX_IOERR: the job script did not arrive whole; nothing was submitted
INCOMPLETE_MARK = "statevisor: the job script arrived incomplete"
SCRIPT_END = "# --- statevisor: end of the job script ---"

END_MARK = "--- statevisor: submit outcome ---"
# $$ is the wrapper shell's pid, inside the ( ) too. /proc's node name avoids running hostname.
_NODE = "read -r node 2>/dev/null < /proc/sys/kernel/hostname || node=$(hostname)"
_PRINT_OUTCOME = 'while IFS= read -r line || [ -n "$line" ]; do printf \'%s\\n\' "$line"; done < "$result"'

SUBMIT_WRAPPER = f"""claim=$1; result=$2; script=$3; shift 3
{_NODE}
if ! (set -C; printf '%s %s\\n' "$node" "$$" > "$claim") 2>/dev/null; then
    if [ -e "$claim" ]; then echo "{CLAIMED_MARK}: $claim" >&2; exit {CLAIMED_EXIT}; fi
    echo "statevisor: cannot create the claim file $claim (is the work directory writable?)" >&2
    exit 1
fi
complete=
while IFS= read -r line || [ -n "$line" ]; do
    if [ "$line" = "{SCRIPT_END}" ]; then complete=1; break; fi
    printf '%s\\n' "$line"
done > "$script"
if [ -z "$complete" ]; then
    rm -f -- "$claim" "$script"
    echo "{INCOMPLETE_MARK}: $script" >&2
    exit {INCOMPLETE_EXIT}
fi
out=$("$@" < "$script" 2>"$result"); rc=$?
printf '\\n%s\\n%s\\n%s\\n' "{END_MARK}" "$rc" "$out" >> "$result"
{_PRINT_OUTCOME}
"""

# A dead owner's outcome is printed too: it completes its outcome before it exits.
PROBE = f"""claim=$1; result=$2
if ! [ -e "$claim" ]; then echo free; exit 0; fi
owner=; pid=
read -r owner pid < "$claim" 2>/dev/null
if [ -z "$pid" ]; then echo unclaimed; exit 0; fi
{_NODE}
if [ "$owner" != "$node" ]; then
    echo elsewhere "$owner"
elif kill -0 "$pid" 2>/dev/null; then
    echo running; exit 0
else
    echo dead
fi
if [ -f "$result" ]; then {_PRINT_OUTCOME}; fi
"""


class Verdict(enum.StrEnum):
    RUNNING = "running"
    DEAD = "dead"
    ELSEWHERE = "elsewhere"
    UNCLAIMED = "unclaimed"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a claimed submit command did: complete once the wrapper wrote its end mark."""

    exit_status: int
    stdout: str
    stderr: str


@dataclass(frozen=True, slots=True)
class ClaimPaths:
    claim: str
    done: str
    script: str

    @classmethod
    def of(cls, work_dir: str, name: str) -> ClaimPaths:
        return cls(f"{work_dir}/{name}.claim", f"{work_dir}/{name}.submitted", f"{work_dir}/{name}.sh")

    def submit_argv(self, submit: list[str]) -> list[str]:
        """``submit`` run under the claim; stdin: :func:`script_input`."""
        return ["sh", "-c", SUBMIT_WRAPPER, "sv-submit", self.claim, self.done, self.script, *submit]

    def probe_argv(self) -> list[str]:
        return ["sh", "-c", PROBE, "sv-probe", self.claim, self.done]

    def free_argv(self) -> list[str]:
        return ["rm", "-f", "--", self.claim, self.done, self.script]


def script_input(script: str) -> str:
    """What the wrapper reads on stdin: the script (ending in a newline), then the end line."""
    return f"{script}{'' if script.endswith(chr(10)) else chr(10)}{SCRIPT_END}\n"


def claimed(exit_status: int | None, stderr: str) -> bool:
    """Whether a wrapped submit found the claim taken (and so submitted nothing)."""
    return exit_status == CLAIMED_EXIT and CLAIMED_MARK in stderr


def incomplete(exit_status: int | None, stderr: str) -> bool:
    """Whether a wrapped submit got its script cut short (and so submitted nothing)."""
    return exit_status == INCOMPLETE_EXIT and INCOMPLETE_MARK in stderr


def parse_outcome(text: str) -> Outcome | None:
    """The outcome in ``text`` (the wrapper's output, or a probe's after its verdict line);
    None when it is not complete."""
    lines = text.split("\n")
    marks = [i for i, line in enumerate(lines) if line == END_MARK]
    if not marks or marks[-1] + 1 >= len(lines) or not lines[marks[-1] + 1].strip().isdigit():
        return None
    end = marks[-1]
    stdout = "\n".join(lines[end + 2 :]).strip("\n")
    return Outcome(int(lines[end + 1]), stdout, "\n".join(lines[:end]).strip("\n"))


def parse_probe(stdout: str) -> tuple[Verdict, Outcome | None]:
    """The probe's verdict on the claim's owner, and the owner's outcome if it is complete."""
    first, _, rest = stdout.partition("\n")
    word = first.split()[0] if first.split() else ""
    try:
        verdict = Verdict(word)
    except ValueError:
        raise ValueError(f"the claim probe printed {stdout[:200]!r}") from None
    return verdict, parse_outcome(rest)
