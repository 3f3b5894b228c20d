"""The cloud kind's errors, on the core's :class:`~supervisor.BackendError`,
:class:`~supervisor.TransportError` and :class:`~supervisor.ConfigurationError`::

    BackendError
    ├── TransportError
    │   ├── ApiUnreachable       no answer, or 429, 5xx and timeouts past the retry budget
    │   └── CredentialsRejected  the API server refused the credentials (401), refreshed or not
    └── ApiRefused               the API server refused a request with a Status; code, reason and message say why
        ├── Forbidden            RBAC forbids the verb on the resource (403); verb and resource named
        ├── QuotaExceeded        a namespace quota has no room for the pod (403): waited on, retried
        ├── AlreadyExists        an object of that name exists (409)
        ├── NotFound             no object of that name, or no such namespace (404)
        ├── Expired              a watch or list from a resourceVersion the server no longer has (410): list again
        └── PodConflict          a pod of the action's name exists and is not the action's (its labels differ)
    ConfigurationError
    └── KubeconfigError          the kubeconfig, its context or the in-cluster credentials cannot be used

A process pauses itself on the transport errors (resume retries), waits on ``QuotaExceeded``, and
fails on the others, with the server's message.
"""

from __future__ import annotations

from supervisor import BackendError, ConfigurationError, TransportError


class ApiUnreachable(TransportError):
    """The API server of ``cluster`` could not be reached, or kept answering 429, 5xx or timing
    out, past the cluster's retry budget. Retried with backoff first; then the process pauses."""

    def __init__(self, cluster: str, problem: str) -> None:
        super().__init__(cluster, problem)
        self.cluster = cluster
        self.args = (f"cluster {cluster!r}: {problem}",)


class CredentialsRejected(TransportError):
    """The API server of ``cluster`` answered 401: the token expired, the certificate is not
    trusted, the exec plugin's credential was refused. The process pauses; fix the credentials,
    then resume."""

    def __init__(self, cluster: str, problem: str) -> None:
        super().__init__(cluster, problem)
        self.cluster = cluster
        self.args = (f"cluster {cluster!r}: {problem}",)


class ApiRefused(BackendError):
    """The API server refused a request: ``code`` (HTTP status), ``reason`` (the Status's, such
    as ``Invalid``) and ``message`` (its words)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}" if reason else f"{code}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class Forbidden(ApiRefused):
    """RBAC forbids ``verb`` on ``resource`` (in ``namespace``) for the credentials in use."""

    def __init__(self, verb: str, resource: str, namespace: str, message: str) -> None:
        super().__init__(403, "Forbidden", message)
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        where = f" in namespace {namespace!r}" if namespace else ""
        self.args = (f"forbidden to {verb} {resource}{where}: {message}",)


class QuotaExceeded(ApiRefused):
    """A ResourceQuota of the namespace has no room for the pod now; the process waits and
    tries again (with backoff) until it has."""


class AlreadyExists(ApiRefused):
    """An object of that name exists already (409 AlreadyExists)."""


class NotFound(ApiRefused):
    """No object of that name, or no such namespace (404)."""


class Expired(ApiRefused):
    """A watch or a list continued from a resourceVersion the server has compacted away (410):
    the client lists again."""


class PodConflict(ApiRefused):
    """A pod named as this action's pod exists, but its labels say it belongs to another
    process or action: it is left alone and the process fails."""

    def __init__(self, name: str, namespace: str, found: dict[str, str]) -> None:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or "no labels"
        super().__init__(
            409, "AlreadyExists", f"pod {namespace}/{name} exists and is not this action's (its labels: {labels})"
        )
        self.name = name
        self.namespace = namespace
        self.found = found


class KubeconfigError(ConfigurationError):
    """The kubeconfig cannot be read, names no such context, or the in-cluster service
    account's token and CA are not where a pod has them; ``key`` is the cluster table's key
    that leads to it (``kubeconfig``, ``context``, ``in_cluster``)."""

    def __init__(self, message: str, key: str = "kubeconfig") -> None:
        super().__init__(message)
        self.key = key
