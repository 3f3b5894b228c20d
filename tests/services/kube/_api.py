"""The fake API server's REST surface: what clients (ours, and the real kubectl) talk to.

Routes: discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``), and for ``pods``,
``secrets``, ``configmaps`` (namespaced) and ``namespaces``: create, get, list, watch, delete;
``pods/log``. Errors are ``Status`` objects with the API server's reasons and messages
(``AlreadyExists``, ``NotFound``, ``Forbidden``, ``Invalid``, ``Expired``, ``TooManyRequests``...).
A request asking for ``as=Table`` (kubectl's printing) gets a ``meta.k8s.io/v1`` Table. Writes
may be given a commit latency (``write_latency``: an etcd commit is an fsync of its raft log, a
few milliseconds), which concurrent writes wait out together; by default they take none.

Authentication: a bearer token from :attr:`ApiServer.tokens`, or a client certificate signed by
the server's client CA (its CN is the user). Then what tests inject, in this order: throttling
(``429`` with ``Retry-After``), faults (``5xx``), RBAC denials, namespace quotas. Every request is
appended to the audit log, with its user and outcome.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._http import Request, Response
from ._kubelet import Container, Kubelet, follow
from ._store import Conflict, Object, SelectorError, Store, now_rfc3339, parse_selector

RESOURCES = {  # plural -> (kind, namespaced)
    "pods": ("Pod", True),
    "secrets": ("Secret", True),
    "configmaps": ("ConfigMap", True),
    "namespaces": ("Namespace", False),
}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(slots=True)
class Audit:
    verb: str
    resource: str
    namespace: str
    name: str
    code: int
    user: str
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verb": self.verb,
            "resource": self.resource,
            "namespace": self.namespace,
            "name": self.name,
            "code": self.code,
            "user": self.user,
            "at": self.at,
        }


@dataclass(slots=True)
class Faults:
    """What the tests inject. Counts go down as requests meet them."""

    throttle: int = 0  # the next N requests get 429
    retry_after: int = 1
    fail: int = 0  # the next N requests get ``fail_status``
    fail_status: int = 503
    lost: int = 0  # the next N creates are carried out, and their answers lost (a 504 from a proxy's timeout)
    forbidden: set[tuple[str, str, str]] = field(default_factory=set)  # (verb, resource, namespace or "*")
    quotas: dict[str, int] = field(default_factory=dict)  # namespace -> pods allowed (not yet ended)


class Gone(Exception):
    pass


class ApiServer:
    """The store, its kubelet, and the REST surface over them."""

    def __init__(
        self, tokens: dict[str, str] | None = None, bookmark_interval: float = 1.0, write_latency: float = 0.0
    ) -> None:
        self.store = Store()
        self.kubelet = Kubelet(self.store)
        self.tokens = dict(tokens or {})  # token -> user
        self.bookmark_interval = bookmark_interval
        self.write_latency = write_latency  # seconds a write takes to commit, as etcd's fsynced raft log does
        self.faults = Faults()
        self.audit: list[Audit] = []
        self.streams: set[asyncio.Queue[dict[str, Any]]] = set()
        for namespace in ("default", "kube-system"):
            self.store.create("namespaces", "", {"metadata": {"name": namespace}, "status": {"phase": "Active"}})

    # --- the entry point -----------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        user = self._user(request)
        route = _route(request.path)
        verb = _verb(request, route)
        resource, namespace, name, sub = route or ("", "", "", "")
        if user is None:
            return self._record(request, verb, route, "system:anonymous", _status(401, "Unauthorized", "Unauthorized"))
        if route is None:
            return self._record(request, verb, route, user, self._discovery(request))
        fault = self._fault(verb, resource, namespace, name, user)
        if fault is not None:
            return self._record(request, verb, route, user, fault)
        if self.write_latency > 0 and verb in ("create", "delete", "update", "patch"):
            await asyncio.sleep(self.write_latency)  # concurrent writes wait together, as etcd batches them
        try:
            response = await self._serve(request, verb, resource, namespace, name, sub, user)
        except SelectorError as exc:
            response = _status(400, "BadRequest", str(exc))
        except json.JSONDecodeError as exc:
            response = _status(400, "BadRequest", f"the body is not JSON: {exc}")
        if verb == "create" and response.status == 201 and self.faults.lost > 0:
            self.faults.lost -= 1
            self._record(request, verb, route, user, response)  # done, as the audit log says
            return _status(504, "Timeout", "the fake API server carried this create out and lost its answer")
        return self._record(request, verb, route, user, response)

    def _record(
        self, request: Request, verb: str, route: tuple[str, str, str, str] | None, user: str, response: Response
    ) -> Response:
        resource, namespace, name, sub = route or (request.path, "", "", "")
        if verb == "create" and not name and response.status in (201, 409, 403, 422):
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                name = str(json.loads(request.body)["metadata"].get("name") or "")
        shown = f"{resource}/{sub}" if sub else resource
        self.audit.append(Audit(verb, shown, namespace, name, response.status, user))
        return response

    def _user(self, request: Request) -> str | None:
        header = request.header("authorization")
        if header.startswith("Bearer "):
            return self.tokens.get(header[7:].strip())
        if request.peer_cert:
            for entry in request.peer_cert.get("subject", ()):
                for key, value in entry:
                    if key == "commonName":
                        return str(value)
        return None

    def _fault(self, verb: str, resource: str, namespace: str, name: str, user: str) -> Response | None:
        faults = self.faults
        if faults.throttle > 0:
            faults.throttle -= 1
            response = _status(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                details={"retryAfterSeconds": faults.retry_after},
            )
            response.headers["Retry-After"] = str(faults.retry_after)
            return response
        if faults.fail > 0:
            faults.fail -= 1
            reason = "ServiceUnavailable" if faults.fail_status == 503 else "InternalError"
            return _status(faults.fail_status, reason, "the fake API server was told to fail this request")
        for rule in ((verb, resource, namespace), (verb, resource, "*")):
            if rule in faults.forbidden:
                what = f'{resource} "{name}"' if name else resource
                where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
                return _status(
                    403,
                    "Forbidden",
                    f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" in API group ""{where}',
                    details={"name": name, "kind": resource} if name else {"kind": resource},
                )
        return None

    # --- discovery -----------------------------------------------------------------------

    def _discovery(self, request: Request) -> Response:
        path = request.path.rstrip("/")
        if path == "/version":
            return _json(
                200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-statevisor-fake", "platform": "linux/amd64"}
            )
        if path == "/api":
            return _json(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
                },
            )
        if path == "/apis":
            return _json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            resources = []
            for plural, (kind, namespaced) in RESOURCES.items():
                resources.append(
                    {
                        "name": plural,
                        "singularName": kind.lower(),
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": ["create", "delete", "get", "list", "watch"],
                        "shortNames": {"pods": ["po"], "configmaps": ["cm"], "namespaces": ["ns"]}.get(plural, []),
                    }
                )
            resources.append(
                {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]}
            )
            return _json(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})
        return _status(404, "NotFound", "the server could not find the requested resource")

    # --- resources -----------------------------------------------------------------------

    async def _serve(
        self, request: Request, verb: str, resource: str, namespace: str, name: str, sub: str, user: str
    ) -> Response:
        if resource not in RESOURCES:
            return _status(404, "NotFound", "the server could not find the requested resource")
        missing = namespace and resource != "namespaces" and self.store.get("namespaces", "", namespace) is None
        if missing and (verb in ("create", "get", "delete") or sub):
            details = {"name": namespace, "kind": "namespaces"}
            return _status(404, "NotFound", f'namespaces "{namespace}" not found', details=details)
        if sub == "log":
            return self._log(request, namespace, name)
        if sub:
            return _status(404, "NotFound", "the server could not find the requested resource")
        if verb == "create":
            return self._create(request, resource, namespace)
        if verb == "get":
            found = self.store.get(resource, namespace, name)
            if found is None:
                return _not_found(resource, name)
            return self._object(request, resource, found)
        if verb == "delete":
            return self._delete(request, resource, namespace, name)
        if verb == "list":
            return self._list(request, resource, namespace)
        if verb == "watch":
            return self._watch(request, resource, namespace)
        return _status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _create(self, request: Request, resource: str, namespace: str) -> Response:
        obj = json.loads(request.body or b"{}")
        if not isinstance(obj, dict):
            return _status(400, "BadRequest", "the body is not an object")
        kind = RESOURCES[resource][0]
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = (
                meta["generateName"] + base64.b32encode(time.time_ns().to_bytes(8, "big")).decode()[-5:].lower()
            )
        name = meta.get("name")
        problem = _invalid(resource, obj, namespace)
        if problem:
            return _status(
                422,
                "Invalid",
                f'{kind} "{name or ""}" is invalid: {problem}',
                details={"name": name or "", "kind": kind},
            )
        if resource == "pods":
            allowed = self.faults.quotas.get(namespace)
            if allowed is not None:
                used = sum(
                    1
                    for p in self.store.select("pods", namespace)
                    if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                )
                if used + 1 > allowed:
                    return _status(
                        403,
                        "Forbidden",
                        f'pods "{name}" is forbidden: exceeded quota: pod-count, requested: pods=1, '
                        f"used: pods={used}, limited: pods={allowed}",
                        details={"name": name, "kind": "pods"},
                    )
            obj.setdefault("spec", {}).setdefault("restartPolicy", "Always")
            obj["spec"].setdefault("terminationGracePeriodSeconds", 30)
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            if obj["spec"].get("schedulingGates"):  # as the API server's pod strategy does at create
                gated = {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "SchedulingGated",
                    "message": "Scheduling is blocked due to non-empty scheduling gates",
                    "lastProbeTime": None,
                    "lastTransitionTime": now_rfc3339(),
                }
                obj["status"]["conditions"] = [gated]
        obj["apiVersion"], obj["kind"] = "v1", kind
        try:
            created = self.store.create(resource, namespace, obj)
        except Conflict:
            return _status(
                409, "AlreadyExists", f'{resource} "{name}" already exists', details={"name": name, "kind": resource}
            )
        return _json(201, created)

    def _delete(self, request: Request, resource: str, namespace: str, name: str) -> Response:
        found = self.store.get(resource, namespace, name)
        if found is None:
            return _not_found(resource, name)
        options = json.loads(request.body) if request.body else {}
        grace = request.query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        if resource != "pods":
            return _json(200, self.store.delete(resource, namespace, name))
        if found["metadata"].get("deletionTimestamp"):
            return _json(200, found)  # already terminating: a second delete changes nothing
        seconds = int(grace) if grace is not None else int(found["spec"].get("terminationGracePeriodSeconds", 30))
        run = self.kubelet.runs.get((namespace, name))
        if seconds <= 0 or run is None or not run.processes():
            # Nothing runs (pending, or ended), or a forced delete: the object goes at once; the
            # kubelet kills whatever is left when it sees it gone.
            return _json(200, self.store.delete(resource, namespace, name))

        def mark(pod: Object) -> None:
            pod["metadata"]["deletionTimestamp"] = now_rfc3339()
            pod["metadata"]["deletionGracePeriodSeconds"] = max(seconds, 0)

        return _json(200, self.store.update("pods", namespace, name, mark))

    def _list(self, request: Request, resource: str, namespace: str) -> Response:
        selector = parse_selector(request.query.get("labelSelector", ""))
        fields = _fields(request.query.get("fieldSelector", ""))
        items = self.store.select(resource, namespace or None, selector, fields)
        rv = self.store.rv
        limit = int(request.query.get("limit", "0") or 0)
        token = request.query.get("continue", "")
        start = 0
        if token:
            state = json.loads(base64.b64decode(token))
            if state["rv"] < self.store.compacted:
                return _status(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent "
                    "list result. You can start a new list without the continue parameter.",
                )
            rv, start = state["rv"], state["start"]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.b64encode(json.dumps({"rv": rv, "start": start + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            items = items[start : start + limit]
        else:
            items = items[start:]
        kind = RESOURCES[resource][0]
        if _wants_table(request):
            return _json(200, _table(resource, items, meta))
        return _json(200, {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta, "items": items})

    def _watch(self, request: Request, resource: str, namespace: str) -> Response:
        selector = parse_selector(request.query.get("labelSelector", ""))
        fields = _fields(request.query.get("fieldSelector", ""))
        since_text = request.query.get("resourceVersion", "")
        since = int(since_text) if since_text not in ("", "0") else None
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout = float(request.query.get("timeoutSeconds", "1800") or 1800)
        table = _wants_table(request)
        started = self.store.watch(resource, namespace or None, selector, fields, since)
        if started is None:
            # The API server's watch cache answers an expired version with 200 and an ERROR event.
            error = {"type": "ERROR", "object": _expired(since or 0, self.store.compacted)}
            return Response(200, headers={"Content-Type": "application/json"}, stream=_once(error))
        watcher, backlog = started
        self.streams.add(watcher.queue)
        kind = RESOURCES[resource][0]

        async def events() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            ends = loop.time() + timeout
            try:
                for event in backlog:
                    yield _line(event, resource, table)
                while True:
                    left = ends - loop.time()
                    if left <= 0:
                        return
                    try:
                        async with asyncio.timeout(min(left, self.bookmark_interval)):
                            event = await watcher.queue.get()
                    except TimeoutError:
                        if bookmarks and watcher.queue.empty():
                            yield _line(
                                {
                                    "type": "BOOKMARK",
                                    "object": {
                                        "kind": kind,
                                        "apiVersion": "v1",
                                        "metadata": {"resourceVersion": str(self.store.rv)},
                                    },
                                },
                                resource,
                                False,
                            )
                        continue
                    yield _line(event, resource, table)
                    if event["type"] == "ERROR":
                        return
            finally:
                self.store.unwatch(watcher)
                self.streams.discard(watcher.queue)

        return Response(200, headers={"Content-Type": "application/json"}, stream=events())

    def _log(self, request: Request, namespace: str, name: str) -> Response:
        if self.store.get("pods", namespace, name) is None:
            return _not_found("pods", name)
        found = self.kubelet.container(namespace, name, request.query.get("container") or None)
        if isinstance(found, str):
            return _status(400, "BadRequest", found)
        container: Container = found
        since: float | None = None
        if "sinceSeconds" in request.query:
            since = time.time() - float(request.query["sinceSeconds"])
        elif "sinceTime" in request.query:
            since = _parse_time(request.query["sinceTime"])
        tail = int(request.query["tailLines"]) if "tailLines" in request.query else None
        stamps = request.query.get("timestamps", "").lower() in ("true", "1")
        stop = request.query.get("follow", "").lower() not in ("true", "1")

        async def lines() -> AsyncIterator[bytes]:
            async for line in follow(container, since, tail, stop):
                prefix = (_stamp(line.at) + " ").encode() if stamps else b""
                yield prefix + line.text + b"\n"

        headers = {"Content-Type": "text/plain"}
        if stop:  # the whole log at once, as the API server sends a log that is not followed
            return Response(200, body=b"", headers=headers, stream=lines())
        return Response(200, headers=headers, stream=lines())

    def _object(self, request: Request, resource: str, obj: Object) -> Response:
        if _wants_table(request):
            return _json(200, _table(resource, [obj], {"resourceVersion": obj["metadata"]["resourceVersion"]}))
        return _json(200, obj)

    # --- what the control port does ------------------------------------------------------

    def compact(self, close_watches: bool) -> int:
        """Compact the history; with ``close_watches`` every open watch gets the ``410`` its
        client would get from a watch cache that fell behind, and ends."""
        compacted = self.store.compact()
        if close_watches:
            error = {"type": "ERROR", "object": _expired(compacted - 1, compacted)}
            for queue in list(self.streams):
                queue.put_nowait(error)
        return compacted

    def delete_externally(self, namespace: str, name: str, grace: int) -> bool:
        """An operator's ``kubectl delete pod`` without a client: the same path."""
        request = Request("DELETE", "", {"gracePeriodSeconds": str(grace)}, {}, b"")
        return self._delete(request, "pods", namespace, name).status == 200

    def __repr__(self) -> str:
        return f"<ApiServer {self.store!r} audit={len(self.audit)} faults={self.faults}>"


# --- helpers -------------------------------------------------------------------------------


def _route(path: str) -> tuple[str, str, str, str] | None:
    """(resource, namespace, name, subresource) of an /api/v1 path; None for discovery."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[:2] != ["api", "v1"]:
        return None
    rest = parts[2:]
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace = rest[1]
        rest = rest[2:]
        return rest[0], namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
    if rest[0] == "namespaces":
        return "namespaces", "", rest[1] if len(rest) > 1 else "", ""
    return rest[0], "", rest[1] if len(rest) > 1 else "", ""


def _verb(request: Request, route: tuple[str, str, str, str] | None) -> str:
    if route is None:
        return "get"
    named = bool(route[2])
    if request.method == "POST":
        return "create"
    if request.method == "DELETE":
        return "delete" if named else "deletecollection"
    if request.method in ("PUT",):
        return "update"
    if request.method == "PATCH":
        return "patch"
    if named:
        return "get"
    return "watch" if request.query.get("watch", "").lower() in ("true", "1") else "list"


def _invalid(resource: str, obj: Object, namespace: str) -> str | None:
    meta = obj["metadata"]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return "metadata.name: Required value: name or generateName is required"
    if len(name) > 253 or not set(name) <= _NAME_CHARS or not name[0].isalnum() or not name[-1].isalnum():
        return (
            f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
            "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        )
    if meta.get("namespace") and namespace and meta["namespace"] != namespace:
        return (
            "metadata.namespace: Invalid value: the namespace of the object does not match the namespace on the request"
        )
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or len(key.split("/")[-1]) > 63:
            return f'metadata.labels: Invalid value: "{value}": must be no more than 63 characters'
    if resource != "pods":
        return None
    spec = obj.get("spec")
    if not isinstance(spec, dict) or not spec.get("containers"):
        return "spec.containers: Required value"
    seen = set()
    for index, container in enumerate([*spec.get("initContainers", []), *spec["containers"]]):
        if not container.get("name"):
            return f"spec.containers[{index}].name: Required value"
        if container["name"] in seen:
            return f'spec.containers[{index}].name: Duplicate value: "{container["name"]}"'
        seen.add(container["name"])
        if not container.get("image"):
            return f"spec.containers[{index}].image: Required value"
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        return f'spec.restartPolicy: Unsupported value: "{policy}"'
    return None


def _fields(text: str) -> dict[str, str]:
    found = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.replace("==", "=").partition("=")
        found[key.strip()] = value.strip()
    return found


def _wants_table(request: Request) -> bool:
    return "as=Table" in request.header("accept")


def _table(resource: str, items: list[Object], meta: dict[str, Any]) -> Object:
    columns = [("Name", "string", "name"), ("Age", "string", "")]
    if resource == "pods":
        columns = [
            ("Name", "string", "name"),
            ("Ready", "string", ""),
            ("Status", "string", ""),
            ("Restarts", "string", ""),
            ("Age", "string", ""),
        ]
    rows = []
    for obj in items:
        age = _age(obj["metadata"].get("creationTimestamp"))
        if resource == "pods":
            statuses = obj.get("status", {}).get("containerStatuses", [])
            ready = sum(1 for s in statuses if s.get("ready"))
            total = len(obj.get("spec", {}).get("containers", []))
            cells: list[Any] = [obj["metadata"]["name"], f"{ready}/{total}", _pod_status(obj), "0", age]
        else:
            cells = [obj["metadata"]["name"], age]
        partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append({"cells": cells, "object": partial})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": [
            {"name": n, "type": t, "format": f, "description": n, "priority": 0} for n, t, f in columns
        ],
        "rows": rows,
    }


def _pod_status(pod: Object) -> str:
    """What kubectl's STATUS column says: a container's waiting or terminated reason, else the phase."""
    status = pod.get("status", {})
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    if status.get("reason"):
        return str(status["reason"])
    for container in status.get("containerStatuses", []):
        state = container.get("state", {})
        for key in ("waiting", "terminated"):
            if state.get(key, {}).get("reason"):
                return str(state[key]["reason"])
    return str(status.get("phase", "Pending"))


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    seconds = max(0, int(time.time() - _parse_time(stamp)))
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m"


def _line(event: dict[str, Any], resource: str, table: bool) -> bytes:
    if table and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
        event = {
            "type": event["type"],
            "object": _table(
                resource, [event["object"]], {"resourceVersion": event["object"]["metadata"]["resourceVersion"]}
            ),
        }
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


async def _once(event: dict[str, Any]) -> AsyncIterator[bytes]:
    yield json.dumps(event).encode() + b"\n"


def _expired(since: int, compacted: int) -> Object:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {since} ({compacted})",
        "reason": "Expired",
        "code": 410,
    }


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> Response:
    body: Object = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return _json(code, body)


def _not_found(resource: str, name: str) -> Response:
    return _status(404, "NotFound", f'{resource} "{name}" not found', details={"name": name, "kind": resource})


def _json(code: int, body: Any) -> Response:
    return Response(code, json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"})


def _stamp(at: float) -> str:
    whole = math.floor(at)
    nanos = round((at - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _parse_time(text: str) -> float:
    """An RFC 3339 time, nanoseconds included, as seconds since the epoch."""
    head, _, fraction = text.rstrip("Z").partition(".")
    whole = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return whole + (float("0." + fraction) if fraction else 0.0)
