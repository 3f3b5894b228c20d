"""Supervisors: strategies, restart types, budget and escalation, backoff, start and stop order."""

from __future__ import annotations

import re
from typing import Any

import pytest
from structlog.testing import capture_logs

from supervisor import (
    Backoff,
    Budget,
    Call,
    ChildSpec,
    ConfigurationError,
    Context,
    Control,
    Handle,
    Input,
    Machine,
    ManualClock,
    Node,
    ProcessNotFound,
    Restart,
    Strategy,
    Supervisor,
    SupervisorSpec,
    SupervisorState,
)
from tests.helpers import sqlite_store, wait_until

EVENTS: list[str] = []


class Service(Machine[dict[str, Any]]):
    """Logs its start; calls "crash" fail it, "done" finishes it."""

    kind = "service"

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                EVENTS.append(f"start {state['name']}")
            case Call("crash"):
                ctx.reply(input, "crashing")
                ctx.fail("crashed on request")
            case Call("done"):
                ctx.reply(input, "done")
                ctx.finish()


def spec(name: str, **options: Any) -> ChildSpec:
    return ChildSpec(name, machine=Service, state={"name": name}, **options)


NO_JITTER = Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.0, reset_after=1000.0)


async def started(strategy: Strategy, children: list[ChildSpec], **options: Any) -> tuple[Node, ManualClock]:
    EVENTS.clear()
    clock = ManualClock()
    root = SupervisorSpec("root", children, strategy=strategy, backoff=NO_JITTER, **options)
    host = Node(root=root, clock=clock, kill_grace=1.0)
    await host.start()
    return host, clock


def pid_of(host: Node, name: str) -> str:
    child = host.root.child(name)
    assert isinstance(child, Handle)
    return child.pid


async def crash(host: Node, name: str, *, supervisor: Supervisor | None = None, restarts: bool = True) -> None:
    """Crash a child and wait until its supervisor has decided (a restart is scheduled)."""
    owner = supervisor or host.root
    child = owner.child(name)
    assert isinstance(child, Handle)
    before = owner.statistics().pending_restarts
    await child.call("crash")
    await child.wait(timeout=5)
    if restarts:
        await wait_until(lambda: owner.statistics().pending_restarts > before)


async def restarted(host: Node, name: str, old_pid: str) -> None:
    """Wait until `name` runs under a new pid and has handled its start input (which is what
    appends to EVENTS): a new handle alone does not mean the start transition has run."""

    def handled_start() -> bool:
        child = host.root.child(name)
        if not isinstance(child, Handle) or child.pid == old_pid or child.done():
            return False
        return child.statistics().transitions >= 1

    await wait_until(handled_start)


async def test_one_for_one_restarts_only_the_failed_child_after_its_backoff() -> None:
    """one_for_one: the failed child comes back (new pid) once the backoff delay has passed on
    the clock; its siblings keep their pids."""
    host, clock = await started(Strategy.ONE_FOR_ONE, [spec("a"), spec("b")])
    a, b = pid_of(host, "a"), pid_of(host, "b")
    await crash(host, "a")
    clock.advance(0.99)
    assert a == pid_of(host, "a")
    clock.advance(0.02)
    await restarted(host, "a", a)
    assert b == pid_of(host, "b")
    assert ["start a", "start b", "start a"] == EVENTS
    await host.root.stop()


async def test_one_for_all_stops_in_reverse_and_starts_in_order() -> None:
    """one_for_all: every child is stopped (reverse start order) and started again in order."""
    host, clock = await started(Strategy.ONE_FOR_ALL, [spec("a"), spec("b"), spec("c")])
    old = {n: pid_of(host, n) for n in "abc"}
    await crash(host, "b")
    clock.advance(1.0)
    for name in "abc":
        await restarted(host, name, old[name])
    assert ["start a", "start b", "start c", "start a", "start b", "start c"] == EVENTS
    assert 3 == host.root.restarts
    await host.root.stop()


async def test_rest_for_one_restarts_the_child_and_those_after_it() -> None:
    """rest_for_one: the failed child and every child started after it restart; earlier ones stay."""
    host, clock = await started(Strategy.REST_FOR_ONE, [spec("a"), spec("b"), spec("c")])
    old = {n: pid_of(host, n) for n in "abc"}
    await crash(host, "b")
    clock.advance(1.0)
    await restarted(host, "b", old["b"])
    await restarted(host, "c", old["c"])
    assert old["a"] == pid_of(host, "a")
    assert ["start a", "start b", "start c", "start b", "start c"] == EVENTS
    await host.root.stop()


async def test_restart_types_under_a_supervisor() -> None:
    """A transient child that finishes normally stays down; one that fails restarts; a temporary
    child never restarts."""
    host, clock = await started(
        Strategy.ONE_FOR_ONE,
        [
            spec("t", restart=Restart.TRANSIENT),
            spec("f", restart=Restart.TRANSIENT),
            spec("x", restart=Restart.TEMPORARY),
        ],
    )
    t, f = pid_of(host, "t"), pid_of(host, "f")
    done = host.root.child("t")
    assert isinstance(done, Handle)
    await done.call("done")
    await crash(host, "f")
    await crash(host, "x", restarts=False)
    clock.advance(10)
    await restarted(host, "f", f)
    assert t == pid_of(host, "t")
    assert host.root.child("t").done()  # type: ignore[union-attr]
    assert host.root.child("x").done()  # type: ignore[union-attr]
    await host.root.stop()


async def test_a_child_stopped_on_purpose_is_never_restarted() -> None:
    """Killing a permanent child through its handle, or stop_child, is on purpose: no restart."""
    host, clock = await started(Strategy.ONE_FOR_ALL, [spec("a"), spec("b")])
    a = pid_of(host, "a")
    child = host.root.child("a")
    assert isinstance(child, Handle)
    await host.root.stop_child("a")
    clock.advance(100)
    await wait_until(lambda: len(EVENTS) == 2)
    assert a == pid_of(host, "a")
    assert child.done()
    assert ["start a", "start b"] == EVENTS
    await host.root.start_child("a")
    assert a != pid_of(host, "a")
    await host.root.stop()


async def test_backoff_grows_between_consecutive_restarts() -> None:
    """Consecutive restarts of a flapping child wait 1 s, 2 s, 4 s... on the clock."""
    host, clock = await started(Strategy.ONE_FOR_ONE, [spec("a")], budget=Budget(max_restarts=10, period=1000))
    for delay in (1.0, 2.0, 4.0):
        pid = pid_of(host, "a")
        await crash(host, "a")
        clock.advance(delay - 0.01)
        assert pid == pid_of(host, "a")
        clock.advance(0.01)
        await restarted(host, "a", pid)
    await host.root.stop()


async def test_a_child_with_its_own_backoff_waits_its_own_delays() -> None:
    """A child's own backoff replaces its supervisor's for that child only: it waits 5 s, a
    sibling without one waits the supervisor's 1 s."""
    own = Backoff(initial=5.0, maximum=50.0, multiplier=2.0, jitter=0.0, reset_after=1000.0)
    host, clock = await started(Strategy.ONE_FOR_ONE, [spec("slow", backoff=own), spec("fast")])
    slow, fast = pid_of(host, "slow"), pid_of(host, "fast")
    await crash(host, "slow")
    await crash(host, "fast")
    clock.advance(1.0)
    await restarted(host, "fast", fast)
    clock.advance(3.99)
    assert slow == pid_of(host, "slow")
    clock.advance(0.01)
    await restarted(host, "slow", slow)
    await host.root.stop()


async def test_a_child_past_its_own_budget_is_given_up_and_its_siblings_go_on() -> None:
    """A child past its own restart budget stays down (given up, counted in statistics), the
    supervisor does not escalate and the sibling keeps running; start_child brings the child
    back with a fresh budget."""
    host, clock = await started(
        Strategy.ONE_FOR_ONE,
        [spec("flaky", budget=Budget(max_restarts=1, period=100)), spec("steady")],
        budget=Budget(max_restarts=10, period=100),
    )
    steady = pid_of(host, "steady")
    first = pid_of(host, "flaky")
    await crash(host, "flaky")
    clock.advance(1.0)
    await restarted(host, "flaky", first)
    await crash(host, "flaky", restarts=False)
    await wait_until(lambda: host.root.statistics().given_up == 1)
    clock.advance(100)
    assert (0, 1) == (host.root.statistics().pending_restarts, host.root.statistics().alive)
    assert SupervisorState.RUNNING == host.root.state
    assert steady == pid_of(host, "steady")
    assert repr(host.root).endswith("1/2 children alive, 1 restarts, 1 given up>")
    with pytest.raises(ProcessNotFound):
        await host.root.start_child("nobody")
    gone = pid_of(host, "flaky")
    await host.root.start_child("flaky")
    assert gone != pid_of(host, "flaky")
    assert 0 == host.root.statistics().given_up
    await crash(host, "flaky")  # the fresh budget allows a restart again
    await host.root.stop()


async def test_exceeding_the_budget_escalates_to_the_parent() -> None:
    """A child supervisor whose restarts exceed its budget stops its children and fails; the
    parent restarts it as a whole under its own policy. The host counts every restart of the
    tree (the one inside the failed supervisor too, which went with it)."""
    inner = SupervisorSpec("inner", [spec("w")], budget=Budget(max_restarts=1, period=100), backoff=NO_JITTER)
    host, clock = await started(Strategy.ONE_FOR_ONE, [ChildSpec("inner", supervisor=inner)])
    sub = host.root.child("inner")
    assert isinstance(sub, Supervisor)
    first = sub.child("w")
    assert isinstance(first, Handle)
    await crash(host, "w", supervisor=sub)
    clock.advance(1.0)
    await wait_until(lambda: sub.child("w") != first and not sub.child("w").done())  # type: ignore[union-attr]
    second = sub.child("w")
    assert isinstance(second, Handle)
    await second.call("crash")
    assert SupervisorState.FAILED == await sub.wait_ended()
    await wait_until(lambda: host.root.statistics().pending_restarts == 1)
    clock.advance(1.0)
    await wait_until(lambda: host.root.child("inner") is not sub)
    replacement = host.root.child("inner")
    assert isinstance(replacement, Supervisor)
    assert SupervisorState.RUNNING == replacement.state
    # The replacement spawned a third w; its first transition (which records the start) runs
    # on its own task, so it may still be on its way when the supervisor reports RUNNING.
    await wait_until(lambda: len(EVENTS) == 3)
    assert ["start w", "start w", "start w"] == EVENTS
    assert (1, 0, 2) == (host.root.restarts, replacement.restarts, host.summary().restarts)
    await host.root.stop()


async def test_dependencies_start_first_and_stop_last() -> None:
    """A child starts after the children it depends on have committed their start; stopping
    goes in reverse order."""
    host, _ = await started(
        Strategy.ONE_FOR_ONE,
        [spec("web", depends_on=("db", "cache")), spec("cache", depends_on=("db",)), spec("db")],
    )
    assert ["start db", "start cache", "start web"] == EVENTS
    stopped = _Terminations()
    host.runtime.observers.append(stopped)
    await host.root.stop()
    assert ["root/web", "root/cache", "root/db"] == stopped.names
    assert SupervisorState.STOPPED == host.root.state


class _Terminations:
    """A runtime observer that records the names of processes as they end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def transition_error(self, process: Any) -> None:
        return None

    def action_done(self, process: Any, action: Any, seconds: float, ok: bool) -> None:
        return None

    def terminated(self, process: Any) -> None:
        self.names.append(process.name)


async def test_repr_shows_state_and_counts() -> None:
    """A supervisor's repr names its path, state, strategy, live children and restarts."""
    host, _ = await started(Strategy.REST_FOR_ONE, [spec("a"), spec("b")])
    assert "<Supervisor root running rest_for_one: 2/2 children alive, 0 restarts>" == repr(host.root)
    await host.root.stop()


@pytest.mark.parametrize("name", ["", "web/api", "..", "tab\there"])
def test_child_and_supervisor_names_are_one_path_part_checked_when_declared(name: str) -> None:
    """A child's or supervisor's name becomes one part of a path (root/web), so one with '/',
    nothing, '..' or a control character is refused where it is declared, naming it."""
    with pytest.raises(ConfigurationError, match=re.escape(repr(name))):
        ChildSpec(name, machine=Service)
    with pytest.raises(ConfigurationError, match=re.escape(repr(name))):
        SupervisorSpec(name)


async def test_a_restart_whose_start_fails_is_retried_with_backoff_until_it_succeeds(tmp_path: Any) -> None:
    """A restart that cannot start its child (the store is full, so the new process cannot be
    checkpointed) is logged and counted as a failed run: it is tried again after the next
    backoff (within the budget) instead of being left undone for good; once the store has room
    the child runs again."""
    import sqlite3

    from structlog.testing import capture_logs

    EVENTS.clear()
    clock = ManualClock()
    db = tmp_path / "s.db"
    child = ChildSpec("a", machine=Service, state={"name": "a", "pad": "x" * 200_000})
    host = Node(root=SupervisorSpec("root", [child], backoff=NO_JITTER), clock=clock, kill_grace=1.0, store=str(db))
    await host.start()
    assert host.store is not None
    old = pid_of(host, "a")
    with capture_logs() as logged:
        await crash(host, "a")
        sqlite_store(host).max_page_count = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
        clock.advance(1.0)  # the first restart: its spawn cannot be written
        await wait_until(lambda: any(e["event"] == "child_start_failed" for e in logged))
        await wait_until(lambda: host.root.statistics().pending_restarts == 1)
    failed = next(e for e in logged if e["event"] == "child_start_failed")
    assert "a" == failed["child"]
    assert "full" in failed["error"]
    assert old == pid_of(host, "a")  # not replaced by a process that was never written
    sqlite_store(host).max_page_count = 1_000_000
    clock.advance(2.0)  # the second try, after a doubled backoff
    await restarted(host, "a", old)
    assert ["start a", "start a"] == EVENTS
    assert 2 == host.root.restarts
    await host.shutdown()


async def test_a_supervisor_whose_restart_breaks_unexpectedly_fails_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart that raises something no start should (a bug) does not leave the supervisor
    running with a child it will never restart: the error is logged, the supervisor stops its
    children and fails, so its parent (or the operator, for the root) sees it."""
    from structlog.testing import capture_logs

    host, clock = await started(Strategy.ONE_FOR_ONE, [spec("a"), spec("b")])
    await crash(host, "a")

    async def broken_spawn(*args: Any, **kwargs: Any) -> Handle:
        raise RuntimeError("a bug in spawning")

    monkeypatch.setattr(host, "spawn", broken_spawn)
    with capture_logs() as logged:
        clock.advance(1.0)
        await wait_until(lambda: host.root.state is SupervisorState.FAILED)
    failed = [e for e in logged if e["event"] == "supervisor_task_failed"]
    assert 1 == len(failed)
    assert "a bug in spawning" in failed[0]["error"]
    assert "Supervisor._restart" == failed[0]["task"]
    child = host.root.child("b")
    assert isinstance(child, Handle)
    assert child.done()  # stopped with its failed supervisor
    await host.shutdown()


async def test_a_supervised_process_killed_by_an_operator_stays_down() -> None:
    """A kill is on purpose, whoever asks: a permanent child killed through its handle (as the
    CLI's kill does) is not restarted, and its supervisor counts no restart; its siblings run."""
    host, _ = await started(Strategy.ONE_FOR_ALL, [spec("a"), spec("b")])
    victim = host.root.child("a")
    assert isinstance(victim, Handle)
    with capture_logs() as logged:
        await victim.kill("an operator's kill")
        await wait_until(lambda: any(e["event"] in ("child_ended", "child_restarting") for e in logged))
    assert ["child_ended"] == [e["event"] for e in logged if e["event"] in ("child_ended", "child_restarting")]
    stats = host.root.statistics()
    assert (0, 0, 1) == (stats.restarts, stats.pending_restarts, stats.alive)
    sibling = host.root.child("b")
    assert isinstance(sibling, Handle)
    assert not sibling.done()
    await host.root.stop()
