"""What goes wrong in a cluster of daemons, on the core's bases::

StatevisorError
├── ClusterError                 the cluster cannot be joined or used (NATS unreachable, a node name taken)
│   └── LeaseLost                this daemon's membership lapsed: its processes are someone else's now
├── StoreError
│   └── Fenced                   a checkpoint write refused: another daemon owns the process now
└── Unavailable                  (the core's, retryable)
    ├── ProcessMoving            its daemon left; a survivor has not taken it yet (nothing was sent)
    ├── OwnerLost                its daemon left while handling the request (it may have been handled)
    └── ProcessUnreachable       its daemon is down and it is bound to that machine (a shell command)
"""

from __future__ import annotations

from .._errors import StatevisorError, StoreError, Unavailable


class ClusterError(StatevisorError):
    """The cluster cannot be joined or used: its NATS servers do not answer, this daemon's node
    name is held by another live daemon, a bucket cannot be made."""


class LeaseLost(ClusterError):
    """This daemon's membership lease lapsed (it was paused, or cut off from NATS, for longer
    than the lease): the survivors have taken its movable processes. It stops its copies and
    joins again as a fresh member."""


class Fenced(StoreError):
    """A checkpoint write was refused because the process's record changed under it: another
    daemon (or a newer incarnation of this one) owns the process now. ``owner`` names it."""

    def __init__(self, path: str, pid: str, owner: str) -> None:
        super().__init__(path, f"process {pid} is owned by {owner} now; this copy stops")
        self.pid = pid
        self.owner = owner


class ProcessMoving(Unavailable):
    """The process's daemon left the cluster and no survivor has taken the process yet; the
    request was not sent anywhere. Retry: it goes to the new owner."""

    def __init__(self, pid: str, owner: str, retry_after: float = 1.0) -> None:
        super().__init__(
            f"process {pid} is moving: its daemon {owner} left the cluster and no survivor has taken it yet "
            f"(nothing was sent; retry in {retry_after:g} s)",
            retry_after,
        )
        self.pid = pid
        self.owner = owner


class OwnerLost(Unavailable):
    """The process's daemon left the cluster (or stopped answering) while it had the request:
    it may or may not have been handled. Retry what is safe to repeat."""

    def __init__(self, pid: str, owner: str, retry_after: float = 1.0) -> None:
        super().__init__(
            f"process {pid}: its daemon {owner} left the cluster (or stopped answering) while handling the request; "
            "it may or may not have been handled",
            retry_after,
        )
        self.pid = pid
        self.owner = owner


class ProcessUnreachable(Unavailable):
    """The process's daemon is down and its kind is bound to that machine (a local command):
    it is not failed, its command runs on under the run monitor, and the daemon takes it back
    when it returns."""

    def __init__(self, pid: str, owner: str, kind: str, retry_after: float = 5.0) -> None:
        super().__init__(
            f"process {pid} ({kind}) is unreachable: its daemon {owner} is down, and a {kind} process is bound to "
            f"its machine (it comes back with {owner})",
            retry_after,
        )
        self.pid = pid
        self.owner = owner
