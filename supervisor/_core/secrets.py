"""Secret values in what statevisor shows: snapshots, ``ps --json``, ``store inspect``.

A kind names the keys whose values are secret (``Machine.secret_keys``, e.g. a command's
``env``). Wherever such a key appears in its state, an action's payload or a result, its value
is shown as :data:`MASK`: a table's values are masked one by one (the names stay readable, so
``env`` still tells which variables are set), anything else whole. Checkpoints keep the real
values, in a store only its owner can read; a value that should never be stored at all is
read where it is used (a shell process's ``env_files``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MASK = "***"


def redact(value: Any, keys: frozenset[str]) -> Any:
    """``value`` with the values under ``keys`` masked, at any depth (a copy where it differs)."""
    if not keys:
        return value
    if isinstance(value, Mapping):
        return {k: _masked(v) if k in keys else redact(v, keys) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(item, keys) for item in value]
    return value


def _masked(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {name: MASK for name in value}
    if isinstance(value, list | tuple):
        return [MASK for _ in value]
    return MASK
