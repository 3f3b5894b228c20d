"""The kinds and executors a daemon runs: statevisor's own and users', loaded the same way.

Two ways in, both checked whole before anything starts:

* **entry points**, the packaging convention (pytest's plugins come the same way): a
  distribution declares ``[project.entry-points."statevisor.kinds"]`` (kind name ->
  ``module:object``) and ``[project.entry-points."statevisor.executors"]`` (action type ->
  ``module:object``), so ``pip install mypkg`` is enough. statevisor's own kinds are entry
  points of its own distribution;
* the configuration's ``[kinds]`` and ``[executors]`` tables, the same mapping for one daemon.

A kind's object is a :class:`~supervisor.Machine` subclass or a :class:`~supervisor.lowlevel.Kind`;
an executor's is an :class:`~supervisor.Executor` (or a class of one, made with no arguments)
or an ``async def``. An import that fails, an object of the wrong sort, a name two sources
provide, or an action type a kind declares (``Machine.action_types``) that nothing executes
refuses the configuration, naming where each came from.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from .._core.actions import ExecuteFunction, Executor
from .._core.machine import Machine
from .._supervision.kind import Kind, KindSetup, MachineKind

if TYPE_CHECKING:  # the web stack (aiohttp, jinja2) is imported only by a daemon that serves it
    from ..web._panels import Panel

KINDS_GROUP = "statevisor.kinds"
EXECUTORS_GROUP = "statevisor.executors"


@dataclass(frozen=True)
class Loaded:
    """A kind or an executor as loaded: what it is and where it came from."""

    name: str
    target: str  # module:object
    origin: str  # "entry point of statevisor 0.1.0", "config/statevisor.toml:12"
    value: Any


@dataclass(frozen=True)
class Problem:
    """Why a kind or an executor could not be loaded; ``table`` and ``name`` say which entry
    (a configuration line is found from them), ``origin`` where it came from."""

    table: str  # "kinds" or "executors"
    name: str
    origin: str
    message: str


@dataclass
class Catalog:
    """The kinds (by name) and executors (by action type) a daemon runs, each with its origin."""

    kinds: dict[str, Loaded] = field(default_factory=dict)
    executors: dict[str, Loaded] = field(default_factory=dict)

    def kind(self, name: str) -> Kind:
        value: Kind = self.kinds[name].value
        return value

    @property
    def machines(self) -> dict[str, type[Machine[Any]]]:
        """Each kind's machine type, by kind name."""
        return {name: loaded.value.machine for name, loaded in self.kinds.items()}

    def tables(self) -> dict[str, str]:
        """The top-level configuration tables the kinds own, and which kind owns each."""
        return {table: name for name, loaded in self.kinds.items() for table in loaded.value.tables}

    def build(self, setup: KindSetup) -> tuple[list[Machine[Any]], dict[str, Executor | ExecuteFunction]]:
        """Every kind's machine and executors, and the executors registered apart."""
        machines: list[Machine[Any]] = []
        executors: dict[str, Executor | ExecuteFunction] = {}
        for name in self.kinds:
            machine, own = self.build_kind(name, setup)
            machines.append(machine)
            executors.update(own)
        for action_type, loaded in self.executors.items():
            executors[action_type] = loaded.value
        return machines, executors

    def build_kind(self, name: str, setup: KindSetup) -> tuple[Machine[Any], Mapping[str, Executor | ExecuteFunction]]:
        """One kind's machine and the executors it brings, given the tables it owns."""
        kind = self.kind(name)
        owned = {table: setup.tables[table] for table in kind.tables if table in setup.tables}
        return kind.build(KindSetup(setup.config_dir, setup.log_dir, setup.run_dir, owned))

    def changes(self, newer: Catalog) -> tuple[list[str], list[str], list[str]]:
        """What ``newer`` adds or changes: its new kinds, its kinds loaded from elsewhere (another
        ``module:object``), and its executors that are new or loaded from elsewhere."""
        added = [name for name in newer.kinds if name not in self.kinds]
        changed = [
            name
            for name, loaded in newer.kinds.items()
            if name in self.kinds and loaded.target != self.kinds[name].target
        ]
        executors = [
            name for name, loaded in newer.executors.items()
            if name not in self.executors or loaded.target != self.executors[name].target
        ]  # fmt: skip
        return added, changed, executors

    def __repr__(self) -> str:
        return f"<Catalog kinds {', '.join(self.kinds)}; {len(self.executors)} executors registered apart>"


def load_catalog(
    kinds: Mapping[str, Any],
    executors: Mapping[str, Any],
    origin: Callable[[str, str], str],
    *,
    discover: Callable[[str], list[EntryPoint]] | None = None,
) -> tuple[Catalog, list[Problem]]:
    """The catalog from the entry points and the configuration's ``[kinds]`` and ``[executors]``
    tables (``origin(table, name)`` says where an entry of theirs is written); and every
    problem found, each naming its entry. ``discover`` lists a group's entry points (tests)."""
    discover = discover or (lambda group: list(entry_points(group=group)))
    catalog = Catalog()
    problems: list[Problem] = []
    for group, table, into, check in (
        (KINDS_GROUP, "kinds", catalog.kinds, _as_kind),
        (EXECUTORS_GROUP, "executors", catalog.executors, _as_executor),
    ):
        sources = [(ep.name, ep.value, _entry_point_origin(ep)) for ep in discover(group)]
        written = kinds if table == "kinds" else executors
        for name, target in written.items():
            if not isinstance(target, str) or ":" not in target:
                problems.append(Problem(table, name, origin(table, name), f'expected "module:object"; got {target!r}'))
                continue
            sources.append((name, target, origin(table, name)))
        for name, target, where in sources:
            if name in into:
                first = into[name]
                problems.append(Problem(table, name, where, f"{name!r} is provided twice: here and by {first.origin}"))
                continue
            try:
                value = check(name, _import(target))
            except (ImportError, AttributeError, TypeError, ValueError) as exc:
                problems.append(Problem(table, name, where, f"{target}: {_described(exc)}"))
                continue
            into[name] = Loaded(name, target, where, value)
    problems += _unexecuted(catalog)
    return catalog, problems


def _entry_point_origin(ep: EntryPoint) -> str:
    dist = ep.dist
    by = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point {ep.group}:{ep.name} of {by}"


def _import(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    value: Any = importlib.import_module(module_name.strip())
    for part in attribute.strip().split("."):
        value = getattr(value, part)
    return value


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _as_kind(name: str, value: Any) -> Kind:
    if isinstance(value, type) and issubclass(value, Machine):
        kind: Kind = MachineKind(value)
    elif all(hasattr(value, attribute) for attribute in ("machine", "tables", "action_types", "build")):
        kind = value
    else:
        raise TypeError(f"is not a Machine subclass or a Kind (it is {_what(value)})")
    if kind.machine.kind != name:
        raise ValueError(f"its machine's kind is {kind.machine.kind!r}, not {name!r}: name it the same in both places")
    return kind


def _as_executor(name: str, value: Any) -> Executor | ExecuteFunction:
    if isinstance(value, type):
        if not callable(getattr(value, "execute", None)):
            raise TypeError(f"is a class without an execute method, not an Executor (it is {_what(value)})")
        value = value()
    if callable(getattr(value, "execute", None)):
        executor: Executor = value
        return executor
    if inspect.iscoroutinefunction(value):
        function: ExecuteFunction = value
        return function
    raise TypeError(f"is not an Executor or an async function (it is {_what(value)})")


def _what(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__module__}.{value.__qualname__}"
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return f"the {'async ' if asyncio.iscoroutinefunction(value) else ''}function {value.__qualname__}"
    return f"a {type(value).__name__}"


def _unexecuted(catalog: Catalog) -> list[Problem]:
    """The action types a kind's machine declares that neither a kind nor an executor provides."""
    provided = {t for loaded in catalog.kinds.values() for t in loaded.value.action_types} | set(catalog.executors)
    problems = []
    for name, loaded in catalog.kinds.items():
        missing = [t for t in loaded.value.machine.action_types if t not in provided]
        if missing:
            message = (
                f"kind {name!r} describes action type(s) {', '.join(map(repr, missing))} that no executor "
                "performs: add them to [executors] (or install the package that provides them)"
            )
            problems.append(Problem("kinds", name, loaded.origin, message))
    return problems


PANELS_GROUP = "statevisor.panels"


def load_panels(discover: Callable[[str], list[EntryPoint]] | None = None) -> tuple[list[Panel], list[str]]:
    """The web console's panels that installed packages declare (group ``statevisor.panels``:
    a :class:`~supervisor.web.Panel`, or a class of one made with no arguments), and a line for
    each that could not be loaded: a broken panel is left out, the console still serves."""
    from ..web._panels import Panel

    discover = discover or (lambda group: list(entry_points(group=group)))
    panels: list[Panel] = []
    problems: list[str] = []
    for ep in discover(PANELS_GROUP):
        origin = f"{ep.value} ({_entry_point_origin(ep)})"
        try:
            value = ep.load()
            panel = value() if isinstance(value, type) else value
        except Exception as exc:
            problems.append(f"{origin}: {_described(exc)}")
            continue
        if not isinstance(panel, Panel):
            problems.append(f"{origin}: {_what(value)} is not a panel (it needs applies_to(kind) and render(snapshot))")
            continue
        panels.append(panel)
    return panels, problems
