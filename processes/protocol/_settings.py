"""A protocol role's settings, validated with errors that name the key.

``protocol`` names a registered protocol (``bootloader``, or ``bootloader@1`` for a version);
``role`` is ``host`` or ``client``; ``link`` its address (``channel:NAME``, ``unix:PATH``,
``tcp:HOST:PORT``, ``pty:PATH``); ``listen`` whether this side listens (creates the pty), the
client by default; ``options`` the role's own (an image, a flash), checked by its class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor import Machine, SettingsError

from ._driver import Timing
from ._links import Faults, parse_address
from ._spec import Specification, lookup
from .errors import UnknownProtocol

KEYS = frozenset(
    {"protocol", "role", "link", "listen", "options", "step_timeout", "retransmit", "report_every", "faults"}
)
FAULT_KEYS = frozenset({"drop", "duplicate", "corrupt", "delay", "delay_max", "reorder", "seed"})


@dataclass(frozen=True, slots=True)
class RoleSettings:
    protocol: str
    role: str
    link: str
    listen: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    timing: Timing = field(default_factory=Timing)
    report_every: float = 0.25
    faults: Faults | None = None

    @property
    def spec(self) -> Specification[Any]:
        return lookup(self.protocol)


def _seconds(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise SettingsError(key, f"expected seconds > 0; got {value!r}")
    return float(value)


def _chance(faults: Mapping[str, Any], key: str) -> float:
    value = faults.get(key, 0.0)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise SettingsError(f"faults.{key}", f"expected a chance from 0 to below 1; got {value!r}")
    return float(value)


def parse(settings: Mapping[str, Any]) -> RoleSettings:
    """Validate; keys starting with ``_`` are the machine's own and are skipped."""
    for key in settings:
        if not key.startswith("_") and key not in KEYS:
            raise SettingsError(key, f"unknown setting; expected one of {', '.join(sorted(KEYS))}")
    name = settings.get("protocol")
    if not isinstance(name, str) or not name:
        raise SettingsError("protocol", f"expected a registered protocol's name; got {name!r}")
    try:
        spec = lookup(name)
    except UnknownProtocol as exc:
        raise SettingsError("protocol", exc.problem) from None
    role = settings.get("role")
    if role not in ("host", "client"):
        raise SettingsError("role", f"expected 'host' or 'client'; got {role!r}")
    link = settings.get("link")
    if not isinstance(link, str):
        raise SettingsError(
            "link", f"expected an address (channel:NAME, unix:PATH, tcp:HOST:PORT, pty:PATH); got {link!r}"
        )
    try:
        address = parse_address(link)
    except ValueError as exc:
        raise SettingsError("link", str(exc)) from None
    listen = settings.get("listen", role == "client")
    if not isinstance(listen, bool):
        raise SettingsError("listen", f"expected true or false; got {listen!r}")
    options = settings.get("options", {})
    if not isinstance(options, Mapping):
        raise SettingsError("options", f"expected a table of the role's options; got {options!r}")
    spec.role(role).check_options(options)
    step_timeout = _seconds(settings, "step_timeout", 10.0)
    retransmit = settings.get("retransmit", [0.002, 1.0])
    if (
        not isinstance(retransmit, list | tuple)
        or len(retransmit) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in retransmit)
        or retransmit[0] > retransmit[1]
    ):
        raise SettingsError("retransmit", f"expected [shortest, longest] seconds, both > 0; got {retransmit!r}")
    faults = settings.get("faults")
    parsed_faults: Faults | None = None
    if faults is not None:
        if not isinstance(faults, Mapping):
            raise SettingsError("faults", f"expected a table of fault chances; got {faults!r}")
        for key in faults:
            if key not in FAULT_KEYS:
                raise SettingsError(f"faults.{key}", f"unknown fault; expected one of {', '.join(sorted(FAULT_KEYS))}")
        if faults.get("reorder") and address.ordered:
            raise SettingsError("faults.reorder", f"a {address.transport} link is a stream: it keeps its frames' order")
        seed = faults.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise SettingsError("faults.seed", f"expected a whole number; got {seed!r}")
        parsed_faults = Faults(
            drop=_chance(faults, "drop"),
            duplicate=_chance(faults, "duplicate"),
            corrupt=_chance(faults, "corrupt"),
            delay=_chance(faults, "delay"),
            delay_max=_seconds(faults, "delay_max", 0.01),
            reorder=_chance(faults, "reorder"),
            seed=seed,
        )
    shortest, longest = float(retransmit[0]), float(retransmit[1])
    timing = Timing(
        step_timeout=step_timeout,
        rto_min=shortest,
        rto_max=longest,
        rto_initial=min(max(0.05, shortest), longest),
    )
    return RoleSettings(
        protocol=name,
        role=role,
        link=link,
        listen=listen,
        options=dict(options),
        timing=timing,
        report_every=_seconds(settings, "report_every", 0.25),
        faults=parsed_faults,
    )


def resolve_paths(settings: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths made absolute against ``base``: a unix socket's or a pty's path, and the
    options the role declares as paths (``local_options``)."""
    resolved = dict(settings)
    link = resolved.get("link")
    if isinstance(link, str):
        transport, _, where = link.partition(":")
        if transport in ("unix", "pty") and where:
            resolved["link"] = f"{transport}:{Machine.local_path(where, base)}"
    options = resolved.get("options")
    name, role = resolved.get("protocol"), resolved.get("role")
    if isinstance(options, Mapping) and isinstance(name, str) and isinstance(role, str):
        spec = lookup(name)
        keys = spec.role(role).local_options
        resolved["options"] = {
            k: Machine.local_path(v, base) if k in keys and isinstance(v, str) and v else v for k, v in options.items()
        }
    return resolved
