"""The daemon's TOML configuration: parsing and validation with errors that say where and what.

Every error names the file, the key path, the line and what was expected::

    config/bad.toml:14: process[1].restart: expected one of permanent, transient, temporary; got 'sometimes'

A configuration is validated whole before anything starts: an invalid file never starts a
half-configured daemon. Relative paths, in ``[daemon]`` and in a process's settings (the kind says
which settings are paths), are relative to the configuration file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._core.identifiers import name_problem
from .._errors import ConfigError, SettingsError
from .._supervision.policy import Backoff, Budget, Restart, dependency_cycle
from .config_check import REQUIRED, Checker
from .config_policy import RootSettings, process_policy, root_settings

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
class Config:
    path: Path
    daemon: DaemonSettings
    processes: tuple[ProcessSettings, ...]
    hosts: Mapping[str, Mapping[str, Any]]
    supervisor: RootSettings = field(default_factory=RootSettings)


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
}
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


class Kinds(Protocol):
    """What the loader asks of the process kinds (``processes.CATALOG``); it knows none itself.

    ``check_settings`` and ``check_hosts`` raise :class:`SettingsError` naming the key;
    ``resolve_paths`` returns a process's settings with its relative local paths made absolute
    against ``base``, the configuration file's directory.
    """

    @property
    def kinds(self) -> Mapping[str, Any]: ...

    def check_settings(self, kind: str, settings: Mapping[str, Any]) -> None: ...

    def check_hosts(self, hosts: Mapping[str, Mapping[str, Any]], base: Path) -> None: ...

    def resolve_paths(self, kind: str, settings: Mapping[str, Any], base: Path) -> dict[str, Any]: ...


def load(path: str | Path, kinds: Kinds | None = None) -> Config:
    """Read and validate a configuration file; raises :class:`ConfigError` naming what is wrong.

    Without ``kinds``, process kinds, their settings and hosts are taken as written."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), "", None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = _line_of(path.read_bytes(), exc.start)
        raise ConfigError(str(path), "", line, f"not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    return parse(text, path, kinds)


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def parse(text: str, path: Path, kinds: Kinds | None = None) -> Config:
    checker = Checker(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        raise ConfigError(str(path), "", int(found.group(1)) if found else None, f"not valid TOML: {exc}") from None
    top: dict[str, tuple[Any, Any]] = {
        "daemon": (dict, {}), "supervisor": (dict, {}), "process": (list, []), "host": (dict, {}),
    }  # fmt: skip
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
    )

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
        if kinds is not None and kind is not None:
            known = checker.check(
                kind in kinds.kinds,
                f"{prefix}kind",
                f"unknown process kind {kind!r} (known: {', '.join(sorted(kinds.kinds))})",
                "process",
                "kind",
                index,
            )
            if known:
                try:
                    kinds.check_settings(kind, item["settings"])
                except SettingsError as exc:
                    line = checker.lines.find_in_entry("process", index, exc.key)
                    checker.report(ConfigError(checker.file, f"{prefix}settings.{exc.key}", line, exc.problem))
                else:
                    item["settings"] = kinds.resolve_paths(kind, item["settings"], base)
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
        backoff, budget = process_policy(checker, item, index)
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
            ConfigError(
                checker.file,
                f"process[{names[cycle[0]]}].depends_on",
                lines[0],
                f"start-order dependencies form a cycle: {' -> '.join(cycle)}; declared at {where}",
            )
        )

    hosts: dict[str, Mapping[str, Any]] = {}
    for name, host in data["host"].items():
        if checker.check(isinstance(host, dict), f"host.{name}", "expected a table ([host.NAME])", "host", name):
            hosts[name] = host
    if kinds is not None:
        try:
            kinds.check_hosts(hosts, base)
        except SettingsError as exc:
            # exc.key is "host.NAME.key": the line is that key's in the [host.NAME] table.
            _, name, key = [*exc.key.split(".", 2), "", ""][:3]
            checker.report(checker.fail(exc.key, exc.problem, f"host.{name}", key or None))
    root = root_settings(checker, data["supervisor"])
    checker.finish()
    return Config(path=path.resolve(), daemon=daemon, processes=tuple(processes), hosts=hosts, supervisor=root)
