"""A remote host as the configuration declares it (``[host.NAME]``), validated key by key.

Everything about *how* to reach a host (address, user, keys, known_hosts, jump host) and how
gently (channels, connection interval, keepalives, retries) lives here, so a batch process only
names its host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import SettingsError

SCHEDULERS = ("slurm", "pbs", "lsf", "sge")

_DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


@dataclass(frozen=True, slots=True)
class HostSpec:
    """How to reach one host and its scheduler. Times are seconds."""

    name: str
    address: str
    port: int = 22
    user: str | None = None
    key: str | None = None  # private key file; None: the agent and ssh's default keys
    certificate: str | None = None  # an OpenSSH certificate for ``key``
    agent: bool = True  # use $SSH_AUTH_SOCK when set
    known_hosts: str = _DEFAULT_KNOWN_HOSTS
    jump: str | None = None  # another declared host to tunnel through (ProxyJump)
    scheduler: str = "slurm"
    work_dir: str = ".statevisor"  # relative paths are under the remote home directory
    poll_interval: float = 30.0
    max_channels: int = 8  # sshd's MaxSessions defaults to 10: stay below it
    connect_interval: float = 5.0  # at least this long between two connection attempts
    connect_timeout: float = 15.0
    command_timeout: float = 120.0
    keepalive: float = 15.0
    backoff_max: float = 300.0
    retries: int = 8  # failed attempts at one operation before the process pauses
    env: Mapping[str, str] | None = None  # set on the remote side for every command

    @property
    def known_hosts_path(self) -> str:
        return os.path.expanduser(self.known_hosts)

    def status_path(self, name: str) -> str:
        """Where job ``name``'s script writes its exit status (see :mod:`._script`)."""
        return f"{self.work_dir}/{name}.status"

    def __repr__(self) -> str:
        who = f"{self.user}@" if self.user else ""
        via = f" via {self.jump}" if self.jump else ""
        return f"<HostSpec {self.name} {who}{self.address}:{self.port}{via} {self.scheduler}>"


_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "address": (str, "a host name or IP address"),
    "port": (int, "a TCP port (1-65535)"),
    "user": (str, "a user name"),
    "key": (str, "a private key file"),
    "certificate": (str, "an OpenSSH certificate file"),
    "agent": (bool, "true or false"),
    "known_hosts": (str, "a known_hosts file"),
    "jump": (str, "the name of another [host.NAME]"),
    "scheduler": (str, f"one of {', '.join(SCHEDULERS)}"),
    "work_dir": (str, "a directory on the host"),
    "poll_interval": ((int, float), "seconds > 0"),
    "max_channels": (int, "an integer >= 1"),
    "connect_interval": ((int, float), "seconds >= 0"),
    "connect_timeout": ((int, float), "seconds > 0"),
    "command_timeout": ((int, float), "seconds > 0"),
    "keepalive": ((int, float), "seconds >= 0 (0: off)"),
    "backoff_max": ((int, float), "seconds > 0"),
    "retries": (int, "an integer >= 0"),
    "env": (dict, "a table of strings"),
}


def parse_host(name: str, table: Mapping[str, Any], base: Path | None = None) -> HostSpec:
    """Validate a ``[host.NAME]`` table; raises :class:`SettingsError` naming the key.

    Relative local paths (key, certificate, known_hosts) are taken from ``base`` (the
    configuration file's directory) so a daemon started elsewhere finds the same files.
    """
    for key in table:
        if key not in _KEYS:
            raise SettingsError(key, f"unknown key; expected one of {', '.join(sorted(_KEYS))}")
    if "address" not in table:
        raise SettingsError("address", "missing: every host needs an address")
    values: dict[str, Any] = {}
    for key, value in table.items():
        types, expected = _KEYS[key]
        if isinstance(value, bool) and types is not bool:
            raise SettingsError(key, f"expected {expected}; got {value!r}")
        if not isinstance(value, types):
            raise SettingsError(key, f"expected {expected}; got {value!r}")
        values[key] = value
    if not values["address"]:
        raise SettingsError("address", "must not be empty")
    if not 0 < values.get("port", 22) < 65536:
        raise SettingsError("port", f"expected a TCP port (1-65535); got {values['port']!r}")
    if values.get("scheduler", "slurm") not in SCHEDULERS:
        raise SettingsError("scheduler", f"expected one of {', '.join(SCHEDULERS)}; got {values['scheduler']!r}")
    for key in ("poll_interval", "connect_timeout", "command_timeout", "backoff_max"):
        if key in values and not values[key] > 0:
            raise SettingsError(key, f"expected seconds > 0; got {values[key]!r}")
    for key in ("connect_interval", "keepalive"):
        if key in values and values[key] < 0:
            raise SettingsError(key, f"expected seconds >= 0; got {values[key]!r}")
    if values.get("max_channels", 1) < 1:
        raise SettingsError("max_channels", f"expected an integer >= 1; got {values['max_channels']!r}")
    if values.get("retries", 0) < 0:
        raise SettingsError("retries", f"expected an integer >= 0; got {values['retries']!r}")
    env = values.get("env", {})
    for var, text in env.items():
        if not isinstance(text, str) or not var.replace("_", "a").isalnum():
            raise SettingsError(f"env.{var}", 'expected NAME = "string" (letters, digits, _)')
    if values.get("jump") == name:
        raise SettingsError("jump", "a host cannot be its own jump host")
    for key in ("key", "certificate", "known_hosts"):
        if key in values and base is not None:
            path = Path(os.path.expanduser(values[key]))
            values[key] = str(path if path.is_absolute() else (base / path).resolve())
    for key in ("poll_interval", "connect_interval", "connect_timeout", "command_timeout", "keepalive", "backoff_max"):
        if key in values:
            values[key] = float(values[key])
    return HostSpec(name=name, **values)


def parse_hosts(tables: Mapping[str, Mapping[str, Any]], base: Path | None = None) -> dict[str, HostSpec]:
    """Every declared host; a ``jump`` must name another declared host, without cycles."""
    hosts: dict[str, HostSpec] = {}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise SettingsError(f"host.{name}", "expected a table ([host.NAME])")
        try:
            hosts[name] = parse_host(name, table, base)
        except SettingsError as exc:
            raise SettingsError(f"host.{name}.{exc.key}", exc.problem) from None
    for name, host in hosts.items():
        seen = {name}
        hop = host.jump
        while hop is not None:
            if hop not in hosts:
                raise SettingsError(f"host.{name}.jump", f"no [host.{hop}] is declared")
            if hop in seen:
                raise SettingsError(f"host.{name}.jump", f"jump hosts form a cycle through {hop!r}")
            seen.add(hop)
            hop = hosts[hop].jump
    return hosts
