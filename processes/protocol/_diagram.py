"""Pictures from code: each role's state diagram from the specification, the sequence diagram of
a run from its record, and the check that a recorded run is one the specification allows.

The state diagram is the protocol function's control flow over its joint steps, read from the
function's source (:func:`flow`): a sequence of awaited steps, ``if``/``match`` branches,
``while``/``for`` loops, ``try``/``except`` (any step in the ``try`` may raise into the
handlers: the abort path), ``return`` and ``raise``, and helper coroutines of the same module
that take the party, followed inside. Each role's diagram is that flow, with what the role does
in each step (the host sends and awaits, the client awaits and answers) and how a crash may
resume it. Because it is read from the code, it cannot drift from it; and because a recorded
run's steps must be a path through the same flow (:func:`check_run`), neither can a run.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._record import END, IN, OUT, read_records
from ._spec import Resume, Specification, lookup
from ._transcript import events, last_run, load
from ._wire import FrameKind
from .errors import SpecificationError

START, FINISH, ESCAPE = "[*]", "[end]", "[error]"
_REQUEST, _ANSWER, _ABORT = int(FrameKind.REQUEST), int(FrameKind.ANSWER), int(FrameKind.ABORT)


@dataclass
class Flow:
    """The joint steps a protocol function can take one after another: ``edges`` from
    :data:`START` through step names to :data:`FINISH` (a normal end) or :data:`ESCAPE` (an
    error the function does not handle)."""

    steps: list[str] = field(default_factory=list)
    edges: set[tuple[str, str]] = field(default_factory=set)

    def following(self, step: str) -> set[str]:
        return {b for a, b in self.edges if a == step}

    def allows(self, path: Iterable[str], *, ended: bool) -> str | None:
        """Why ``path`` (step names, in order) is not a run of this flow (None: it is)."""
        here = START
        for index, step in enumerate(path):
            if step not in self.following(here):
                allowed = ", ".join(sorted(self.following(here))) or "nothing"
                return f"step {index + 1} is {step} after {here}; the protocol allows {allowed}"
            here = step
        if ended and not {FINISH, ESCAPE} & self.following(here):
            return f"the run ended after {here}, where the protocol goes on"
        return None


@dataclass
class _Exits:
    next: set[str] = field(default_factory=set)
    breaks: set[str] = field(default_factory=set)
    continues: set[str] = field(default_factory=set)
    returns: set[str] = field(default_factory=set)
    raises: set[str] = field(default_factory=set)


class _Walker:
    def __init__(self, spec: Specification[Any], module: dict[str, Any]) -> None:
        self.spec = spec
        self.module = module
        self.flow = Flow()
        self.inlining: list[str] = []

    def edge(self, sources: set[str], target: str) -> None:
        for source in sources:
            self.flow.edges.add((source, target))
        if target in self.spec.steps and target not in self.flow.steps:
            self.flow.steps.append(target)

    # --- expressions -------------------------------------------------------------------------

    def calls(self, node: ast.AST | None, party: str) -> list[Any]:
        """The awaited step calls (names) and helper coroutines (function defs) in ``node``,
        in evaluation order."""
        found: list[Any] = []
        if node is None:
            return found
        for child in _in_order(node):
            if not isinstance(child, ast.Await) or not isinstance(child.value, ast.Call):
                continue
            call = child.value
            target = call.func
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == party
                and target.attr in self.spec.steps
            ):
                found.append(target.attr)
            elif isinstance(target, ast.Name) and call.args:
                first = call.args[0]
                helper = self.module.get(target.id)
                if isinstance(first, ast.Name) and first.id == party and inspect.iscoroutinefunction(helper):
                    found.append(helper)
        return found

    def expression(self, node: ast.AST | None, party: str, entries: set[str], exits: _Exits) -> set[str]:
        for call in self.calls(node, party):
            if isinstance(call, str):
                self.edge(entries, call)
                entries = {call}
                if call != "abort":  # the abort step ends the run: it raises nothing into the protocol
                    exits.raises.add(call)
            else:
                inner = self.function(call, entries)
                exits.raises |= inner.raises
                entries = inner.next | inner.returns
        return entries

    # --- statements --------------------------------------------------------------------------

    def function(self, function: Callable[..., Any], entries: set[str]) -> _Exits:
        name = getattr(function, "__qualname__", repr(function))
        if name in self.inlining:
            raise SpecificationError(
                name, "a protocol's helper coroutines may not recurse (the flow would be unbounded)"
            )
        try:
            source = textwrap.dedent(inspect.getsource(function))
        except (OSError, TypeError) as exc:
            raise SpecificationError(name, f"its source cannot be read, so its flow cannot be drawn: {exc}") from exc
        tree = ast.parse(source)
        definition = next(n for n in ast.walk(tree) if isinstance(n, ast.AsyncFunctionDef))
        if not definition.args.args:
            raise SpecificationError(name, "a protocol function takes the party as its first argument")
        party = definition.args.args[0].arg
        self.inlining.append(name)
        try:
            return self.block(definition.body, party, entries)
        finally:
            self.inlining.pop()

    def block(self, statements: list[ast.stmt], party: str, entries: set[str]) -> _Exits:
        exits = _Exits()
        current = set(entries)
        for statement in statements:
            if not current:
                break  # unreachable after a return, a raise, a break or a continue
            current = self.statement(statement, party, current, exits)
        exits.next |= current
        return exits

    def statement(self, node: ast.stmt, party: str, entries: set[str], exits: _Exits) -> set[str]:
        if isinstance(node, ast.Return):
            exits.returns |= self.expression(node.value, party, entries, exits)
            return set()
        if isinstance(node, ast.Raise):
            exits.raises |= self.expression(node.exc, party, entries, exits)
            return set()
        if isinstance(node, ast.Break):
            exits.breaks |= entries
            return set()
        if isinstance(node, ast.Continue):
            exits.continues |= entries
            return set()
        if isinstance(node, ast.If):
            entries = self.expression(node.test, party, entries, exits)
            then = self.block(node.body, party, entries)
            otherwise = self.block(node.orelse, party, entries)
            self._merge(exits, then, otherwise)
            return then.next | otherwise.next
        if isinstance(node, ast.Match):
            entries = self.expression(node.subject, party, entries, exits)
            result: set[str] = set() if any(_catches_all(case) for case in node.cases) else set(entries)
            for case in node.cases:
                branch = self.block(case.body, party, entries)
                self._merge(exits, branch)
                result |= branch.next
            return result
        if isinstance(node, ast.While | ast.For | ast.AsyncFor):
            head = node.test if isinstance(node, ast.While) else node.iter
            entries = self.expression(head, party, entries, exits)
            looping = set(entries)
            while True:
                body = self.block(node.body, party, looping)
                grown = looping | body.next | body.continues
                if grown == looping:
                    break
                looping = grown
            exits.returns |= body.returns
            exits.raises |= body.raises
            after = self.block(node.orelse, party, looping) if node.orelse else _Exits(next=set(looping))
            self._merge(exits, after)
            return after.next | body.breaks
        if isinstance(node, ast.Try | ast.TryStar):
            body = self.block(node.body, party, entries)
            otherwise = self.block(node.orelse, party, body.next) if node.orelse else _Exits(next=set(body.next))
            handled = _Exits(next=set(otherwise.next))
            handled.breaks |= body.breaks | otherwise.breaks
            handled.continues |= body.continues | otherwise.continues
            handled.returns |= body.returns | otherwise.returns
            handled.raises |= otherwise.raises
            catch = set(body.raises)
            if not node.handlers:
                handled.raises |= body.raises
            for handler in node.handlers:
                branch = self.block(handler.body, party, catch)
                handled.next |= branch.next
                handled.breaks |= branch.breaks
                handled.continues |= branch.continues
                handled.returns |= branch.returns
                handled.raises |= branch.raises
            if node.finalbody:
                final = self.block(node.finalbody, party, handled.next | handled.returns | handled.raises)
                exits.raises |= final.raises | handled.raises
                exits.returns |= handled.returns
                exits.breaks |= handled.breaks
                exits.continues |= handled.continues
                return final.next if handled.next else set()
            self._merge(exits, handled)
            return handled.next
        if isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                entries = self.expression(item.context_expr, party, entries, exits)
            inner = self.block(node.body, party, entries)
            self._merge(exits, inner)
            return inner.next
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return entries
        return self.expression(node, party, entries, exits)

    @staticmethod
    def _merge(exits: _Exits, *others: _Exits) -> None:
        for other in others:
            exits.breaks |= other.breaks
            exits.continues |= other.continues
            exits.returns |= other.returns
            exits.raises |= other.raises


def _catches_all(case: ast.match_case) -> bool:
    pattern = case.pattern
    return case.guard is None and isinstance(pattern, ast.MatchAs) and pattern.pattern is None


def _in_order(node: ast.AST) -> Iterable[ast.AST]:
    """``node`` and what it contains, depth first, in source order (evaluation order, near enough)."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _in_order(child)


def flow(spec: Specification[Any]) -> Flow:
    """The protocol function's flow over its joint steps, read from its source."""
    function = spec.function
    walker = _Walker(spec, vars(inspect.getmodule(function)) if inspect.getmodule(function) else {})
    exits = walker.function(function, {START})
    walker.edge(exits.next | exits.returns, FINISH)
    walker.edge(exits.raises, ESCAPE)
    return walker.flow


# --- the state diagram of a role ----------------------------------------------------------------

_RESUME_NOTES = {
    Resume.RESTART: "taken again if a crash interrupts it; its answer leaves once recorded",
    Resume.ONCE: "never taken twice: a crash inside it aborts the run",
}


def state_diagram(spec: Specification[Any], side: str) -> str:
    """A Mermaid state diagram of ``side`` (``host`` or ``client``) taking the protocol's steps."""
    spec.role(side)
    graph = flow(spec)
    lines = ["stateDiagram-v2"]
    for step in graph.steps:
        lines.append(f'    state "{step}: {_mermaid(spec.steps[step].describe(side))}" as {step}')
    for source, target in sorted(graph.edges, key=lambda e: (_order(graph, e[0]), _order(graph, e[1]))):
        if target == ESCAPE:
            lines.append(f"    {source} --> [*] : error")
        elif target == FINISH:
            lines.append(f"    {source} --> [*]")
        else:
            lines.append(f"    {source} --> {target}")
    for step in graph.steps:
        note = _RESUME_NOTES.get(spec.steps[step].resume)
        if note:
            lines.append(f"    note right of {step} : {_mermaid(note)}")
    return "\n".join(lines) + "\n"


def _order(graph: Flow, node: str) -> int:
    if node == START:
        return -1
    if node in graph.steps:
        return graph.steps.index(node)
    return len(graph.steps)


def _mermaid(text: str) -> str:
    """Text a Mermaid label can carry (``;`` ends a statement, ``#`` starts an entity)."""
    return text.replace(";", ",").replace("#", "no.").replace('"', "'").replace("<", "(").replace(">", ")")


# --- the sequence diagram of a run --------------------------------------------------------------


def sequence_diagram(run_events: Iterable[Mapping[str, Any]]) -> str:
    """A Mermaid sequence diagram of a recorded run, from its transcript events (``events()`` of
    its record, or the lines of its role's log); steps repeated in a row are drawn once, in a
    loop box that says how many there were."""
    lines = ["sequenceDiagram", "    participant host", "    participant client"]
    for event in run_events:
        if "step" in event and "count" in event:
            step, first, last, count = event["step"], event["seq"], event.get("to", event["seq"]), event["count"]
            request, answer = event.get("request"), event.get("answer")
            indent = "    "
            if count > 1:
                lines.append(f"    loop {count} times {step}, steps {first} to {last}")
                indent = "        "
                label = ""
            else:
                label = f"{first} {step}: "
            if request:
                lines.append(f"{indent}host->>client: {_mermaid(label + request)}")
            if answer:
                lines.append(f"{indent}client-->>host: {_mermaid(answer)}")
            if count > 1:
                lines.append("    end")
        elif event.get("step") == "abort":
            sender = event.get("from", "host")
            other = "client" if sender == "host" else "host"
            lines.append(
                f"    {sender}-x{other}: {_mermaid(str(event['seq']) + ' abort: ' + str(event.get('reason')))}"
            )
        elif "raised" in event:
            lines.append(f"    Note over host,client: {_mermaid(event['raised'] + ': ' + str(event.get('reason')))}")
        elif "end" in event:
            text = f"{event.get('end')} at {event.get('terminal')}"
            if event.get("reason"):
                text += f": {event['reason']}"
            lines.append(f"    Note over host,client: {_mermaid(text)}")
        elif event.get("event") == "resume":
            lines.append(
                f"    Note over host,client: {_mermaid('resumed from ' + str(event.get('records')) + ' records')}"
            )
    return "\n".join(lines) + "\n"


def run_sequence(
    *, transcript: Iterable[str] | None = None, record: str | Path | None = None, protocol: str | None = None
) -> str:
    """The Mermaid sequence diagram of a protocol role's current run, or its last one when it has
    ended, for whoever has the role at hand (a console's panel, a report), from either source:

    * ``transcript``: the lines of the role's log (``await handle.logs("stdout")``, or the file
      its snapshot's ``log_files`` names); the last run in them is drawn;
    * ``record``: the path of the role's record file; ``protocol`` (``"bootloader"``,
      ``"bootloader@2"``) names its specification, so the messages show their fields' names.

    Plain and synchronous; reading a record is file I/O (run it in a thread from a loop).
    """
    if (transcript is None) == (record is None):
        raise TypeError("run_sequence takes a transcript or a record, one of them")
    if transcript is not None:
        return sequence_diagram(last_run(load(transcript)))
    records, _ = read_records(record)  # type: ignore[arg-type]  # not None: checked above
    return sequence_diagram(events(records, lookup(protocol) if protocol else None))


# --- a recorded run against its specification ----------------------------------------------------


def run_steps(records: Iterable[list[Any]]) -> tuple[list[str], bool, list[tuple[int, str, int, Any]]]:
    """A record's steps in order, whether it ended, and its messages ``(seq, step, kind, body)``."""
    steps: list[str] = []
    seen = 0
    ended = False
    messages: list[tuple[int, str, int, Any]] = []
    for kind, seq, step, data in records:
        if kind in (IN, OUT):
            if seq > seen:
                steps.append(step)
                seen = seq
            messages.append((seq, step, data[0], data[1]))
        elif kind == END:
            ended = str(data[0]) != "killed"
    return steps, ended, messages


def check_run(spec: Specification[Any], records: Iterable[list[Any]]) -> list[str]:
    """What in a recorded run the specification does not allow (empty: the run conforms): its
    steps must be a path through the protocol's flow (to an end, if the run ended), and each
    message one its step declares, sent by the side that sends it."""
    steps, ended, messages = run_steps(records)
    problems = []
    why = flow(spec).allows(steps, ended=ended)
    if why:
        problems.append(why)
    for seq, step, kind, body in messages:
        declared = spec.steps.get(step)
        if declared is None:
            problems.append(f"step {seq} is {step}, which the protocol does not declare")
            continue
        tag = body[0] if isinstance(body, list) and body else None
        if kind == _REQUEST and tag not in declared.request_types():
            problems.append(
                f"step {seq} ({step}): the host sent {tag}, the step sends {list(declared.request_types())}"
            )
        elif kind == _ANSWER and tag not in declared.answer_types():
            problems.append(
                f"step {seq} ({step}): the client answered {tag}, the step answers {list(declared.answer_types())}"
            )
        elif kind == _ABORT and tag != "Abort":
            problems.append(f"step {seq} ({step}): an abort that is not an Abort message")
    return problems
