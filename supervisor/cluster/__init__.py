"""Several daemons as one cluster on NATS JetStream: a shared checkpoint store, membership
leases, fencing, failover and routing (the manual's "Clusters" page).

Its names are imported when first used, so that reading a configuration does not load the
NATS client: ``from supervisor.cluster import ClusterMember``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "ClusterError": "errors", "Fenced": "errors", "LeaseLost": "errors", "OwnerLost": "errors",
    "ProcessMoving": "errors", "ProcessUnreachable": "errors", "ClusterMember": "member",
    "ClusterSettings": "settings", "ClusterStore": "store", "Router": "routing",
}  # fmt: skip

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'supervisor.cluster' has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
