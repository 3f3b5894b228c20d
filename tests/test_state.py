"""The journaled state tree: rollback, swapping, msgpack validation."""

from __future__ import annotations

import threading
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import StateMutationError, StateTypeError
from supervisor._core.state import Journal, TrackedDict, TrackedList, check_value, new_state, pack, unpack


class Level(IntEnum):
    HIGH = 1


def make(value: dict[str, Any]) -> tuple[TrackedDict, Journal]:
    journal = Journal()
    return new_state(value, journal), journal


def test_rollback_restores_nested_dicts_and_lists() -> None:
    """Every kind of mutation inside a transaction is undone by rollback, nested ones too."""
    original = {"a": 1, "b": {"c": [1, 2, 3], "d": "x"}, "e": []}
    state, journal = make(original)
    journal.begin()
    state["a"] = 2
    state["b"]["c"].append(4)
    state["b"]["c"][0] = 99
    state["b"]["c"].sort(reverse=True)
    del state["b"]["d"]
    state["e"].extend([{"deep": 1}])
    state["e"][0]["deep"] = 2
    state["new"] = {"x": [1]}
    state.pop("a")
    state.setdefault("z", 5)
    state.update(q=1)
    journal.rollback()
    assert original == state
    assert pack(original) == pack(state)


def test_mutation_outside_a_transaction_is_refused() -> None:
    """State can only change while a transition runs; outside, mutation raises and changes nothing."""
    state, _ = make({"a": 1, "l": [1]})
    with pytest.raises(StateMutationError):
        state["a"] = 2
    with pytest.raises(StateMutationError):
        state["l"].append(2)
    assert {"a": 1, "l": [1]} == state


def test_swap_shows_before_and_after() -> None:
    """swap_to_before shows the pre-transition state; swap_to_after brings the changes back."""
    state, journal = make({"a": 1, "l": [1, 2]})
    journal.begin()
    state["a"] = 2
    state["l"].append(3)
    state["b"] = {"x": 1}
    journal.swap_to_before()
    assert {"a": 1, "l": [1, 2]} == state
    journal.swap_to_after()
    assert {"a": 2, "l": [1, 2, 3], "b": {"x": 1}} == state
    journal.commit()
    assert {"a": 2, "l": [1, 2, 3], "b": {"x": 1}} == state


def test_assigned_containers_are_copied_in_not_aliased() -> None:
    """Assigning a container copies it: state is a value tree, as it will be after a checkpoint."""
    state, journal = make({"a": {"x": 1}})
    outside = {"y": [1]}
    journal.begin()
    state["b"] = outside
    state["c"] = state["a"]
    outside["y"].append(2)
    state["a"]["x"] = 5
    journal.commit()
    assert {"y": [1]} == state["b"]
    assert {"x": 1} == state["c"]
    assert isinstance(state["b"], TrackedDict)
    assert isinstance(state["b"]["y"], TrackedList)


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ({"a": (1, 2)}, "['a']", "tuple is not a msgpack value; use a list"),
        ({"a": {"b": [1, {3}]}}, "['a']['b'][1]", "set is not a msgpack value"),
        ({"a": object()}, "['a']", "object is not a msgpack value"),
        ({"a": {1.5: 2}}, "['a']", "keys must be str, int or bytes"),
        ({"a": 1 << 70}, "['a']", "does not fit in 64 bits"),
        ({"a": Level.HIGH}, "['a']", "convert it to a plain int"),
    ],
)
def test_non_msgpack_values_are_named_by_path(value: dict[str, Any], path: str, fragment: str) -> None:
    """A value msgpack cannot carry exactly is rejected with the path to it and the reason."""
    with pytest.raises(StateTypeError) as caught:
        make(value)
    assert path == caught.value.path
    assert fragment in str(caught.value)


def test_top_level_state_must_be_a_map() -> None:
    """The state is a msgpack map; anything else is rejected with a clear message."""
    with pytest.raises(StateTypeError, match="must be a dict"):
        new_state([1, 2], Journal())  # type: ignore[arg-type]


def test_bad_assignment_inside_a_transaction_raises_before_changing() -> None:
    """Assigning a non-msgpack value raises at the assignment, leaving the entry as it was."""
    state, journal = make({"a": 1})
    journal.begin()
    with pytest.raises(StateTypeError, match=r"\['b'\]"):
        state["b"] = {"ok": 1, "bad": (1,)}
    journal.rollback()
    assert {"a": 1} == state


def test_check_value_names_its_root() -> None:
    """check_value reports where the bad value sits under the name it is given."""
    with pytest.raises(StateTypeError, match=r"payload of action 'x'\['k'\]: tuple"):
        check_value({"k": (1,)}, "payload of action 'x'")


def test_copy_is_plain_and_detached() -> None:
    """TrackedDict.copy() returns a plain deep copy that can be mutated freely."""
    state, _ = make({"a": {"b": [1]}})
    copied = state.copy()
    copied["a"]["b"].append(2)
    assert type(copied) is dict
    assert [1] == state["a"]["b"]


# --- property: any sequence of mutations rolls back exactly --------------------------------

keys = st.sampled_from(["a", "b", "c", "d"])
scalars = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=6,
)
operations = st.lists(
    st.tuples(st.sampled_from(["set", "del", "append", "pop", "nested_set", "clear", "insert"]), keys, values),
    max_size=25,
)


def apply(state: Any, op: str, key: str, value: Any) -> None:
    target = state.get(key)
    if op == "set":
        state[key] = value
    elif op == "del" and key in state:
        del state[key]
    elif op == "append" and isinstance(target, list):
        target.append(value)
    elif op == "insert" and isinstance(target, list):
        target.insert(0, value)
    elif op == "pop" and isinstance(target, list) and target:
        target.pop()
    elif op == "nested_set" and isinstance(target, dict):
        target[key] = value
    elif op == "clear" and isinstance(target, (dict, list)):
        target.clear()


def test_delete_set_delete_rolls_back() -> None:
    """Regression (found by the property below): del, set, del of one key rolls back exactly."""
    state, journal = make({"a": None, "b": 1})
    journal.begin()
    del state["a"]
    state["a"] = {}
    del state["a"]
    journal.rollback()
    assert pack({"a": None, "b": 1}) == pack(state)


@settings(max_examples=1000, deadline=None)
@given(start=st.dictionaries(keys, values, max_size=4), ops=operations)
def test_any_mutation_sequence_rolls_back_exactly(start: dict[str, Any], ops: list[Any]) -> None:
    """Property: whatever a transition does to the state, rollback restores the encoded bytes."""
    state, journal = make(start)
    before = pack(state)
    journal.begin()
    for op, key, value in ops:
        apply(state, op, key, value)
    after = pack(state)
    journal.swap_to_before()
    assert before == pack(state)
    journal.swap_to_after()
    assert after == pack(state)
    journal.rollback()
    assert before == pack(state)
    assert unpack(before) == state


def test_pack_is_exact_across_threads_and_after_a_refused_value() -> None:
    """pack keeps one msgpack Packer per thread: threads packing at once each get their own
    value back, and a value msgpack refuses leaves nothing behind for the next pack."""
    with pytest.raises(TypeError):
        pack({"a": [1, object()]})
    assert {"b": 2} == unpack(pack({"b": 2}))
    wrong: list[Any] = []

    def pack_many(seed: int) -> None:
        for n in range(2000):
            value = {"thread": seed, "n": n, "payload": [seed] * (n % 7), "text": "x" * (n % 50)}
            if unpack(pack(value)) != value:
                wrong.append((seed, n))

    threads = [threading.Thread(target=pack_many, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [] == wrong
