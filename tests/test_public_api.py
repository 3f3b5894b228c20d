"""The public surface: what the packages export, and which layer may import which."""

from __future__ import annotations

import ast
import pathlib

import supervisor

ROOT = pathlib.Path(__file__).resolve().parent.parent

EXPECTED_EXPORTS = {
    "STATE_TIMEOUT", "ApplyFailed", "AtomicValue", "EntryRejected", "LogError", "LogGap", "SnapshotError",
    "StaleWriter", "ActionFailed", "ActionResult", "ActionSucceeded", "Call", "CallTimeout", "Cast",
    "Checkpointer", "Clock", "ConfigurationError", "Context", "Control", "ControlEvent", "DiagramError",
    "DriveMode", "ErrorPolicy", "Executor", "ExecutorRegistry", "FunctionExecutor", "Handle", "HandleAPI",
    "IllegalLifecycleMove", "IllegalPhaseChange", "Input", "Lifecycle", "LifecycleError", "Machine",
    "ManualClock", "NondeterminismError", "NotFinished", "ProcessFailed", "ProcessFinished", "ProcessKilled",
    "ProcessNotFound", "ProcessPaused", "ProcessRecord", "ProcessStatistics",
    "NodeSummary", "KindCounts", "SlotCounts", "ProcessTerminated", "Runtime", "RuntimeObserver",
    "RuntimeStatistics", "Snapshot", "StateMutationError", "StateTypeError", "StatevisorError", "SystemClock",
    "TimerFired", "TimerHandle", "TimerRecord", "TrackedAction", "TransitionError", "UnknownActionType",
    "UntrackedAction", "WouldBlock", "__version__", "mermaid",
    "Backoff", "Budget", "CheckpointRejected", "ChildSpec", "CorruptCheckpoint", "FORMAT_VERSION", "Node",
    "Quarantined", "Recovery", "Restart", "SQLiteStore", "SlotPool", "SlotStatistics", "StartReport", "StoreError",
    "StoreFull", "StoreLocked", "StoreStatistics", "Strategy", "Supervisor", "SupervisorSpec", "SupervisorState",
    "SupervisorStatistics", "decode_record", "Invariant", "Simulation", "SimCall", "SimExecutor",
    "SimulationError", "InvariantViolation", "encode_record",
    "SettingsError", "BackendError", "CommandNotFound", "CommandLost", "SecretUnreadable", "RunMonitorError",
    "tail_lines",
    "ConfigError", "ConnectionDenied", "ProtocolError", "RemoteError", "AckLost",
    "follow_lines", "LogNotFound", "rotate_log", "DaemonNotAnswering", "OpenFilesLimit", "open_files_for_children",
    "LoopWatchdog", "raise_open_files_limit",
    "TransportError", "HostUnreachable", "HostKeyMismatch", "SchedulerError", "pack", "unpack",
}  # fmt: skip


def test_export_list_is_pinned() -> None:
    """supervisor.__all__ is exactly the documented public API, and every name resolves."""
    assert EXPECTED_EXPORTS == set(supervisor.__all__)
    for name in supervisor.__all__:
        assert hasattr(supervisor, name), name


def test_public_classes_do_not_leak_private_module_names_in_errors() -> None:
    """Every exception the package exports derives from StatevisorError (one hierarchy)."""
    errors = [getattr(supervisor, n) for n in supervisor.__all__ if n.endswith(("Error", "Timeout", "Block"))]
    errors += [supervisor.ProcessFinished, supervisor.ProcessFailed, supervisor.ProcessKilled, supervisor.NotFinished]
    for error in errors:
        assert issubclass(error, supervisor.StatevisorError), error


# The layers of supervisor/, lowest first: the folders (and the two modules below them). A module
# imports only from its own layer and the ones below; the public modules at the top of the
# package (the API users write against) may import any layer.
LAYERS = (
    "_version",
    "_errors",
    "_files",
    "_core",
    "_store",
    "_supervision",
    "_simulation",
    "control",
    "daemon",
    "cli",
)
PUBLIC_MODULES = {"__init__", "__main__", "lowlevel", "testing", "pytest_plugin"}


def _layer(module: str) -> str:
    """The layer of ``supervisor.<module...>`` (its first part)."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """The absolute names of the modules ``path`` imports (relative imports resolved)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                names.update(f"{module}.{a.name}" if not node.module else module for a in node.names)
            else:
                names.add(node.module or "")
    return names


def test_every_module_of_supervisor_has_a_layer() -> None:
    """Each file of supervisor/ is in one of the layers, or is one of the public modules at its
    top: a new folder or top-level module must be placed before it can be used."""
    for path in (ROOT / "supervisor").rglob("*.py"):
        top = path.relative_to(ROOT / "supervisor").parts[0].removesuffix(".py")
        assert top in LAYERS or top in PUBLIC_MODULES, f"{path.relative_to(ROOT)} is in no layer"


def test_lower_layers_never_import_upper_ones() -> None:
    """The folders are the layers: nothing imports from a layer above its own, and no layer
    imports the public top-level modules (``supervisor`` itself, ``lowlevel``) or the process
    kinds, which are built on them."""
    rank = {name: index for index, name in enumerate(LAYERS)}
    for path in (ROOT / "supervisor").rglob("*.py"):
        here = path.relative_to(ROOT / "supervisor").parts[0].removesuffix(".py")
        if here in PUBLIC_MODULES:
            continue
        for module in _imported_modules(path):
            if module.startswith("processes"):
                raise AssertionError(f"{path.relative_to(ROOT)} imports the process kinds ({module})")
            if not module.startswith("supervisor"):
                continue
            there = _layer(module)
            if there in PUBLIC_MODULES:
                raise AssertionError(f"{path.relative_to(ROOT)} imports the public module {module}")
            assert rank[there] <= rank[here], f"{path.relative_to(ROOT)} ({here}) imports {module} ({there})"


def test_no_module_imports_itself_back_through_another() -> None:
    """No import circles anywhere in supervisor/, those under TYPE_CHECKING included: each
    module's imports, followed through the package, never lead back to it."""
    graph: dict[str, set[str]] = {}
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "supervisor").rglob("*.py")}  # fmt: skip
    for module, path in files.items():
        graph[module] = {name for name in _imported_modules(path) if name in files and name != module}
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself back through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])


def test_process_kinds_use_only_the_public_api() -> None:
    """processes/ is built on supervisor's public names: it never imports a private module."""
    for path in (ROOT / "processes").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        private = {name for name in imported if name.startswith("supervisor._")}
        assert set() == private, f"{path.relative_to(ROOT)} imports {private}"


def test_in_process_and_remote_handles_share_the_handle_api() -> None:
    """Handle and RemoteHandle both satisfy HandleAPI: mypy checks the assignment below
    structurally, and every method the protocol names exists on both classes."""
    from supervisor import Handle, HandleAPI
    from supervisor.control import RemoteHandle

    def as_api(local: Handle, remote: RemoteHandle) -> list[HandleAPI]:
        return [local, remote]  # the static check: both conform

    methods = {name for name in dir(HandleAPI) if not name.startswith("_")} - {"pid", "name", "kind"}
    assert {"try_cast", "try_nudge", "snapshot", "statistics", "watch"} <= methods
    assert set() == methods - set(dir(Handle))
    assert set() == methods - set(dir(RemoteHandle))


def test_the_drawn_hierarchy_is_the_real_one() -> None:
    """The tree at the top of supervisor/_exceptions.py names every error class in the module,
    each under its real parent; and no module of supervisor/ or processes/ derives an error
    class of its own from that hierarchy elsewhere (one exceptions module; private control-flow
    exceptions of the standalone run monitor derive from Exception and never reach users)."""
    import re

    from supervisor import _errors as _exceptions

    drawn: dict[str, str] = {}
    parents: list[str] = []
    for line in (_exceptions.__doc__ or "").splitlines():
        found = re.match(
            r"^    ((?:[│ ]   )*)(?:├── |└── )([A-Z]\w+)(?: \(also \w+\))?\s{2,}|^    (StatevisorError)$", line
        )
        if not found:
            continue
        name = found.group(2) or found.group(3)
        depth = len(found.group(1) or "") // 4 + (0 if found.group(3) else 1)
        del parents[depth:]
        if parents:
            drawn[name] = parents[-1]
        parents.append(name)
    classes = {
        name: cls
        for name, cls in vars(_exceptions).items()
        if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == _exceptions.__name__
    }
    assert set(classes) - {"StatevisorError"} == set(drawn)
    for name, parent in drawn.items():
        assert classes[name].__mro__[1].__name__ == parent, name
    for path in [*(ROOT / "supervisor").rglob("*.py"), *(ROOT / "processes").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and path.name != "_errors.py":
                bases = {ast.unparse(b).rpartition(".")[2] for b in node.bases}
                assert set() == bases & set(classes), f"{path.relative_to(ROOT)}: {node.name} derives from {bases}"
