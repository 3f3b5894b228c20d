"""The fake API server's control port: what a test does to the cluster that no client can.

Plain HTTP on loopback, JSON in and out, on a port of its own that stays up while the API port
is stopped (an API server restart). See :class:`tests.services.kube.FakeKube` for the calls.
"""

from __future__ import annotations

import json
from typing import Any

from ._api import ApiServer
from ._http import HttpServer, Request, Response


class Control:
    def __init__(self, api: ApiServer, api_server: HttpServer) -> None:
        self.api = api
        self.api_server = api_server

    async def handle(self, request: Request) -> Response:
        try:
            body = json.loads(request.body) if request.body else {}
            result = await self._do(request.method, request.path, body)
        except (KeyError, ValueError, TypeError) as exc:
            return _json(400, {"error": repr(exc)})
        if result is None:
            return _json(404, {"error": f"no control call {request.method} {request.path}"})
        return _json(200, result)

    async def _do(self, method: str, path: str, body: dict[str, Any]) -> Any:
        api, store, kubelet, faults = self.api, self.api.store, self.api.kubelet, self.api.faults
        if method == "GET":
            if path == "/audit":
                return [entry.as_dict() for entry in api.audit]
            if path == "/pods":
                return [obj for (resource, _, _), obj in store.objects.items() if resource == "pods"]
            if path == "/state":
                return {
                    "rv": store.rv,
                    "compacted": store.compacted,
                    "watches": len(store.watchers),
                    "serving": self.api_server.serving,
                    "running": len(kubelet.runs),
                }
            return None
        if path == "/api/stop":
            await self.api_server.stop()
            return {"serving": False}
        if path == "/api/start":
            if not self.api_server.serving:
                await self.api_server.start()
            return {"serving": True}
        if path == "/compact":
            return {"compacted": api.compact(bool(body.get("close_watches", True)))}
        if path == "/throttle":
            faults.throttle = int(body["count"])
            faults.retry_after = int(body.get("retry_after", 1))
            return {"throttle": faults.throttle}
        if path == "/fail":
            faults.fail = int(body["count"])
            faults.fail_status = int(body.get("status", 503))
            return {"fail": faults.fail}
        if path == "/lose":
            faults.lost = int(body["count"])
            return {"lost": faults.lost}
        if path in ("/forbid", "/allow"):
            rule = (str(body["verb"]), str(body["resource"]), str(body.get("namespace", "*")))
            if path == "/forbid":
                faults.forbidden.add(rule)
            else:
                faults.forbidden.discard(rule)
            return {"forbidden": sorted(faults.forbidden)}
        if path == "/quota":
            if body.get("pods") is None:
                faults.quotas.pop(str(body["namespace"]), None)
            else:
                faults.quotas[str(body["namespace"])] = int(body["pods"])
            return {"quotas": faults.quotas}
        if path == "/namespace":
            if store.get("namespaces", "", body["name"]) is None:
                store.create(
                    "namespaces",
                    "",
                    {
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": {"name": body["name"]},
                        "status": {"phase": "Active"},
                    },
                )
            return {"namespace": body["name"]}
        if path in ("/secret", "/configmap"):
            resource, kind = ("secrets", "Secret") if path == "/secret" else ("configmaps", "ConfigMap")
            namespace, name = str(body["namespace"]), str(body["name"])
            key = "stringData" if resource == "secrets" else "data"
            if store.get(resource, namespace, name) is None:
                store.create(
                    resource,
                    namespace,
                    {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, key: dict(body["data"])},
                )
            return {"created": name}
        if path == "/oom":
            return {"killed": await kubelet.oom_kill(body["namespace"], body["name"], body.get("container"))}
        if path == "/evict":
            return {"evicted": await kubelet.evict(body["namespace"], body["name"])}
        if path == "/delete":
            return {"deleted": api.delete_externally(body["namespace"], body["name"], int(body.get("grace", 0)))}
        if path == "/unpullable":
            kubelet.unpullable = [str(m) for m in body["markers"]]
            return {"unpullable": kubelet.unpullable}
        if path == "/node-labels":
            kubelet.set_labels({str(k): str(v) for k, v in body["labels"].items()})
            return {"labels": kubelet.labels}
        if path == "/write-latency":
            api.write_latency = float(body["seconds"])
            return {"write_latency": api.write_latency}
        if path == "/bookmarks":
            api.bookmark_interval = float(body["interval"])
            return {"interval": api.bookmark_interval}
        if path == "/audit/clear":
            api.audit.clear()
            return {"cleared": True}
        return None


def _json(code: int, body: Any) -> Response:
    return Response(code, json.dumps(body).encode(), {"Content-Type": "application/json"})
