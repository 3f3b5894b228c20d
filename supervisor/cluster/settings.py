"""A cluster member's settings: the ``[cluster]`` table of a daemon's configuration."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SAFE_LEASE = 15.0
"""The shortest lease that outlasts a NATS server's death: a third of it since the last beat
landed, then up to about 10 s for the bucket's stream to elect a leader, and the beat retried."""

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Cluster and node names: they are parts of NATS subjects and bucket names."""


@dataclass(frozen=True)
class ClusterSettings:
    """Where the cluster's NATS servers are and who this daemon is among its members.

    ``lease``: seconds a member stays one without a heartbeat (it beats every third of it);
    after that the survivors take its movable processes. It must outlast a NATS stream's leader
    election (followers wait 4 to 9 s for a lost leader before they campaign) plus a heartbeat,
    or a NATS server's death costs members their leases: :data:`SAFE_LEASE`. ``window``: checkpoint writes in
    flight at once. ``replicas``: copies of each bucket (3 on a 3-node NATS cluster).
    ``request_timeout``: how long a request routed to another daemon may go unanswered before
    it fails with a retryable error (calls add their own timeout).
    """

    servers: tuple[str, ...]
    name: str
    node: str
    lease: float = 20.0
    replicas: int = 3
    window: int = 256
    request_timeout: float = 5.0
    connect_timeout: float = 10.0
    credentials: Path | None = None  # a NATS .creds file (user JWT and nkey seed), owner-only
    token_file: Path | None = None  # a NATS token, owner-only
    tls_ca: Path | None = None  # the CA that signed the servers' certificates (verified)
    tls_cert: Path | None = None  # this daemon's client certificate, for servers that ask for one
    tls_key: Path | None = None

    @property
    def heartbeat(self) -> float:
        """Seconds between two heartbeats: a third of the lease, so two may be lost."""
        return self.lease / 3

    def subject(self, *parts: str) -> str:
        """A NATS subject of this cluster's (``sv.<cluster>.<parts...>``)."""
        return ".".join(("sv", self.name, *parts))

    def bucket(self, role: str) -> str:
        """The name of one of the cluster's key-value buckets (``sv_<cluster>_<role>``)."""
        return f"sv_{self.name}_{role}"
