"""The machine model: atomic transitions, effects at commit, phases, determinism."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from supervisor import (
    Cast,
    ConfigurationError,
    Context,
    DiagramError,
    DriveMode,
    Input,
    Lifecycle,
    Machine,
    ManualClock,
    NondeterminismError,
    ProcessFailed,
    Runtime,
    StateTypeError,
    TransitionError,
    UnknownActionType,
    mermaid,
)
from supervisor._core.lifecycle import check_move
from supervisor._errors import IllegalLifecycleMove
from tests.helpers import Recorder, wait_for_snapshot
from tests.machines import Clocky, Counter, Dicey, DoorMachine, Strict, Worker


async def test_raising_transition_leaves_state_actions_and_timers_unchanged() -> None:
    """A transition that mutates, emits an action, arms a timer, changes phase and then raises
    leaves all of them exactly as before; the caller gets the error; the process keeps going."""
    recorder = Recorder()
    runtime = Runtime(executors={"record": recorder})
    handle = runtime.spawn(Counter, {"n": 3})
    before = await wait_for_snapshot(handle, lambda s: s.lifecycle is Lifecycle.RUNNING)
    with pytest.raises(TransitionError) as caught:
        await handle.call("boom")
    assert "ValueError" == caught.value.error_type
    assert "boom after emitting" == caught.value.message
    assert isinstance(caught.value.__cause__, ValueError)
    after = handle.snapshot()
    assert before.state == after.state
    assert "main" == after.phase
    assert () == after.waiting_on
    assert [] == recorder.executed
    assert 0 == handle.statistics().armed_timers
    assert 1 == handle.statistics().transition_errors
    assert 3 == await handle.call("get")
    await handle.kill()


async def test_error_policy_fail_fails_the_process() -> None:
    """With error_policy FAIL a raising transition fails the process (state still rolled back)."""
    runtime = Runtime(executors={"record": Recorder()})
    handle = runtime.spawn(Strict, {"n": 1})
    with pytest.raises(TransitionError):
        await handle.call("boom")
    final = await handle.wait(timeout=5)
    assert Lifecycle.FAILED == final.lifecycle
    assert {"n": 1} == final.state
    assert "boom after emitting" in (final.error or "")
    with pytest.raises(ProcessFailed):
        handle.result()


async def test_non_msgpack_state_is_rejected_at_spawn() -> None:
    """A state that would not survive a checkpoint is refused by spawn, naming the bad path."""
    runtime = Runtime()
    with pytest.raises(StateTypeError, match=r"state\['jobs'\]\[0\]: tuple"):
        runtime.spawn(Counter, {"jobs": [(1, 2)]})
    assert 0 == len(runtime)


async def test_unknown_action_type_fails_the_transition_not_the_runtime() -> None:
    """Emitting an action with no executor raises inside the transition (rolled back), naming it."""
    runtime = Runtime()
    handle = runtime.spawn(Counter)
    with pytest.raises(TransitionError, match="no executor registered for action type 'record'"):
        await handle.call("boom")
    assert UnknownActionType.__name__ == "UnknownActionType"
    await handle.kill()


async def test_tracked_results_come_back_as_inputs_and_untracked_run_once() -> None:
    """Tracked actions run after commit and their results come back keyed by action id; untracked
    actions are executed once and produce no input; failures arrive as ActionFailed."""

    def answer(action: Any) -> Any:
        if action.payload == "bad":
            raise RuntimeError("no luck")
        return action.payload * 2

    work, notify = Recorder(answer), Recorder()
    runtime = Runtime(executors={"work": work, "notify": notify})
    handle = runtime.spawn(Worker)
    await handle.cast(("work", 21))
    await handle.cast(("work", "bad"))
    await handle.cast(("notify", "hello"))
    snapshot = await wait_for_snapshot(
        handle, lambda s: len(s.state.get("done", {})) + len(s.state.get("failed", {})) == 2
    )
    first, second = snapshot.state["issued"]
    assert {first: 42} == snapshot.state["done"]
    assert {second: "RuntimeError: no luck"} == snapshot.state["failed"]
    assert [first, second] == [a.id for a in work.executed]
    assert ["hello"] == [a.payload for a in notify.executed]
    assert first.startswith(handle.pid + ":")
    await handle.kill()


async def test_action_ids_are_deterministic() -> None:
    """Two processes with the same id fed the same inputs issue the same action ids."""
    ids = []
    for _ in range(2):
        runtime = Runtime(executors={"work": Recorder()})
        handle = runtime.spawn(Worker, pid="fixed")
        await handle.cast(("work", 1))
        await handle.cast(("work", 2))
        snapshot = await wait_for_snapshot(handle, lambda s: len(s.state.get("done", {})) == 2)
        ids.append(snapshot.state["issued"])
        await handle.kill()
    assert ids[0] == ids[1]


async def test_check_mode_reports_nondeterministic_transitions() -> None:
    """check_determinism re-runs each transition on a copy; reading the wall clock is caught."""
    runtime = Runtime(check_determinism=True)
    handle = runtime.spawn(Clocky, {"t": 0})
    with pytest.raises(TransitionError) as caught:
        await handle.call("anything")
    assert isinstance(caught.value, NondeterminismError)
    assert {"t": 0} == handle.snapshot().state
    await handle.kill()


async def test_check_mode_accepts_deterministic_transitions_and_ctx_random() -> None:
    """ctx.random is seeded by (pid, version), so check mode accepts it and re-runs agree."""
    rolls = []
    for _ in range(2):
        runtime = Runtime(check_determinism=True)
        handle = runtime.spawn(Dicey, pid="dice")
        for _ in range(5):
            await handle.cast("roll")
        snapshot = await wait_for_snapshot(handle, lambda s: len(s.state.get("rolls", ())) == 6)
        assert 0 == handle.statistics().transition_errors
        rolls.append(snapshot.state["rolls"])
        await handle.kill()
    assert rolls[0] == rolls[1]
    assert 6 == len(rolls[0])  # Started plus five calls
    assert len(set(rolls[0])) > 1


async def test_goto_outside_declared_edges_raises_and_rolls_back() -> None:
    """A phase change not declared in edges raises IllegalPhaseChange; the phase stays."""
    runtime = Runtime()
    handle = runtime.spawn(DoorMachine)
    await handle.cast("open")
    await wait_for_snapshot(handle, lambda s: s.phase == "open")
    await handle.cast("jump")
    snapshot = await wait_for_snapshot(handle, lambda s: handle.statistics().transition_errors == 1)
    assert "open" == snapshot.phase
    await handle.kill()


def test_phase_declarations_are_validated_at_class_definition() -> None:
    """Edges naming an undeclared phase are a ConfigurationError when the class is defined."""
    from tests.machines import Door

    with pytest.raises(ConfigurationError, match="'nowhere'"):

        class Broken(Machine[dict[str, Any]]):
            phases = Door
            edges: ClassVar = {Door.OPEN: {"nowhere": "x"}}


def test_mermaid_draws_declared_phases_and_edges() -> None:
    """mermaid() draws the initial phase, every declared edge with its label, in order."""
    expected = (
        "stateDiagram-v2\n"
        "    [*] --> closed\n"
        "    closed --> open : open\n"
        "    closed --> locked : lock\n"
        "    open --> closed : close / timeout\n"
        "    locked --> closed : unlock\n"
    )
    assert expected == mermaid(DoorMachine)
    with pytest.raises(DiagramError):
        mermaid(Counter)


def test_lifecycle_moves_out_of_terminal_states_raise() -> None:
    """Terminal lifecycles are final: any move out of them raises IllegalLifecycleMove."""
    for terminal in (Lifecycle.FINISHED, Lifecycle.FAILED, Lifecycle.KILLED):
        for target in Lifecycle:
            if target is not terminal:
                with pytest.raises(IllegalLifecycleMove):
                    check_move(terminal, target)
    with pytest.raises(IllegalLifecycleMove):
        check_move(Lifecycle.RUNNING, Lifecycle.CREATED)
    check_move(Lifecycle.CREATED, Lifecycle.RUNNING)


async def test_ctx_now_comes_from_the_runtime_clock() -> None:
    """A transition reads time only as ctx.now, the runtime clock at the transition's start."""

    class Stamp(Machine[dict[str, Any]]):
        async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
            state["now"] = ctx.now

    clock = ManualClock(start=500.0)
    runtime = Runtime(clock=clock)
    handle = runtime.spawn(Stamp, mode=DriveMode.AUTO)
    await wait_for_snapshot(handle, lambda s: s.state.get("now") == 500.0)
    clock.advance(2.5)
    await handle.cast("x")
    await wait_for_snapshot(handle, lambda s: s.state.get("now") == 502.5)
    await handle.kill()


async def test_spawn_validates_its_arguments() -> None:
    """spawn() refuses non-machines and duplicate live names with ConfigurationError."""
    runtime = Runtime()
    with pytest.raises(ConfigurationError, match="needs a Machine"):
        runtime.spawn(object())  # type: ignore[arg-type]
    first = runtime.spawn(Counter, name="only")
    with pytest.raises(ConfigurationError, match="already named 'only'"):
        runtime.spawn(Counter, name="only")
    assert first == runtime.find("only")
    await first.kill()
    with pytest.raises(ConfigurationError, match="kill_grace"):
        Runtime(kill_grace=0)


@pytest.mark.parametrize(
    ("what", "value", "problem"),
    [
        ("id", "", "is empty"),
        ("name", "..", "path part '..'"),
        ("name", "logs/../../etc/cron.d/x", "path part '..'"),
        ("name", "/etc/passwd", "path part ''"),
        ("id", "a//b", "path part ''"),
        ("name", "./here", "path part '.'"),
        ("id", "job\nrm -rf ~", "control character '\\n' at 3"),
        ("name", "nul\x00", "control character '\\x00' at 3"),
        ("name", "é" * 101, "longer than 200 bytes"),
        ("id", 7, "must be a string; got int"),
    ],
)
async def test_ids_and_names_that_would_make_bad_paths_or_lines_are_refused(
    what: str, value: Any, problem: str
) -> None:
    """spawn() refuses an id or name that would leave a log directory, split a script or log
    line, or overflow a file name; the error names which argument, its value and the problem,
    and nothing is spawned."""
    runtime = Runtime()
    arguments = {"pid": value} if what == "id" else {"name": value}
    with pytest.raises(ConfigurationError) as caught:
        runtime.spawn(Counter, **arguments)
    assert f"process {what}" in str(caught.value)
    assert problem in str(caught.value)
    assert [] == runtime.handles()


async def test_ids_and_names_may_be_paths_with_any_printable_text() -> None:
    """A supervisor path (root/web), spaces, non-ASCII text and dotted names are all valid."""
    runtime = Runtime()
    handles = [
        runtime.spawn(Counter, pid="root/web", name="root/web"),
        runtime.spawn(Counter, name="nightly backup"),
        runtime.spawn(Counter, name="données/été"),
        runtime.spawn(Counter, pid="...", name="v1.2"),
        runtime.spawn(Counter, name="é" * 100),
    ]
    assert ["root/web", "nightly backup", "données/été", "v1.2", "é" * 100] == [h.name for h in handles]
    for handle in handles:
        await handle.kill()


async def test_finish_and_fail_end_the_process() -> None:
    """ctx.finish sets the result; ctx.fail fails with the reason; both are terminal."""
    runtime = Runtime()
    finishing = runtime.spawn(Counter, {"n": 7})
    assert "bye" == await finishing.call("finish")
    assert Lifecycle.FINISHED == (await finishing.wait(timeout=5)).lifecycle
    assert 7 == finishing.result()
    failing = runtime.spawn(Counter)
    await failing.cast(0)
    with pytest.raises(ProcessFailed, match="asked to fail"):
        await failing.call("fail")
    assert "asked to fail" == (await failing.wait(timeout=5)).error
    assert 0 == len(runtime)
    stats = runtime.statistics()
    assert (1, 1) == (stats.finished, stats.failed)


async def test_cast_message_type_does_not_matter_to_unmatched_transitions() -> None:
    """Inputs a machine does not match are consumed without error (a transition may ignore)."""
    runtime = Runtime()
    handle = runtime.spawn(Counter)
    await handle.cast({"unexpected": True})
    assert 0 == await handle.call("get")
    assert 0 == handle.statistics().transition_errors
    await handle.kill()


def test_cast_input_is_frozen() -> None:
    """Inputs are immutable records (a transition cannot alter what it was given)."""
    cast = Cast(1)
    with pytest.raises(AttributeError):
        cast.message = 2  # type: ignore[misc]
