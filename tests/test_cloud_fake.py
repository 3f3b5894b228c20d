"""The fake API server's fidelity, checked with the real kubectl (Debian's kubernetes-client,
which the test command installs) and with raw requests where kubectl cannot show a behaviour
(bookmarks, 410 after compaction): what the cloud kind is tested against must behave as an API
server does for what the kind uses."""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services.kube import TOKEN, FakeKube, kubectl_program
from tests.services.loopback import wait_for


@pytest.fixture
def namespace(fake_kube: FakeKube) -> str:
    if kubectl_program() is None:
        pytest.fail("missing kubectl (Debian package kubernetes-client): run bash .ci/test, which installs it")
    name = f"fid-{secrets.token_hex(4)}"
    fake_kube.control("/namespace", {"name": name})
    return name


def run(fake: FakeKube, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    return fake.kubectl("-n", namespace, *args)


def start(fake: FakeKube, namespace: str, name: str, script: str, *labels: str) -> None:
    flags = [f"--labels={','.join(labels)}"] if labels else []
    done = run(
        fake,
        namespace,
        "run",
        name,
        "--image=busybox:1.36",
        "--restart=Never",
        *flags,
        "--command",
        "--",
        "sh",
        "-c",
        script,
    )
    assert 0 == done.returncode, done.stderr


def phase(fake: FakeKube, namespace: str, name: str) -> str:
    done = run(fake, namespace, "get", "pod", name, "-o", "jsonpath={.status.phase}")
    return done.stdout.strip() if done.returncode == 0 else ""


def test_kubectl_gets_and_lists_pods_with_their_status(fake_kube: FakeKube, namespace: str) -> None:
    """kubectl get prints the server's table (NAME READY STATUS RESTARTS AGE) and -o json the
    pods with their resourceVersions, phases and container states."""
    start(fake_kube, namespace, "done", "echo hi")
    wait_for("the pod to succeed", lambda: phase(fake_kube, namespace, "done") == "Succeeded")
    table = run(fake_kube, namespace, "get", "pods")
    assert 0 == table.returncode, table.stderr
    header, row = table.stdout.splitlines()
    assert ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] == header.split()
    assert ["done", "0/1", "Completed", "0"] == row.split()[:4]
    listed = json.loads(run(fake_kube, namespace, "get", "pods", "-o", "json").stdout)
    (pod,) = listed["items"]
    assert int(pod["metadata"]["resourceVersion"]) > 0
    assert 0 == pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]


def test_kubectl_label_selectors_filter_as_the_api_server_does(fake_kube: FakeKube, namespace: str) -> None:
    """Equality, inequality, set-based and existence selectors select the same pods as on a
    real API server."""
    start(fake_kube, namespace, "a", "sleep 30", "app=x", "tier=web")
    start(fake_kube, namespace, "b", "sleep 30", "app=y")
    start(fake_kube, namespace, "c", "sleep 30")

    def names(selector: str) -> list[str]:
        done = run(fake_kube, namespace, "get", "pods", "-l", selector, "-o", "name")
        assert 0 == done.returncode, done.stderr
        return sorted(line.removeprefix("pod/") for line in done.stdout.split())

    assert ["a"] == names("app=x")
    assert ["b", "c"] == names("app!=x")
    assert ["a", "b"] == names("app in (x,y)")
    assert ["b"] == names("app,app notin (x)")
    assert ["c"] == names("!app")
    assert ["a"] == names("app=x,tier")
    run(fake_kube, namespace, "delete", "pods", "--all", "--grace-period=0", "--force")


def test_kubectl_watch_sees_a_pod_through_its_phases(fake_kube: FakeKube, namespace: str) -> None:
    """kubectl get -w (a list, then a watch from its resourceVersion) prints the pod as it goes
    from Pending through Running to Completed."""
    watcher = subprocess.Popen(
        [
            kubectl_program() or "kubectl",
            f"--kubeconfig={fake_kube.kubeconfig}",
            "--context=fake",
            "get",
            "pods",
            "-w",
            "-n",
            namespace,
            "-l",
            "app=watched",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("the watch to start", lambda: fake_kube.control("/state")["watches"] > 0)
        start(fake_kube, namespace, "watched", "sleep 1; echo ok", "app=watched")
        wait_for("the pod to succeed", lambda: phase(fake_kube, namespace, "watched") == "Succeeded")
    finally:
        watcher.terminate()
        out, err = watcher.communicate(timeout=30)
    statuses = [line.split()[2] for line in out.splitlines()[1:] if line.startswith("watched")]
    assert "Running" in statuses, (out, err)
    assert "Completed" == statuses[-1], (out, err)


def test_kubectl_reads_and_follows_a_pods_log(fake_kube: FakeKube, namespace: str) -> None:
    """kubectl logs reads what the container wrote; logs -f follows it until it ends."""
    start(fake_kube, namespace, "talker", "for i in 1 2 3; do echo line $i; sleep 0.3; done")
    wait_for("the container to start", lambda: phase(fake_kube, namespace, "talker") in ("Running", "Succeeded"))
    followed = run(fake_kube, namespace, "logs", "-f", "talker")
    assert 0 == followed.returncode, followed.stderr
    assert ["line 1", "line 2", "line 3"] == followed.stdout.split("\n")[:3]
    tail = run(fake_kube, namespace, "logs", "talker", "--tail=1", "--timestamps")
    stamp, text = tail.stdout.strip().split(" ", 1)
    assert "line 3" == text
    assert stamp.endswith("Z")


def test_kubectl_sees_the_api_servers_status_errors(fake_kube: FakeKube, namespace: str) -> None:
    """Errors are Status objects kubectl understands: AlreadyExists, NotFound."""
    start(fake_kube, namespace, "twice", "sleep 30")
    again = run(fake_kube, namespace, "run", "twice", "--image=busybox:1.36", "--restart=Never", "--", "true")
    assert 'Error from server (AlreadyExists): pods "twice" already exists' == again.stderr.strip()
    deleted = run(fake_kube, namespace, "delete", "pod", "twice", "--grace-period=1")
    assert 0 == deleted.returncode, deleted.stderr
    missing = run(fake_kube, namespace, "get", "pod", "twice")
    assert 'Error from server (NotFound): pods "twice" not found' == missing.stderr.strip()


# --- raw requests: what kubectl does not show -------------------------------------------------


@pytest.fixture
def api(fake_kube: FakeKube) -> Iterator[http.client.HTTPSConnection]:
    context = ssl.create_default_context(cafile=str(fake_kube.root / "ca.pem"))
    connection = http.client.HTTPSConnection("127.0.0.1", fake_kube.port, context=context, timeout=30)
    yield connection
    connection.close()


def get(api: http.client.HTTPSConnection, path: str) -> tuple[int, Any]:
    api.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = api.getresponse()
    body = response.read()
    return response.status, [json.loads(line) for line in body.splitlines() if line.strip()]


def test_a_watch_from_a_version_replays_what_came_after_and_sends_bookmarks(
    fake_kube: FakeKube, namespace: str, api: http.client.HTTPSConnection
) -> None:
    """A watch from a list's resourceVersion gets the events after it (none before), in order,
    and BOOKMARK events carrying the current version."""
    status, (listed,) = get(api, f"/api/v1/namespaces/{namespace}/pods")
    version = int(listed["metadata"]["resourceVersion"])
    start(fake_kube, namespace, "replayed", "true")
    wait_for("the pod to succeed", lambda: phase(fake_kube, namespace, "replayed") == "Succeeded")
    status, events = get(
        api,
        f"/api/v1/namespaces/{namespace}/pods?watch=true&resourceVersion={version}"
        "&allowWatchBookmarks=true&timeoutSeconds=2",
    )
    assert 200 == status
    kinds = [e["type"] for e in events]
    assert "ADDED" == kinds[0]
    assert "BOOKMARK" in kinds
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > version
    assert "Succeeded" == [e for e in events if e["type"] == "MODIFIED"][-1]["object"]["status"]["phase"]


def test_a_watch_from_a_compacted_version_gets_410_expired(
    fake_kube: FakeKube, namespace: str, api: http.client.HTTPSConnection
) -> None:
    """After compaction, a watch from an older version is answered with an ERROR event holding
    a 410 Expired Status, as the API server's watch cache answers."""
    status, (listed,) = get(api, f"/api/v1/namespaces/{namespace}/pods")
    version = listed["metadata"]["resourceVersion"]
    start(fake_kube, namespace, "later", "true")
    fake_kube.control("/compact", {"close_watches": False})
    status, events = get(api, f"/api/v1/namespaces/{namespace}/pods?watch=true&resourceVersion={version}")
    assert 200 == status
    (error,) = events
    assert "ERROR" == error["type"]
    assert (410, "Expired") == (error["object"]["code"], error["object"]["reason"])
    assert error["object"]["message"].startswith(f"too old resource version: {version} (")


def test_throttling_answers_429_with_retry_after(
    fake_kube: FakeKube, namespace: str, api: http.client.HTTPSConnection
) -> None:
    """A throttled request gets 429, a TooManyRequests Status and a Retry-After header."""
    fake_kube.control("/throttle", {"count": 1, "retry_after": 3})
    api.request("GET", f"/api/v1/namespaces/{namespace}/pods", headers={"Authorization": f"Bearer {TOKEN}"})
    response = api.getresponse()
    body = json.loads(response.read())
    assert (429, "3") == (response.status, response.headers["Retry-After"])
    assert ("TooManyRequests", 3) == (body["reason"], body["details"]["retryAfterSeconds"])


def test_requests_without_credentials_are_unauthorized(
    fake_kube: FakeKube, namespace: str, api: http.client.HTTPSConnection
) -> None:
    """No token and no client certificate: 401 Unauthorized."""
    api.request("GET", f"/api/v1/namespaces/{namespace}/pods")
    response = api.getresponse()
    assert (401, "Unauthorized") == (response.status, json.loads(response.read())["reason"])
