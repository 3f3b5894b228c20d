"""An all-or-nothing value outside a process: the same journaled state, for other engines.

The runtime makes each transition atomic by journaling every change to a process's state
(:mod:`supervisor._core.state`). Process kinds that run their own deterministic functions over state
they hold themselves (the log-apply kind's ``apply(state, entry)``) need the same promise at the
same price: a change that raises leaves the value exactly as it was, at a cost proportional to
the changes made, not to the value's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .state import Journal, adopt


class AtomicValue:
    """A msgpack value tree (a dict at the top) changed only inside :meth:`change`.

    ``with value.change() as root: ...`` yields the root dict; if the block raises, every change
    it made is undone before the exception propagates. Changing the value outside ``change``
    raises :class:`StateMutationError`, as process state does outside a transition.
    """

    __slots__ = ("_journal", "root")

    def __init__(self, value: dict[str, Any] | None = None) -> None:
        self._journal = Journal()
        self.root: dict[Any, Any] = adopt(value if value is not None else {}, self._journal)

    @contextmanager
    def change(self) -> Iterator[dict[Any, Any]]:
        journal = self._journal
        journal.begin()
        try:
            yield self.root
        except BaseException:
            journal.rollback()
            raise
        journal.commit()

    def apply(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(root, *args)`` as one change: its result, or its exception with nothing changed.

        The same as ``change()`` without a context manager's cost, for hot loops.
        """
        journal = self._journal
        journal.begin()
        try:
            result = function(self.root, *args)
        except BaseException:
            journal.rollback()
            raise
        journal.commit()
        return result

    def replace(self, value: dict[str, Any]) -> None:
        """Start over from ``value`` (a loaded snapshot)."""
        self.root = adopt(value, self._journal)

    def __repr__(self) -> str:
        return f"<AtomicValue {len(self.root)} keys>"
