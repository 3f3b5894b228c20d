"""The public surface: what the packages export, and which layer may import which."""

from __future__ import annotations

import ast
import pathlib

import pytest

import supervisor

ROOT = pathlib.Path(__file__).resolve().parent.parent

EXPECTED_EXPORTS = {
    # writing a process type
    "Machine", "Context", "Input", "Control", "ControlEvent", "Cast", "Call", "ActionResult", "ActionSucceeded",
    "ActionFailed", "TimerFired", "Internal", "STATE_TIMEOUT", "EVENT_TIMEOUT", "ErrorPolicy", "AtomicValue", "mermaid",
    # actions and executors
    "TrackedAction", "UntrackedAction", "Executor", "FunctionExecutor", "ExecutorRegistry",
    # running processes
    "Runtime", "RuntimeObserver", "RuntimeStatistics", "Handle", "HandleAPI", "Snapshot", "ProcessStatistics",
    "Lifecycle", "DriveMode", "Clock", "SystemClock", "ManualClock", "TimerHandle", "SlotPool", "SlotStatistics",
    # a node
    "Node", "StartReport", "NodeSummary", "KindCounts", "SlotCounts", "Supervisor", "SupervisorSpec", "ChildSpec",
    "SupervisorState", "SupervisorStatistics", "Restart", "Strategy", "Backoff", "Budget",
    # checkpoints and stores
    "Checkpointer", "Store", "SQLiteStore", "StoreStatistics", "Recovery", "Quarantined", "ProcessRecord",
    "TimerRecord", "encode_record", "decode_record", "FORMAT_VERSION",
    # simulation testing
    "Simulation", "SimExecutor", "SimCall", "Invariant",
    # errors
    "StatevisorError", "WouldBlock", "ConfigurationError", "StateTypeError", "UnknownActionType", "DiagramError",
    "SettingsError", "LifecycleError", "IllegalLifecycleMove", "ProcessPaused", "ProcessTerminated",
    "ProcessFinished", "ProcessFailed", "ProcessKilled", "ProcessNotFound", "LogNotFound", "NotFinished",
    "TransitionError", "IllegalPhaseChange", "StateMutationError", "NondeterminismError", "CallTimeout", "Unavailable",
    "StoreError", "StoreLocked", "StoreFull", "CheckpointRejected", "CorruptCheckpoint", "BackendError",
    "TransportError", "SimulationError", "InvariantViolation", "ProtocolError", "ConnectionDenied", "RemoteError",
    "DaemonNotAnswering",
    "__version__",
}  # fmt: skip
EXPECTED_LOWLEVEL = {
    "Kind", "KindSetup", "MachineKind",
    "pack", "unpack", "private_directory", "private_file", "tighten", "rotate_log", "tail_lines", "follow_lines",
    "OpenFilesLimit", "open_files_for_children", "raise_open_files_limit",
}  # fmt: skip


def test_export_list_is_pinned() -> None:
    """supervisor.__all__ is exactly the documented public API, and every name resolves."""
    assert EXPECTED_EXPORTS == set(supervisor.__all__)
    for name in supervisor.__all__:
        assert hasattr(supervisor, name), name


def test_the_extension_api_is_pinned() -> None:
    """supervisor.lowlevel.__all__, what process kinds build on, is pinned as well."""
    import supervisor.lowlevel

    assert EXPECTED_LOWLEVEL == set(supervisor.lowlevel.__all__)
    for name in supervisor.lowlevel.__all__:
        assert hasattr(supervisor.lowlevel, name), name


def test_old_names_still_work_and_say_where_they_went() -> None:
    """Names users may hold from before (Host, ConfigError, the kinds' errors, the tools that
    moved to supervisor.lowlevel) still resolve, each with a DeprecationWarning naming its new
    home; an unknown name is an AttributeError as usual."""
    import warnings

    import processes.shell
    import supervisor.daemon
    import supervisor.lowlevel

    for old, new in [
        ("Host", supervisor.Node),
        ("HostSummary", supervisor.NodeSummary),
        ("ConfigError", supervisor.daemon.ConfigFileError),
        ("CommandNotFound", processes.shell.CommandNotFound),
        ("pack", supervisor.lowlevel.pack),
    ]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert new is getattr(supervisor, old)
        assert [DeprecationWarning] == [w.category for w in caught], old
        assert f"supervisor.{old} is deprecated: use " in str(caught[0].message)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        supervisor.NoSuchName  # noqa: B018 - the lookup is the test


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
    "cluster",
    "web",
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


def _error_classes() -> dict[str, list[type]]:
    """Every error class of supervisor/ and processes/, by the module that defines it."""
    import importlib

    import supervisor as root

    found: dict[str, list[type]] = {}
    for path in [*(ROOT / "supervisor").rglob("*.py"), *(ROOT / "processes").rglob("*.py")]:
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, root.StatevisorError) and value.__module__ == name:
                found.setdefault(name, []).append(value)
    return found


def test_each_layer_and_kind_draws_the_errors_it_defines() -> None:
    """Each module that defines errors (the core's bases, each layer's, each kind's) draws its
    hierarchy at its top, every class it defines under its real parent; the parents it extends
    from elsewhere stand at the roots of its drawing. Every error derives from StatevisorError."""
    import importlib
    import re

    root_line = re.compile(r"^( *)([A-Z]\w+)$")
    branch_line = re.compile(r"^([ │]*)(?:├── |└── )([A-Z]\w+)(?: \(also \w+\))?(?:\s{2,}|$)")
    modules = _error_classes()
    kinds = {"processes.shell.errors", "processes.batch.errors", "processes.cloud.errors"}
    assert {"supervisor._errors", *kinds} <= set(modules)
    for name, classes in modules.items():
        drawn: dict[str, str] = {}
        parents: list[str] = []
        base = 0
        for line in (importlib.import_module(name).__doc__ or "").splitlines():
            root = root_line.match(line)
            if root:  # StatevisorError, or a base from another module
                parents, base = [root.group(2)], len(root.group(1))
                continue
            branch = branch_line.match(line)
            if not branch:
                continue
            assert parents, f"{name}: {line.strip()!r} has no root above it"
            depth = (len(branch.group(1)) - base) // 4 + 1
            del parents[depth:]
            drawn[branch.group(2)] = parents[-1]
            parents.append(branch.group(2))
        defined = {cls.__name__: cls for cls in classes}
        assert set(defined) - {"StatevisorError"} <= set(drawn), (
            f"{name} draws {sorted(drawn)}, defines {sorted(defined)}"
        )
        for cls_name, cls in defined.items():
            if cls_name != "StatevisorError":
                assert drawn[cls_name] == cls.__mro__[1].__name__, f"{name}.{cls_name}"


def test_the_core_defines_no_kinds_errors() -> None:
    """Adding a kind never means editing the core: the core's errors module defines no error
    of a process kind (a command, a scheduler, a log), and the kinds define theirs."""
    modules = _error_classes()
    core = {cls.__name__ for cls in modules["supervisor._errors"]}
    kinds = {cls.__name__ for name, classes in modules.items() if name.startswith("processes.") for cls in classes}
    assert {"CommandNotFound", "SchedulerError", "HostKeyMismatch", "LogGap", "ApplyFailed"} <= kinds
    assert set() == core & kinds
