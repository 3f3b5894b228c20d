"""A Kubernetes cluster as the configuration declares it (``[kubernetes.NAME]``), validated key by
key, and the credentials it names, loaded with lightkube's configuration code.

How to reach the API server (a kubeconfig and one of its contexts, or the service account of
the pod the daemon runs in) and how gently (requests per second, timeouts, the retry budget)
live here, so that a process only names its cluster.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from supervisor import SettingsError

from .errors import KubeconfigError

DEFAULT_KUBECONFIG = "~/.kube/config"
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """One Kubernetes cluster. Times are seconds."""

    name: str
    kubeconfig: str | None = None  # None with in_cluster; else a path (default ~/.kube/config)
    context: str | None = None  # None: the kubeconfig's current-context
    in_cluster: bool = False
    namespace: str | None = None  # None: the context's namespace, else "default"
    owner: str = "statevisor"  # a label value: which daemon's pods these are
    qps: float = 20.0  # requests per second (0: no limit)
    burst: int = 40
    request_timeout: float = 30.0
    retries: int = 8  # failed attempts at one request before the process pauses
    backoff_max: float = 30.0
    watch_timeout: int = 300  # a watch request is renewed after this long (server-side timeoutSeconds)
    connections: int = 8  # kept-alive connections for requests (watches and followed logs have their own)
    log_streams: int = 64  # pods whose logs are followed live at once
    kill_timeout: float = 3.0  # a kill waits this long for a delete to be accepted, then owes it
    pod_ttl: float = 60.0  # a finished pod is deleted this long after its outcome and logs are kept
    proxy: str | None = None

    def __repr__(self) -> str:
        where = "in-cluster" if self.in_cluster else f"{self.kubeconfig} context={self.context or '(current)'}"
        return f"<ClusterSpec {self.name} {where} namespace={self.namespace or '(context)'} owner={self.owner}>"


_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "kubeconfig": (str, "a kubeconfig file"),
    "context": (str, "the name of a context in the kubeconfig"),
    "in_cluster": (bool, "true or false"),
    "namespace": (str, "a namespace name"),
    "owner": (str, "a label value (letters, digits, '-', '_', '.'; at most 63)"),
    "qps": ((int, float), "requests per second >= 0 (0: no limit)"),
    "burst": (int, "an integer >= 1"),
    "request_timeout": ((int, float), "seconds > 0"),
    "retries": (int, "an integer >= 0"),
    "backoff_max": ((int, float), "seconds > 0"),
    "watch_timeout": (int, "whole seconds >= 10"),
    "connections": (int, "an integer >= 1"),
    "log_streams": (int, "an integer >= 0"),
    "kill_timeout": ((int, float), "seconds > 0"),
    "pod_ttl": ((int, float), "seconds >= 0"),
    "proxy": (str, "an http:// or https:// proxy URL"),
}


def parse_cluster(name: str, table: Mapping[str, Any], base: Path | None = None) -> ClusterSpec:
    """Validate a ``[kubernetes.NAME]`` table; raises :class:`SettingsError` naming the key.

    A relative ``kubeconfig`` is taken from ``base`` (the configuration file's directory).
    """
    for key in table:
        if key not in _KEYS:
            raise SettingsError(key, f"unknown key; expected one of {', '.join(sorted(_KEYS))}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        types, expected = _KEYS[key]
        if (isinstance(value, bool) and types is not bool) or not isinstance(value, types):
            raise SettingsError(key, f"expected {expected}; got {value!r}")
        values[key] = value
    if values.get("in_cluster") and ("kubeconfig" in values or "context" in values):
        raise SettingsError(
            "in_cluster", "in_cluster = true uses the pod's service account: give no kubeconfig or context"
        )
    if "namespace" in values and not DNS_LABEL.match(values["namespace"]):
        raise SettingsError(
            "namespace", f"expected a namespace name (lower case, digits, '-'); got {values['namespace']!r}"
        )
    if not values.get("owner", "x") or not LABEL_VALUE.match(values.get("owner", "x")):
        raise SettingsError("owner", f"expected {_KEYS['owner'][1]}; got {values['owner']!r}")
    for key in ("request_timeout", "backoff_max", "kill_timeout"):
        if key in values and not values[key] > 0:
            raise SettingsError(key, f"expected seconds > 0; got {values[key]!r}")
    for key in ("qps", "pod_ttl"):
        if key in values and values[key] < 0:
            raise SettingsError(key, f"expected a number >= 0; got {values[key]!r}")
    for key, least in (("burst", 1), ("retries", 0), ("connections", 1), ("log_streams", 0), ("watch_timeout", 10)):
        if key in values and values[key] < least:
            raise SettingsError(key, f"expected {_KEYS[key][1]}; got {values[key]!r}")
    if "proxy" in values and not values["proxy"].startswith(("http://", "https://")):
        raise SettingsError("proxy", f"expected {_KEYS['proxy'][1]}; got {values['proxy']!r}")
    if not values.get("in_cluster"):
        path = Path(os.path.expanduser(values.get("kubeconfig", DEFAULT_KUBECONFIG)))
        if base is not None and not path.is_absolute():
            path = (base / path).resolve()
        values["kubeconfig"] = str(path)
    for key in ("qps", "request_timeout", "backoff_max", "kill_timeout", "pod_ttl"):
        if key in values:
            values[key] = float(values[key])
    return ClusterSpec(name=name, **values)


def parse_clusters(tables: Mapping[str, Any], base: Path | None = None) -> dict[str, ClusterSpec]:
    """Every ``[kubernetes.NAME]``; errors name the key as ``kubernetes.NAME.key``."""
    clusters: dict[str, ClusterSpec] = {}
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise SettingsError(f"kubernetes.{name}", "expected a table ([kubernetes.NAME])")
        try:
            clusters[name] = parse_cluster(name, table, base)
        except SettingsError as exc:
            raise SettingsError(f"kubernetes.{name}.{exc.key}", exc.problem) from None
    return clusters


def check_credentials(spec: ClusterSpec) -> None:
    """What can be checked before anything starts: the kubeconfig reads and has the context
    (or the service account's files exist). Raises :class:`SettingsError` naming the key."""
    try:
        load_config(spec)
    except KubeconfigError as exc:
        raise SettingsError(f"kubernetes.{spec.name}.{exc.key}", str(exc)) from None


def load_config(spec: ClusterSpec) -> Any:
    """The cluster's lightkube ``SingleConfig``: its server, CA, user credentials, namespace."""
    from lightkube.config.kubeconfig import KubeConfig
    from lightkube.core.exceptions import ConfigError

    if spec.in_cluster:
        if not (SERVICE_ACCOUNT / "token").exists():
            raise KubeconfigError(
                f"in_cluster = true, but {SERVICE_ACCOUNT}/token does not exist: the daemon is not running "
                "in a pod with a service account token mounted",
                "in_cluster",
            )
        try:
            single = KubeConfig.from_service_account(SERVICE_ACCOUNT).get()
        except (ConfigError, OSError, KeyError) as exc:
            raise KubeconfigError(f"the pod's service account cannot be used: {exc}", "in_cluster") from None
    else:
        assert spec.kubeconfig is not None
        path = Path(spec.kubeconfig)
        if not path.is_file():
            raise KubeconfigError(f"kubeconfig {path} does not exist or is not a file")
        try:
            config = KubeConfig.from_file(path)
        except (ConfigError, OSError, ValueError, KeyError, TypeError) as exc:  # unreadable or malformed
            raise KubeconfigError(f"cannot read the kubeconfig {path}: {exc}") from None
        try:
            single = config.get(spec.context) if spec.context else config.get()
        except ConfigError as exc:
            raise KubeconfigError(f"{exc} in {path}", "context") from None
        except KeyError as exc:  # a context naming a cluster or user the file does not have
            raise KubeconfigError(
                f"context {spec.context or config.current_context!r} names {exc}, which {path} does not declare",
                "context",
            ) from None
    if single is None:
        raise KubeconfigError(f"the kubeconfig {spec.kubeconfig} has no current-context; name one with context")
    cluster = single.cluster
    if cluster.insecure:
        raise KubeconfigError(
            f"context {single.context_name!r} sets insecure-skip-tls-verify: statevisor always verifies the API "
            "server's certificate; give its CA (certificate-authority) instead"
        )
    url = urlsplit(cluster.server)
    if url.scheme != "https" and url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise KubeconfigError(
            f"context {single.context_name!r} reaches {cluster.server} without TLS: plain http is accepted on "
            "loopback alone (kubectl proxy)"
        )
    return single
