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
    "HostSummary", "KindCounts", "SlotCounts", "ProcessTerminated", "Runtime", "RuntimeObserver",
    "RuntimeStatistics", "Snapshot", "StateMutationError", "StateTypeError", "StatevisorError", "SystemClock",
    "TimerFired", "TimerHandle", "TimerRecord", "TrackedAction", "TransitionError", "UnknownActionType",
    "UntrackedAction", "WouldBlock", "__version__", "mermaid",
    "Backoff", "Budget", "CheckpointRejected", "ChildSpec", "CorruptCheckpoint", "FORMAT_VERSION", "Host",
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


# The machine model and handle layer (the "core") never import from the layers built on it.
CORE_MODULES = {
    "_actions",
    "_atomic",
    "_clock",
    "_collector",
    "_diagram",
    "_exceptions",
    "_file_identity",
    "_handle",
    "_identifiers",
    "_inputs",
    "_lifecycle",
    "_logrotation",
    "_logtail",
    "_machine",
    "_open_files",
    "_process",
    "_process_base",
    "_process_control",
    "_process_effects",
    "_private_files",
    "_readers",
    "_release",
    "_runtime",
    "_secrets",
    "_slots",
    "_snapshot",
    "_stalls",
    "_state",
    "_waiters",
}
FORBIDDEN_FOR_CORE = ("processes", "supervisor.daemon", "supervisor.control", "supervisor.metrics", "supervisor.cli")


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "supervisor." * bool(node.level) + (node.module or "")
            names.add(base)
    return names


def test_core_layer_imports_nothing_from_above_it() -> None:
    """Core modules import only each other and libraries: never the daemon, control API,
    metrics, CLI or process kinds."""
    for module in CORE_MODULES:
        imported = _imports(ROOT / "supervisor" / f"{module}.py")
        bad = {name for name in imported if name.startswith(FORBIDDEN_FOR_CORE)}
        assert set() == bad, f"{module} imports {bad}"


def test_every_core_module_is_listed() -> None:
    """The layering test covers every private module in the core (a new one must be placed)."""
    present = {p.stem for p in (ROOT / "supervisor").glob("_*.py") if p.stem != "__init__" and p.stem != "__main__"}
    assert set() == present - CORE_MODULES - LATER_LAYERS - DAEMON_SIDE


# Persistence and supervision build on the core; they, too, never import the daemon and above.
LATER_LAYERS = {
    "_backup", "_codec", "_sqlite", "_sqlite_file", "_sqlite_sql", "_store_reads", "_store_records", "_store_watch",
    "_policy", "_supervisor", "_supervisor_spec", "_host", "_retention", "_inspect", "_sim", "_simparts", "_summary",
}  # fmt: skip
# Above them: the command line and log configuration (logs.py, cli.py, bench/), not checked here.
DAEMON_SIDE = {"_config_check", "_config_policy", "_metrics_http", "_systemd"}


def test_persistence_and_supervision_import_nothing_from_above() -> None:
    """The store and the supervisors import only the core, each other and libraries."""
    for module in LATER_LAYERS:
        imported = _imports(ROOT / "supervisor" / f"{module}.py")
        bad = {name for name in imported if name.startswith(FORBIDDEN_FOR_CORE)}
        assert set() == bad, f"{module} imports {bad}"


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

    from supervisor import _exceptions

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
            if isinstance(node, ast.ClassDef) and path.name != "_exceptions.py":
                bases = {ast.unparse(b).rpartition(".")[2] for b in node.bases}
                assert set() == bases & set(classes), f"{path.relative_to(ROOT)}: {node.name} derives from {bases}"
