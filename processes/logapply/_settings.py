"""A log-apply machine's settings, validated with errors that name the key.

``app`` names a registered :class:`Applier`; ``log`` is ``sqlite`` (embedded, the default) or
``jetstream`` (with ``servers``, ``stream``, ``replicas``, ``writer``, and ``lanes``: how many
appends a writer keeps in flight). Snapshots are taken
every ``snapshot_every`` entries or ``snapshot_bytes`` of entries, whichever comes first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor import SettingsError

from ._apply import APPLIERS
from ._replica import OnError

KEYS = frozenset(
    {"app", "log", "path", "servers", "stream", "replicas", "writer", "lanes", "snapshot_every",
     "snapshot_bytes", "on_error", "synchronous"}
)  # fmt: skip
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class MachineSpec:
    app: str
    log: str = "sqlite"
    path: str | None = None
    servers: tuple[str, ...] = ()
    stream: str | None = None
    replicas: int = 3
    writer: str | None = None
    lanes: int = 8
    snapshot_every: int = 100_000
    snapshot_bytes: int = 64 << 20
    on_error: OnError = OnError.SKIP
    synchronous: str = "FULL"


def _positive(settings: Mapping[str, Any], key: str, default: int) -> int:
    value = settings.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SettingsError(key, f"expected a positive integer; got {value!r}")
    return value


def _name(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is not None and (not isinstance(value, str) or not _NAME.match(value)):
        raise SettingsError(key, f"expected letters, digits, '-' and '_' only (a NATS name); got {value!r}")
    return value


def parse(settings: Mapping[str, Any]) -> MachineSpec:
    """Validate; keys starting with ``_`` are the machine's own and are skipped."""
    for key in settings:
        if not key.startswith("_") and key not in KEYS:
            raise SettingsError(key, f"unknown setting; expected one of {', '.join(sorted(KEYS))}")
    app = settings.get("app")
    if not isinstance(app, str) or app not in APPLIERS:
        raise SettingsError("app", f"expected one of the registered appliers {sorted(APPLIERS)}; got {app!r}")
    log = settings.get("log", "sqlite")
    if log not in ("sqlite", "jetstream"):
        raise SettingsError("log", f"expected 'sqlite' or 'jetstream'; got {log!r}")
    servers = settings.get("servers", [])
    if not isinstance(servers, list | tuple) or not all(isinstance(s, str) and s for s in servers):
        raise SettingsError("servers", f"expected a list of NATS URLs; got {servers!r}")
    if log == "jetstream" and not servers:
        raise SettingsError("servers", "log = 'jetstream' needs the NATS servers (e.g. ['nats://127.0.0.1:4222'])")
    path = settings.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise SettingsError("path", f"expected a file path; got {path!r}")
    on_error = settings.get("on_error", "skip")
    if on_error not in ("skip", "stop"):
        raise SettingsError(
            "on_error", f"expected 'skip' (the entry's result is the error) or 'stop'; got {on_error!r}"
        )
    synchronous = settings.get("synchronous", "FULL")
    if synchronous not in ("FULL", "NORMAL"):
        raise SettingsError("synchronous", f"expected 'FULL' (survives power loss) or 'NORMAL'; got {synchronous!r}")
    replicas = _positive(settings, "replicas", 3)
    if replicas > 5:
        raise SettingsError("replicas", f"JetStream allows 1 to 5 replicas; got {replicas}")
    lanes = _positive(settings, "lanes", 8)
    if lanes > 64:
        raise SettingsError("lanes", f"expected 1 to 64 appends in flight per writer; got {lanes}")
    return MachineSpec(
        app=app,
        log=log,
        path=path,
        servers=tuple(servers),
        stream=_name(settings, "stream"),
        replicas=replicas,
        writer=_name(settings, "writer"),
        lanes=lanes,
        snapshot_every=_positive(settings, "snapshot_every", 100_000),
        snapshot_bytes=_positive(settings, "snapshot_bytes", 64 << 20),
        on_error=OnError(on_error),
        synchronous=synchronous,
    )
