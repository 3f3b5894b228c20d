"""A cloud process's settings, validated with errors that name the key, and the pod they make.

The settings cover what a workflow step usually needs (image, command, env and env from
Secrets and ConfigMaps, resources, node selector, tolerations, service account, volumes,
labels and annotations, a deadline); ``pod_template`` is a Pod manifest for anything else, merged
under them. Every manifest is checked against lightkube's Pod model when the settings are: a
misspelt field (``nodeSelecter``) or a value of the wrong type is refused then, naming where,
rather than dropped on its way to the API server.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from supervisor import SettingsError
from supervisor.lowlevel import pack, unpack

from ._clusters import DNS_LABEL, LABEL_VALUE
from ._status import MAIN

KEYS = frozenset({
    "cluster", "namespace", "image", "command", "args", "working_dir", "env", "secret_env", "config_map_env",
    "env_from_secrets", "env_from_config_maps", "resources", "node_selector", "tolerations", "service_account",
    "volumes", "volume_mounts", "labels", "annotations", "active_deadline", "image_pull_policy", "pod_template",
    "schedule_timeout", "start_timeout", "stop_grace", "ttl", "log_max_bytes", "log_backups",
})  # fmt: skip
OURS = "statevisor.io/"  # the label and annotation prefix the kind keeps for itself
MANAGED = {"app.kubernetes.io/managed-by": "statevisor"}
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_REF = re.compile(r"^([a-z0-9][-a-z0-9.]*)/([-._a-zA-Z0-9]+)$")


@dataclass(frozen=True, slots=True)
class PodSettings:
    cluster: str
    namespace: str | None
    container: Mapping[str, Any]  # the main container, as the API wants it
    pod_spec: Mapping[str, Any]  # the pod's spec beside its containers
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    template: Mapping[str, Any]
    schedule_timeout: float = 300.0
    start_timeout: float = 300.0
    stop_grace: int | None = None  # None: the pod's terminationGracePeriodSeconds (Kubernetes' 30 by default)
    ttl: float | None = None  # None: the cluster's pod_ttl
    log_max_bytes: int = 10 * 2**20
    log_backups: int = 3


def parse(settings: Mapping[str, Any], *, check_pod: bool = True) -> PodSettings:
    """Validate; keys starting with ``_`` are the machine's own and are skipped. With
    ``check_pod`` (what a spawn's check does), the pod they make is checked too."""
    settings = unpack(pack(dict(settings)))  # plain values, copied at once (a state's are journaled)
    for key in settings:
        if not key.startswith("_") and key not in KEYS and key not in _STATE_KEYS:
            raise SettingsError(key, f"unknown setting; expected one of {', '.join(sorted(KEYS))}")
    cluster = settings.get("cluster")
    if not isinstance(cluster, str) or not cluster:
        raise SettingsError("cluster", f"expected the name of a [kubernetes.NAME]; got {cluster!r}")
    namespace = settings.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not DNS_LABEL.match(namespace)):
        raise SettingsError("namespace", f"expected a namespace name (lower case, digits, '-'); got {namespace!r}")
    template = _table(settings, "pod_template")
    container: dict[str, Any] = {"name": MAIN}
    image = settings.get("image")
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise SettingsError("image", f"expected an image reference; got {image!r}")
        container["image"] = image
    elif not any(c.get("name") == MAIN and c.get("image") for c in _containers(template)):
        raise SettingsError("image", "missing: give image (or a container named main with an image in pod_template)")
    for key, field in (("command", "command"), ("args", "args")):
        value = settings.get(key)
        if value is not None:
            if not isinstance(value, list | tuple) or not all(isinstance(a, str) for a in value):
                raise SettingsError(key, f"expected a list of strings; got {value!r}")
            container[field] = list(value)
    if settings.get("working_dir") is not None:
        container["workingDir"] = _string(settings, "working_dir")
    plain = _strings(settings, "env", names=True)
    env: list[dict[str, Any]] = [{"name": name, "value": value} for name, value in plain.items()]
    for key, ref in (("secret_env", "secretKeyRef"), ("config_map_env", "configMapKeyRef")):
        for name, source in _strings(settings, key, names=True).items():
            found = _REF.match(source)
            if not found:
                raise SettingsError(
                    f"{key}.{name}", f'expected "OBJECT/KEY" (an object of the namespace and its key); got {source!r}'
                )
            env.append({"name": name, "valueFrom": {ref: {"name": found.group(1), "key": found.group(2)}}})
    if env:
        container["env"] = env
    env_from = [{"secretRef": {"name": n}} for n in _names(settings, "env_from_secrets")]
    env_from += [{"configMapRef": {"name": n}} for n in _names(settings, "env_from_config_maps")]
    if env_from:
        container["envFrom"] = env_from
    resources = _table(settings, "resources")
    for part, quantities in resources.items():
        if part not in ("requests", "limits") or not isinstance(quantities, Mapping):
            raise SettingsError(f"resources.{part}", 'expected tables requests and limits of quantities (cpu = "500m")')
    if resources:
        container["resources"] = {part: {k: str(v) for k, v in q.items()} for part, q in resources.items()}
    if settings.get("volume_mounts") is not None:
        container["volumeMounts"] = _list_of_tables(settings, "volume_mounts")
    policy = settings.get("image_pull_policy")
    if policy is not None:
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError("image_pull_policy", f"expected Always, IfNotPresent or Never; got {policy!r}")
        container["imagePullPolicy"] = policy
    pod_spec: dict[str, Any] = {}
    selector = _strings(settings, "node_selector")
    if selector:
        pod_spec["nodeSelector"] = selector
    if settings.get("tolerations") is not None:
        pod_spec["tolerations"] = _list_of_tables(settings, "tolerations")
    if settings.get("volumes") is not None:
        pod_spec["volumes"] = _list_of_tables(settings, "volumes")
    if settings.get("service_account") is not None:
        pod_spec["serviceAccountName"] = _string(settings, "service_account")
    deadline = settings.get("active_deadline")
    if deadline is not None:
        if type(deadline) is not int or deadline < 1:
            raise SettingsError(
                "active_deadline", f"expected whole seconds >= 1 (activeDeadlineSeconds); got {deadline!r}"
            )
        pod_spec["activeDeadlineSeconds"] = deadline
    labels = _strings(settings, "labels")
    annotations = _strings(settings, "annotations")
    for key, table in (("labels", labels), ("annotations", annotations)):
        for name in table:
            if name.startswith(OURS) or name in MANAGED:
                raise SettingsError(f"{key}.{name}", f"{OURS}* and app.kubernetes.io/managed-by are the kind's own")
    for name, value in labels.items():
        if not LABEL_VALUE.match(value):
            raise SettingsError(
                f"labels.{name}", f"a label value is at most 63 letters, digits, '-', '_' or '.'; got {value!r}"
            )
    if template:
        policy = (template.get("spec") or {}).get("restartPolicy", "Never")
        if policy != "Never":
            raise SettingsError(
                "pod_template", f"spec.restartPolicy must be Never (a process is one run); got {policy!r}"
            )
    spec = PodSettings(
        cluster=cluster,
        namespace=namespace,
        container=container,
        pod_spec=pod_spec,
        labels=labels,
        annotations=annotations,
        template=template,
        schedule_timeout=_seconds(settings, "schedule_timeout", 300.0),
        start_timeout=_seconds(settings, "start_timeout", 300.0),
        stop_grace=None if settings.get("stop_grace") is None else _whole(settings, "stop_grace", 30, least=0),
        ttl=_seconds(settings, "ttl", None, zero=True),
        log_max_bytes=_whole(settings, "log_max_bytes", 10 * 2**20, least=1024),
        log_backups=_whole(settings, "log_backups", 3, least=0),
    )
    if check_pod:
        pod = manifest(spec, name="sv-check", namespace=namespace or "default", labels=dict(MANAGED), annotations={})
        check_manifest(pod)
    return spec


# Keys the machine writes into the state beside the settings (not settings themselves).
_STATE_KEYS = frozenset({
    "pod", "uid", "phase", "node", "waiting_for", "since", "problem", "problem_since", "result", "pausing",
    "created_at", "started_at", "attempts", "adopted",
})  # fmt: skip


def manifest(
    spec: PodSettings, *, name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    """The pod to create: the settings over ``pod_template``, then what the kind insists on
    (its name, namespace and labels, ``restartPolicy: Never``)."""
    pod_spec = {**spec.pod_spec, "containers": [spec.container]}
    if spec.stop_grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = spec.stop_grace
    ours: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"labels": dict(spec.labels), "annotations": dict(spec.annotations)},
        "spec": pod_spec,
    }
    pod = merge(_copy(spec.template), _copy(ours))
    meta = pod.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    meta.pop("generateName", None)
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["annotations"] = {**(meta.get("annotations") or {}), **annotations}
    if not meta["annotations"]:
        del meta["annotations"]
    pod["spec"]["restartPolicy"] = "Never"
    return pod


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: tables key by key, containers by name, other lists replaced."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            base[key] = merge(dict(base[key]), value)
        elif key in ("containers", "initContainers") and isinstance(base.get(key), list):
            named = {c.get("name"): i for i, c in enumerate(base[key]) if isinstance(c, Mapping)}
            merged = list(base[key])
            for container in value:
                index = named.get(container.get("name"))
                if index is None:
                    merged.append(_copy(container))
                else:
                    merged[index] = merge(dict(merged[index]), container)
            base[key] = merged
        else:
            base[key] = _copy(value)
    return base


def _copy(value: Any) -> Any:
    """A deep copy of plain values, by msgpack (in C): what checkpoints carry round-trips exactly."""
    return unpack(pack(value))


def check_manifest(pod: Mapping[str, Any]) -> None:
    """Refuse what lightkube's Pod model would not carry to the API server whole: a field it
    does not know, a value of the wrong type. (Remembered for the last pods checked: a
    thousand processes spawned with the same settings are checked once.)"""
    _check_packed(pack(pod))


@functools.lru_cache(maxsize=256)
def _check_packed(packed: bytes) -> None:
    import msgspec
    from lightkube.resources.core_v1 import Pod

    pod = unpack(packed)
    try:
        carried = Pod.from_dict(dict(pod)).to_dict()
    except msgspec.ValidationError as exc:
        raise SettingsError("pod_template", f"not a valid Pod: {exc}") from None
    unknown = _dropped(pod, carried, "")
    if unknown:
        raise SettingsError("pod_template", f"{unknown}: not a field of a Pod (a misspelling?)")


def _dropped(given: Any, carried: Any, path: str) -> str | None:
    if isinstance(given, Mapping):
        if not isinstance(carried, Mapping):
            return path or "."
        for key, value in given.items():
            if value is None:
                continue
            where = f"{path}.{key}" if path else str(key)
            if key not in carried:
                return where
            found = _dropped(value, carried[key], where)
            if found:
                return found
    elif isinstance(given, list) and isinstance(carried, list):
        for index, (value, kept) in enumerate(zip(given, carried, strict=False)):
            found = _dropped(value, kept, f"{path}[{index}]")
            if found:
                return found
    return None


def pod_name(process: str, action_id: str) -> str:
    """``sv-<the process name, made a DNS label>-<10 hex of the action id's hash>``, at most 63."""
    slug = re.sub(r"[^a-z0-9]+", "-", process.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(action_id.encode()).hexdigest()[:10]
    return f"sv-{slug}-{digest}" if slug else f"sv-{digest}"


def label_value(text: str) -> str:
    """``text`` if it is a valid label value, else a hash of it that is."""
    if LABEL_VALUE.match(text):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def identity(owner: str, pid: str, action_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations that make a pod this action's (and its lookup key)."""
    labels = {
        **MANAGED,
        OURS + "owner": owner,
        OURS + "pid": label_value(pid),
        OURS + "action": hashlib.sha256(action_id.encode()).hexdigest()[:32],
    }
    return labels, {OURS + "process-id": pid, OURS + "action-id": action_id}


def selector(owner: str) -> dict[str, str]:
    """The labels every pod of an owner carries: what its watches select."""
    return {**MANAGED, OURS + "owner": owner}


# --- small validators ------------------------------------------------------------------------


def _table(settings: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = settings.get(key, {})
    if not isinstance(value, Mapping):
        raise SettingsError(key, f"expected a table; got {value!r}")
    return dict(value)


def _strings(settings: Mapping[str, Any], key: str, *, names: bool = False) -> dict[str, str]:
    value = _table(settings, key)
    for name, text in value.items():
        if not isinstance(text, str):
            raise SettingsError(f"{key}.{name}", f"expected a string; got {text!r}")
        if names and not _ENV_NAME.match(name):
            raise SettingsError(f"{key}.{name}", "expected a variable name (letters, digits, '_', '-', '.')")
    return value


def _names(settings: Mapping[str, Any], key: str) -> list[str]:
    value = settings.get(key, [])
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) and DNS_NAME.match(n) for n in value):
        raise SettingsError(key, f"expected a list of object names; got {value!r}")
    return list(value)


DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _list_of_tables(settings: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = settings.get(key)
    if not isinstance(value, list | tuple) or not all(isinstance(item, Mapping) for item in value):
        raise SettingsError(key, f"expected a list of tables, as the Kubernetes API has them; got {value!r}")
    return [dict(item) for item in value]


def _string(settings: Mapping[str, Any], key: str) -> str:
    value = settings.get(key)
    if not isinstance(value, str) or not value:
        raise SettingsError(key, f"expected a non-empty string; got {value!r}")
    return value


def _seconds(settings: Mapping[str, Any], key: str, default: float | None, *, zero: bool = False) -> Any:
    value = settings.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (value == 0 and not zero):
        raise SettingsError(key, f"expected seconds {'>= 0' if zero else '> 0'}; got {value!r}")
    return float(value)


def _whole(settings: Mapping[str, Any], key: str, default: int, *, least: int) -> int:
    value = settings.get(key, default)
    if type(value) is not int or value < least:
        raise SettingsError(key, f"expected an integer >= {least}; got {value!r}")
    return value


def _containers(template: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = template.get("spec")
    containers = spec.get("containers") if isinstance(spec, Mapping) else None
    return [c for c in containers if isinstance(c, Mapping)] if isinstance(containers, list) else []
