"""The daemon's TOML configuration: parsing and validation with errors that say where and what.

Every error names the file, the key path, the line and what was expected::

    config/bad.toml:14: process[1].restart: expected one of permanent, transient, temporary; got 'sometimes'

A configuration is validated whole before anything starts: an invalid file never starts a
half-configured daemon, and every mistake of a file is reported at once. Relative paths, in
``[daemon]`` and in a process's settings (the kind says which settings are paths), are relative
to the configuration file. Its error::

    ConfigurationError
    └── ConfigFileError          an invalid configuration file; ``file``, ``key``, ``line`` say where
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

from .._core.identifiers import name_problem
from .._errors import ConfigurationError, SettingsError
from .._supervision.policy import Backoff, Budget, Restart, Strategy, dependency_cycle
from ..cluster.settings import NAME as CLUSTER_NAME
from ..cluster.settings import ClusterSettings
from .plugins import Catalog, load_catalog


class ConfigFileError(ConfigurationError):
    """An invalid configuration file; ``file``, ``key``, ``line`` say where, the message what.

    A file with several mistakes is reported whole: ``errors`` holds every one (this error
    first, in the order of the file's checks), and the message has a line for each.
    """

    def __init__(self, file: str, key: str, line: int | None, message: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.file = file
        self.key = key
        self.line = line
        self.problem = message
        self.errors: list[ConfigFileError] = [self]

    @classmethod
    def several(cls, errors: list[ConfigFileError]) -> ConfigFileError:
        """One error that reports all of ``errors`` (at least one)."""
        first = errors[0]
        combined = cls(first.file, first.key, first.line, first.problem)
        combined.errors = list(errors)
        combined.args = ("\n".join(str(error.args[0]) for error in errors),)
        return combined


_TOP: dict[str, tuple[Any, Any]] = {
    "daemon": (dict, {}), "supervisor": (dict, {}), "process": (list, []), "kinds": (dict, {}), "executors": (dict, {}),
    "cluster": (dict, None),
}  # fmt: skip
"""The top-level tables every configuration may have; the kinds add their own (``host``)."""

REQUIRED = object()
"""In a table's spec: the key has no default."""
_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    list: "an array",
    dict: "a table",
}

LOOPS = ("uvloop", "asyncio")
LOG_LEVELS = ("debug", "info", "warning", "error")
SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, the last one a NUL


@dataclass(frozen=True)
class DaemonSettings:
    store: Path
    socket: Path
    metrics: str = "127.0.0.1:9464"
    log_level: str = "info"
    loop: str = "uvloop"
    shutdown_timeout: float = 10.0
    kill_grace: float = 5.0
    retention_days: float = 7.0
    ended_kept: int = 10_000
    max_connections: int = 1024
    slots: Mapping[str, int] = field(default_factory=dict)
    tcp: str | None = None
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_token_file: Path | None = None
    metrics_tls: bool = False
    log_dir: Path = Path("logs")
    run_dir: Path = Path("runs")
    web: str | None = None
    web_control: bool = False
    web_read: str = "token"
    web_tls: bool = False


@dataclass(frozen=True)
class ProcessSettings:
    name: str
    kind: str
    restart: Restart = Restart.PERMANENT
    depends_on: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    backoff: Backoff | None = None  # None: the [supervisor] backoff
    budget: Budget | None = None  # None: only the [supervisor] budget applies


@dataclass(frozen=True)
class RootSettings:
    """``[supervisor]``: how the declared processes are restarted (the root supervisor)."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    budget: Budget = field(default_factory=Budget)
    backoff: Backoff = field(default_factory=Backoff)


@dataclass(frozen=True)
class Config:
    path: Path
    daemon: DaemonSettings
    processes: tuple[ProcessSettings, ...]
    catalog: Catalog  # the kinds and executors it runs (statevisor's, installed packages', its [kinds])
    tables: Mapping[str, Any] = field(default_factory=dict)  # top-level tables the kinds own, as written
    supervisor: RootSettings = field(default_factory=RootSettings)
    cluster: ClusterSettings | None = None  # [cluster]: a member of a cluster of daemons on NATS


_DAEMON = {
    "store": (str, "statevisor.db"),
    "socket": (str, "statevisor.sock"),
    "metrics": (str, "127.0.0.1:9464"),
    "log_level": (str, "info"),
    "loop": (str, "uvloop"),
    "shutdown_timeout": ((int, float), 10.0),
    "kill_grace": ((int, float), 5.0),
    "retention_days": ((int, float), 7.0),
    "ended_kept": (int, 10_000),
    "max_connections": (int, 1024),
    "slots": (dict, {}),
    "tcp": (str, None),
    "token_file": (str, None),
    "tls_cert": (str, None),
    "tls_key": (str, None),
    "metrics_token_file": (str, None),
    "metrics_tls": (bool, False),
    "log_dir": (str, "logs"),
    "run_dir": (str, "runs"),
    "web": (str, None),
    "web_control": (bool, False),
    "web_read": (str, "token"),
    "web_tls": (bool, False),
}
WEB_READ = ("token", "open")
_PROCESS = {
    "name": (str, REQUIRED),
    "kind": (str, REQUIRED),
    "restart": (str, "permanent"),
    "depends_on": (list, []),
    "settings": (dict, {}),
    "backoff": (dict, None),
    "max_restarts": (int, None),
    "period": ((int, float), None),
}


_CLUSTER = {
    "servers": (list, REQUIRED),
    "name": (str, REQUIRED),
    "node": (str, REQUIRED),
    "lease": ((int, float), 20.0),
    "replicas": (int, 3),
    "window": (int, 256),
    "request_timeout": ((int, float), 5.0),
    "connect_timeout": ((int, float), 10.0),
    "credentials": (str, None),
    "token_file": (str, None),
    "tls_ca": (str, None),
    "tls_cert": (str, None),
    "tls_key": (str, None),
}


def cluster_settings(checker: Checker, data: Mapping[str, Any], base: Path) -> ClusterSettings | None:
    """``[cluster]``, checked: NATS URLs (TLS beyond loopback, with credentials), names fit for
    NATS subjects, a lease of a second or more, owner-only secret files."""
    raw = checker.section(data, "cluster", "cluster.", _CLUSTER)
    servers = raw["servers"] or []
    for index, server in enumerate(servers):
        if not checker.check(
            isinstance(server, str) and server.startswith(("nats://", "tls://")),
            f"cluster.servers[{index}]", f"expected a nats:// or tls:// URL; got {server!r}", "cluster", "servers",
        ):  # fmt: skip
            continue
        host = server.split("://", 1)[1].split("@")[-1].rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1"):
            checker.check(
                server.startswith("tls://"), f"cluster.servers[{index}]",
                f"{server} is beyond loopback: use tls:// (the servers' certificates verified against cluster.tls_ca)",
                "cluster", "servers",
            )  # fmt: skip
            checker.check(
                raw["credentials"] is not None or raw["token_file"] is not None, "cluster.credentials",
                f"{server} is beyond loopback: a NATS credentials file (or token_file) is required",
                "cluster", "servers",
            )  # fmt: skip
    checker.check(bool(servers), "cluster.servers", "expected at least one NATS server URL", "cluster", "servers")
    for key in ("name", "node"):
        value = raw[key]
        if value is not None:
            checker.check(
                bool(CLUSTER_NAME.match(value)), f"cluster.{key}",
                f"may hold only letters, digits, '-' and '_' (it is part of NATS subjects), 1 to 64; got {value!r}",
                "cluster", key,
            )  # fmt: skip
    lease = raw["lease"]
    checker.check(lease >= 1, "cluster.lease", f"expected seconds >= 1; got {lease!r}", "cluster", "lease")
    for key in ("request_timeout", "connect_timeout"):
        _positive(checker, raw[key], f"cluster.{key}", "cluster", key)
    _whole_at_least(checker, raw["window"], 1, "cluster.window", "cluster", "window")
    checker.check(
        raw["replicas"] in (1, 3, 5), "cluster.replicas", f"expected 1, 3 or 5; got {raw['replicas']!r}",
        "cluster", "replicas",
    )  # fmt: skip
    checker.check(
        (raw["tls_cert"] is None) == (raw["tls_key"] is None), "cluster.tls_cert",
        "tls_cert and tls_key go together (this daemon's client certificate)", "cluster", "tls_cert",
    )  # fmt: skip
    paths: dict[str, Path | None] = {}
    for key in ("credentials", "token_file", "tls_ca", "tls_cert", "tls_key"):
        paths[key] = (base / raw[key]).resolve() if raw[key] else None
        found = paths[key]
        if found is None:
            continue
        if not checker.check(found.is_file(), f"cluster.{key}", f"{found} is not a readable file", "cluster", key):
            continue
        if key in ("credentials", "token_file", "tls_key"):
            mode = found.stat().st_mode & 0o777
            checker.check(
                not mode & 0o077, f"cluster.{key}", f"{found} must be readable by its owner only (mode {mode:o})",
                "cluster", key,
            )  # fmt: skip
    if any(raw[key] is None for key in ("name", "node")) or not servers:
        return None
    return ClusterSettings(
        servers=tuple(str(s) for s in servers), name=raw["name"], node=raw["node"], lease=float(raw["lease"]),
        replicas=raw["replicas"], window=raw["window"], request_timeout=float(raw["request_timeout"]),
        connect_timeout=float(raw["connect_timeout"]), credentials=paths["credentials"],
        token_file=paths["token_file"], tls_ca=paths["tls_ca"], tls_cert=paths["tls_cert"], tls_key=paths["tls_key"],
    )  # fmt: skip


def _positive(checker: Checker, value: float, key: str, table: str, name: str) -> None:
    checker.check(value > 0, key, f"expected a number > 0; got {value!r}", table, name)


def _whole_at_least(checker: Checker, value: object, minimum: int, key: str, table: str, name: str) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    checker.check(ok, key, f"expected a whole number >= {minimum}; got {value!r}", table, name)


def _address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _on_loopback(address: str) -> bool:
    return address.rpartition(":")[0] in ("127.0.0.1", "localhost", "[::1]", "::1")


def _check_metrics_listener(checker: Checker, raw: Mapping[str, Any]) -> None:
    """Metrics beyond loopback are reachable by other machines: a token, over TLS, as for the
    control port (whose certificate they share)."""
    if raw["metrics_tls"]:
        checker.check(
            raw["tls_cert"] is not None and raw["tls_key"] is not None,
            "daemon.metrics_tls",
            "needs daemon.tls_cert and daemon.tls_key (the certificate the metrics endpoint serves)",
            "daemon",
            "metrics_tls",
        )
    if _on_loopback(raw["metrics"]):
        return
    checker.check(
        raw["metrics_token_file"] is not None,
        "daemon.metrics_token_file",
        f"required when daemon.metrics is not on loopback ({raw['metrics']}): anything on TCP beyond "
        "this machine needs a token",
        "daemon",
        "metrics",
    )
    checker.check(
        raw["metrics_tls"],
        "daemon.metrics_tls",
        f"must be true when daemon.metrics is not on loopback ({raw['metrics']}): the token must not cross "
        "the network in the clear",
        "daemon",
        "metrics",
    )


def _check_web_listener(checker: Checker, raw: Mapping[str, Any]) -> None:
    """The web console: the control API's rules. Logging in (to read, unless reading is open,
    and to control) takes the daemon's token; beyond loopback reading needs it too, over TLS."""
    web = raw["web"]
    if web is None:
        for key in ("web_control", "web_tls"):
            checker.check(not raw[key], f"daemon.{key}", "has no effect without daemon.web", "daemon", key)
        return
    if not checker.check(
        _address(web), "daemon.web", f"expected host:port (e.g. 127.0.0.1:8080); got {web!r}", "daemon", "web"
    ):
        return
    read = raw["web_read"]
    checker.check(
        read in WEB_READ,
        "daemon.web_read",
        f"expected one of {', '.join(WEB_READ)}; got {read!r}",
        "daemon",
        "web_read",
    )
    loopback = _on_loopback(web)
    checker.check(
        loopback or read != "open",
        "daemon.web_read",
        f'must be "token" when daemon.web is not on loopback ({web}): processes\' states and logs are not for '
        "every machine that can reach it",
        "daemon",
        "web_read",
    )
    if raw["token_file"] is None and raw["web_control"]:
        checker.check(
            False,
            "daemon.token_file",
            "required when daemon.web_control is true: controlling processes from the web console takes a login "
            "with the daemon's token",
            "daemon",
            "web_control",
        )
    elif raw["token_file"] is None and read != "open":
        checker.check(
            False,
            "daemon.token_file",
            "required when daemon.web is set: reading the web console takes a login with the daemon's token "
            '(or set daemon.web_read = "open", on loopback)',
            "daemon",
            "web",
        )
    if raw["web_tls"]:
        checker.check(
            raw["tls_cert"] is not None and raw["tls_key"] is not None,
            "daemon.web_tls",
            "needs daemon.tls_cert and daemon.tls_key (the certificate the web console serves)",
            "daemon",
            "web_tls",
        )
    checker.check(
        loopback or raw["web_tls"],
        "daemon.web_tls",
        f"must be true when daemon.web is not on loopback ({web}): the token must not cross the network in the clear",
        "daemon",
        "web",
    )


# --- finding lines and collecting mistakes -----------------------------------------------


class Lines:
    """Finds the line of a key (tomllib reports none): the first ``key =`` after its table header."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def find(self, table: str, key: str | None, occurrence: int = 0) -> int | None:
        header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
        seen, start = -1, None
        for number, line in enumerate(self.lines, start=1):
            if header.match(line):
                seen += 1
                if seen == occurrence:
                    start = number
                    break
        if start is None:
            return None
        if key is None:
            return start
        pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
        for number in range(start, len(self.lines) + 1):
            line = self.lines[number - 1]
            if number > start and re.match(r"^\s*\[", line):
                break
            if pattern.match(line):
                return number
        return start

    def find_in_entry(self, table: str, occurrence: int, key: str) -> int | None:
        """The line of a dotted ``key`` (``limits.stack``, ``argv[0]``) in the ``occurrence``-th
        ``[[table]]`` entry, sub-tables included: its last part, else its first, else the entry."""
        start = self.find(table, None, occurrence)
        if start is None:
            return None
        entry = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        end = next(
            (n for n in range(start + 1, len(self.lines) + 1) if entry.match(self.lines[n - 1])), len(self.lines) + 1
        )
        parts = [p.split("[")[0] for p in key.split(".")]
        for part in dict.fromkeys((parts[-1], parts[0])):
            pattern = re.compile(rf"^\s*({re.escape(part)}\s*=|\[[^\]]*\b{re.escape(part)}\s*\])")
            for number in range(start + 1, end):
                if pattern.match(self.lines[number - 1]):
                    return number
        return start


class Checker:
    """Checks a configuration and collects every mistake it finds, so that a file with several
    is reported whole (:meth:`finish` raises them together), not one per attempt to start."""

    def __init__(self, path: Path, text: str) -> None:
        self.file = str(path)
        self.lines = Lines(text)
        self.errors: list[ConfigFileError] = []

    def fail(self, key: str, message: str, table: str, name: str | None, occurrence: int = 0) -> ConfigFileError:
        return ConfigFileError(self.file, key, self.lines.find(table, name, occurrence), message)

    def report(self, error: ConfigFileError) -> None:
        self.errors.append(error)

    def section(
        self,
        data: Mapping[str, Any],
        table: str,
        prefix: str,
        spec: Mapping[str, tuple[Any, Any]],
        occurrence: int = 0,
    ) -> dict[str, Any]:
        """Check one table against ``spec``: key -> (expected type(s), default or REQUIRED).

        Each mistake is reported; a key that is wrong or missing gets its default (None for a
        required one), so that the checks after this one can go on.
        """
        for key in data:
            if key not in spec:
                self.report(
                    self.fail(
                        f"{prefix}{key}", f"unknown key; expected one of {', '.join(sorted(spec))}", table, key,
                        occurrence,
                    )
                )  # fmt: skip
        out: dict[str, Any] = {}
        for key, (kind, default) in spec.items():
            fallback = None if default is REQUIRED else default
            if key not in data:
                if default is REQUIRED:
                    self.report(self.fail(f"{prefix}{key}", "missing (required)", table, None, occurrence))
                out[key] = fallback
                continue
            value = data[key]
            kinds = kind if isinstance(kind, tuple) else (kind,)
            # bool is an int in Python, never in a configuration.
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
                got = _TYPE_NAMES.get(type(value), type(value).__name__)
                self.report(
                    self.fail(f"{prefix}{key}", f"expected {names}; got {got} {value!r}", table, key, occurrence)
                )
                out[key] = fallback
                continue
            out[key] = value
        return out

    def check(self, ok: bool, key: str, message: str, table: str, name: str | None, occurrence: int = 0) -> bool:
        """Report ``message`` unless ``ok``; returns ``ok``."""
        if not ok:
            self.report(self.fail(key, message, table, name, occurrence))
        return ok

    def finish(self) -> None:
        """Raise every mistake reported, as one :class:`ConfigFileError`."""
        if self.errors:
            raise ConfigFileError.several(self.errors)


# --- restart policies: [supervisor] and a [[process]]'s own ------------------------------


_DEFAULT_BACKOFF = Backoff()
_BACKOFF = {
    "initial": ((int, float), _DEFAULT_BACKOFF.initial),
    "maximum": ((int, float), _DEFAULT_BACKOFF.maximum),
    "multiplier": ((int, float), _DEFAULT_BACKOFF.multiplier),
    "jitter": ((int, float), _DEFAULT_BACKOFF.jitter),
    "reset_after": ((int, float), _DEFAULT_BACKOFF.reset_after),
}
_SUPERVISOR = {
    "strategy": (str, Strategy.ONE_FOR_ONE.value),
    "max_restarts": (int, Budget().max_restarts),
    "period": ((int, float), Budget().period),
    "backoff": (dict, {}),
}
CHILD_BUDGET_PERIOD = 60.0
"""A process's own budget counts restarts within this many seconds unless it sets ``period``."""


def _backoff(
    checker: Checker,
    data: Mapping[str, Any],
    prefix: str,
    table: str,
    index: int = 0,
    *,
    line: int | None = None,
    defaults: Backoff = _DEFAULT_BACKOFF,
) -> Backoff:
    """A backoff from its table, the keys it leaves out taken from ``defaults``; ``line`` is where
    a mistake in it is reported when the table has no header of its own (``backoff = { ... }``
    inline)."""
    reported = len(checker.errors)
    spec = {key: (kind, getattr(defaults, key)) for key, (kind, _) in _BACKOFF.items()}
    values = checker.section(data, table, prefix, spec, index)
    if line is not None:
        checker.errors[reported:] = [ConfigFileError(e.file, e.key, line, e.problem) for e in checker.errors[reported:]]
    try:
        return Backoff(**{k: float(v) for k, v in values.items()})
    except ConfigurationError as exc:
        checker.report(
            ConfigFileError(
                checker.file, prefix.rstrip("."), line or checker.lines.find(table, "backoff", index), str(exc)
            )
        )
        return _DEFAULT_BACKOFF


def _budget(checker: Checker, max_restarts: int, period: float, prefix: str, table: str, index: int = 0) -> Budget:
    try:
        return Budget(max_restarts, float(period))
    except ConfigurationError as exc:
        wrong = "max_restarts" if max_restarts < 0 else "period"
        checker.report(checker.fail(f"{prefix}{wrong}", str(exc), table, wrong, index))
        return Budget()


def root_settings(checker: Checker, data: Mapping[str, Any]) -> RootSettings:
    raw = checker.section(data, "supervisor", "supervisor.", _SUPERVISOR)
    strategies = [s.value for s in Strategy]
    known = checker.check(
        raw["strategy"] in strategies,
        "supervisor.strategy",
        f"expected one of {', '.join(strategies)}; got {raw['strategy']!r}",
        "supervisor",
        "strategy",
    )
    # backoff = { ... } inline in [supervisor] has no [supervisor.backoff] header to point at
    inline = None if checker.lines.find("supervisor.backoff", None) else checker.lines.find("supervisor", "backoff")
    backoff = _backoff(checker, raw["backoff"], "supervisor.backoff.", "supervisor.backoff", line=inline)
    return RootSettings(
        strategy=Strategy(raw["strategy"]) if known else Strategy.ONE_FOR_ONE,
        budget=_budget(checker, raw["max_restarts"], raw["period"], "supervisor.", "supervisor"),
        backoff=backoff,
    )


def process_policy(
    checker: Checker, item: Mapping[str, Any], index: int, root: Backoff = _DEFAULT_BACKOFF
) -> tuple[Backoff | None, Budget | None]:
    """A process's own backoff (the keys it leaves out are ``root``'s, the [supervisor.backoff]
    ones) and budget, if it sets them."""
    prefix = f"process[{index}]."
    backoff = None
    if item["backoff"] is not None:
        # The keys are inside the entry: a mistake points at its own line there.
        reported = len(checker.errors)
        backoff = _backoff(checker, item["backoff"], f"{prefix}backoff.", "process", index, defaults=root)
        checker.errors[reported:] = [
            ConfigFileError(
                e.file, e.key, checker.lines.find_in_entry("process", index, e.key.removeprefix(prefix)), e.problem
            )
            for e in checker.errors[reported:]
        ]
    budget = None
    if item["max_restarts"] is not None:
        period = item["period"] if item["period"] is not None else CHILD_BUDGET_PERIOD
        budget = _budget(checker, item["max_restarts"], period, prefix, "process", index)
    else:
        checker.check(
            item["period"] is None, f"{prefix}period", "period needs max_restarts (the budget it counts)",
            "process", "period", index,
        )  # fmt: skip
    return backoff, budget


# --- the whole file ----------------------------------------------------------------------


def load(path: str | Path, *, kinds: bool = True, discover: Callable[[str], list[EntryPoint]] | None = None) -> Config:
    """Read and validate a configuration file; raises :class:`ConfigFileError` naming every
    mistake. The kinds and executors come from entry points (``discover`` lists a group's, for
    tests) and from the file's ``[kinds]`` and ``[executors]``; modules they name are looked for
    in the installed packages, then in the file's directory.

    ``kinds=False`` reads the daemon's settings without loading any kind (the command line
    finding a daemon's socket): process kinds, their settings and their tables are then taken
    as written, and the catalog is empty."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(str(path), "", None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = _line_of(path.read_bytes(), exc.start)
        raise ConfigFileError(str(path), "", line, f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return parse(text, path, kinds=kinds, discover=discover)


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def parse(
    text: str, path: Path, *, kinds: bool = True, discover: Callable[[str], list[EntryPoint]] | None = None
) -> Config:
    checker = Checker(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        raise ConfigFileError(str(path), "", int(found.group(1)) if found else None, f"not valid TOML: {exc}") from None
    catalog = _catalog(checker, data, path.resolve().parent, discover) if kinds else Catalog()
    owned = catalog.tables()  # e.g. [host.NAME], the batch kind's
    if not kinds:  # every other table is taken as written
        owned = {name: "" for name, value in data.items() if isinstance(value, dict) and name not in _TOP}
    top: dict[str, tuple[Any, Any]] = {**_TOP, **dict.fromkeys(owned, (dict, {}))}
    data = checker.section(data, "", "", top)

    raw = checker.section(data["daemon"], "daemon", "daemon.", _DAEMON)
    for key in ("shutdown_timeout", "kill_grace", "retention_days"):
        _positive(checker, raw[key], f"daemon.{key}", "daemon", key)
    checker.check(
        raw["loop"] in LOOPS,
        "daemon.loop",
        f"expected one of {', '.join(LOOPS)}; got {raw['loop']!r}",
        "daemon",
        "loop",
    )
    checker.check(
        raw["log_level"] in LOG_LEVELS,
        "daemon.log_level",
        f"expected one of {', '.join(LOG_LEVELS)}; got {raw['log_level']!r}",
        "daemon",
        "log_level",
    )
    checker.check(
        _address(raw["metrics"]),
        "daemon.metrics",
        f"expected host:port (e.g. 127.0.0.1:9464); got {raw['metrics']!r}",
        "daemon",
        "metrics",
    )
    for key, minimum in (("ended_kept", 0), ("max_connections", 1)):
        _whole_at_least(checker, raw[key], minimum, f"daemon.{key}", "daemon", key)
    slots: dict[str, int] = {}
    for kind, limit in raw["slots"].items():
        _whole_at_least(checker, limit, 1, f"daemon.slots.{kind}", "daemon.slots", kind)
        slots[kind] = limit
    base = path.resolve().parent
    socket_path = (base / raw["socket"]).resolve()
    socket_bytes = len(os.fsencode(socket_path))
    checker.check(
        socket_bytes <= SOCKET_PATH_MAX,
        "daemon.socket",
        f"{socket_path} is {socket_bytes} bytes; a unix socket's path takes at most "
        f"{SOCKET_PATH_MAX} (choose a shorter one)",
        "daemon",
        "socket",
    )
    if raw["tcp"] is not None:
        checker.check(_address(raw["tcp"]), "daemon.tcp", f"expected host:port; got {raw['tcp']!r}", "daemon", "tcp")
        checker.check(
            raw["token_file"] is not None,
            "daemon.token_file",
            "required when daemon.tcp is set (anything on TCP needs a token)",
            "daemon",
            "tcp",
        )
        checker.check(
            _on_loopback(raw["tcp"]) or (raw["tls_cert"] is not None and raw["tls_key"] is not None),
            "daemon.tls_cert",
            "tls_cert and tls_key are required when daemon.tcp is not on loopback",
            "daemon",
            "tcp",
        )
    _check_metrics_listener(checker, raw)
    _check_web_listener(checker, raw)
    daemon = DaemonSettings(
        store=(base / raw["store"]).resolve(),
        socket=socket_path,
        metrics=raw["metrics"],
        log_level=raw["log_level"],
        loop=raw["loop"],
        shutdown_timeout=float(raw["shutdown_timeout"]),
        kill_grace=float(raw["kill_grace"]),
        retention_days=float(raw["retention_days"]),
        ended_kept=raw["ended_kept"],
        max_connections=raw["max_connections"],
        slots=slots,
        tcp=raw["tcp"],
        token_file=(base / raw["token_file"]).resolve() if raw["token_file"] else None,
        tls_cert=(base / raw["tls_cert"]).resolve() if raw["tls_cert"] else None,
        tls_key=(base / raw["tls_key"]).resolve() if raw["tls_key"] else None,
        metrics_token_file=(base / raw["metrics_token_file"]).resolve() if raw["metrics_token_file"] else None,
        metrics_tls=raw["metrics_tls"],
        log_dir=(base / raw["log_dir"]).resolve(),
        run_dir=(base / raw["run_dir"]).resolve(),
        web=raw["web"],
        web_control=raw["web_control"],
        web_read=raw["web_read"],
        web_tls=raw["web_tls"],
    )

    # A process's own backoff takes the keys it leaves out from [supervisor.backoff]. Read here
    # quietly: that table's mistakes are reported once, in their turn, below.
    root_backoff = root_settings(Checker(path, text), data["supervisor"]).backoff
    processes: list[ProcessSettings] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(data["process"]):
        prefix = f"process[{index}]."
        if not isinstance(entry, dict):
            checker.report(checker.fail(f"process[{index}]", "expected a table ([[process]])", "process", None, index))
            continue
        item = checker.section(entry, "process", prefix, _PROCESS, index)
        name, kind = item["name"], item["kind"]
        if name is not None:
            problem = name_problem(name)
            checker.check(problem is None, f"{prefix}name", f"{problem}; got {name!r}", "process", "name", index)
            if name in names:
                checker.check(False, f"{prefix}name", f"{name!r} is declared twice", "process", "name", index)
                name = None
            else:
                names[name] = index
        restarts = [r.value for r in Restart]
        checker.check(
            item["restart"] in restarts,
            f"{prefix}restart",
            f"expected one of {', '.join(restarts)}; got {item['restart']!r}",
            "process",
            "restart",
            index,
        )
        machines = catalog.machines
        if kind is not None and kinds:
            known = checker.check(
                kind in machines,
                f"{prefix}kind",
                f"unknown process kind {kind!r} (known: {', '.join(sorted(machines))})",
                "process",
                "kind",
                index,
            )
            if known:
                try:
                    machines[kind].check_settings(item["settings"])
                except SettingsError as exc:
                    line = checker.lines.find_in_entry("process", index, exc.key)
                    checker.report(ConfigFileError(checker.file, f"{prefix}settings.{exc.key}", line, exc.problem))
                else:
                    item["settings"] = machines[kind].resolve_paths(item["settings"], base)
        depends = item["depends_on"]
        if not checker.check(
            all(isinstance(d, str) for d in depends),
            f"{prefix}depends_on",
            "expected an array of process names",
            "process",
            "depends_on",
            index,
        ):
            depends = []
        backoff, budget = process_policy(checker, item, index, root_backoff)
        if name is None or kind is None:
            continue  # reported above; nothing further can be checked of it
        restart = Restart(item["restart"]) if item["restart"] in restarts else Restart.PERMANENT
        processes.append(ProcessSettings(name, kind, restart, tuple(depends), item["settings"], backoff, budget))
    for process in processes:
        index = names[process.name]
        for needed in process.depends_on:
            checker.check(
                needed in names,
                f"process[{index}].depends_on",
                f"names {needed!r}, which is not a declared process",
                "process",
                "depends_on",
                index,
            )
    cycle = dependency_cycle({p.name: [d for d in p.depends_on if d in names] for p in processes})
    if cycle:
        lines = [checker.lines.find_in_entry("process", names[n], "depends_on") for n in cycle[:-1]]
        where = ", ".join(f"{n!r} (line {line})" for n, line in zip(cycle, lines, strict=False))
        checker.report(
            ConfigFileError(
                checker.file,
                f"process[{names[cycle[0]]}].depends_on",
                lines[0],
                f"start-order dependencies form a cycle: {' -> '.join(cycle)}; declared at {where}",
            )
        )

    tables: dict[str, Any] = {}
    for table, kind in owned.items():
        tables[table] = data[table]
        if not kinds:
            continue
        try:
            catalog.kind(kind).check_tables({table: data[table]}, base)
        except SettingsError as exc:
            # exc.key is "TABLE.NAME.key" (host.cluster.user): the line is that key's in [TABLE.NAME].
            _, name, key = [*exc.key.split(".", 2), "", ""][:3]
            if key:
                checker.report(checker.fail(exc.key, exc.problem, f"{table}.{name}", key))
            else:  # the entry itself (not a table): its line in [TABLE]
                checker.report(checker.fail(exc.key, exc.problem, table, name or None))
    root = root_settings(checker, data["supervisor"])
    cluster = cluster_settings(checker, data["cluster"], base) if data["cluster"] is not None else None
    checker.finish()
    return Config(
        path=path.resolve(), daemon=daemon, processes=tuple(processes), catalog=catalog, tables=tables, supervisor=root,
        cluster=cluster,
    )  # fmt: skip


def _catalog(
    checker: Checker, data: Mapping[str, Any], base: Path, discover: Callable[[str], list[EntryPoint]] | None
) -> Catalog:
    """The kinds and executors: the entry points', and the ``[kinds]`` and ``[executors]`` tables'
    (modules they name are also looked for next to the file). Each problem is reported where its
    entry is written, or as the entry point's."""
    written = {}
    for table in ("kinds", "executors"):
        value = data.get(table, {})
        written[table] = value if isinstance(value, dict) else {}  # a wrong type is reported with the rest
    if (written["kinds"] or written["executors"]) and str(base) not in sys.path:
        sys.path.append(str(base))  # after the installed packages: those win

    def origin(table: str, name: str) -> str:
        return f"{checker.file}:{checker.lines.find(table, name)}"

    catalog, problems = load_catalog(written["kinds"], written["executors"], origin, discover=discover)
    for problem in problems:
        if problem.origin.startswith(checker.file + ":"):
            checker.report(
                checker.fail(f"{problem.table}.{problem.name}", problem.message, problem.table, problem.name)
            )
        else:
            checker.report(ConfigFileError(checker.file, f"{problem.table}.{problem.name}", None,
                                           f"{problem.message} ({problem.origin})"))  # fmt: skip
    return catalog
