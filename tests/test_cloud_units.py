"""The cloud kind's decisions on their own: settings and the pods they make, clusters and their
credentials, what a pod's status means, how a failed request is classified and retried, the
journal of owed deletes, and the kind in a simulation with crashes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Pod

from processes.cloud import (
    CloudPod,
    ClusterSpec,
    Delete,
    DeleteJournal,
    KubeApi,
    PodView,
    Problem,
    SimulatedCloud,
    Waiting,
    backoff,
    check_credentials,
    classify,
    identity,
    manifest,
    parse,
    parse_cluster,
    parse_clusters,
    pod_name,
    request_verb,
    selector,
    timestamp_ns,
)
from processes.cloud.errors import (
    AlreadyExists,
    ApiRefused,
    ApiUnreachable,
    CredentialsRejected,
    Expired,
    Forbidden,
    NotFound,
    QuotaExceeded,
)
from supervisor import Lifecycle, SettingsError, Simulation

BASE = {"cluster": "k", "image": "busybox:1.36", "command": ["sh", "-c", "true"]}


def made(**settings: Any) -> dict[str, Any]:
    """The pod the settings make, named and labelled as an action's would be."""
    spec = parse({**BASE, **settings})
    labels, annotations = identity("statevisor", "p1", "p1:create:1")
    return manifest(spec, name="sv-x-1", namespace=spec.namespace or "ns", labels=labels, annotations=annotations)


# --- settings and the pod they make ----------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key", "words"),
    [
        ({"imag": "x"}, "imag", "unknown setting"),
        ({"cluster": ""}, "cluster", "[kubernetes.NAME]"),
        ({"image": None}, "image", "missing"),
        ({"env": {"1-BAD NAME": "x"}}, "env.1-BAD NAME", "variable name"),
        ({"secret_env": {"PASS": "creds"}}, "secret_env.PASS", "OBJECT/KEY"),
        ({"resources": {"request": {"cpu": "1"}}}, "resources.request", "requests and limits"),
        ({"labels": {"statevisor.io/pid": "x"}}, "labels.statevisor.io/pid", "the kind's own"),
        ({"active_deadline": 0}, "active_deadline", "activeDeadlineSeconds"),
        ({"namespace": "Not_A_Namespace"}, "namespace", "namespace name"),
        ({"pod_template": {"spec": {"restartPolicy": "Always"}}}, "pod_template", "must be Never"),
        ({"pod_template": {"spec": {"nodeSelecter": {"a": "b"}}}}, "pod_template", "spec.nodeSelecter"),
        ({"pod_template": {"spec": {"activeDeadlineSeconds": "soon"}}}, "pod_template", "not a valid Pod"),
        ({"start_timeout": -1}, "start_timeout", "seconds > 0"),
    ],
)
def test_settings_errors_name_the_key(settings: dict[str, Any], key: str, words: str) -> None:
    """Each mistake is refused before anything runs, naming its key (and, in a pod template,
    the misspelt field's path)."""
    with pytest.raises(SettingsError) as refused:
        parse({**BASE, **settings})
    assert key == refused.value.key
    assert words in refused.value.problem


def test_the_settings_make_the_pod_the_api_wants() -> None:
    """Image, command, env (plain, from a Secret key, from ConfigMaps), resources, node
    selector, tolerations, deadline: each lands where the Pod API has it; restartPolicy Never."""
    pod = made(
        env={"A": "1"},
        secret_env={"PASS": "creds/password"},
        env_from_config_maps=["settings"],
        resources={"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": 2}},
        node_selector={"disk": "ssd"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="runner",
        active_deadline=600,
        labels={"team": "a"},
    )
    (container,) = pod["spec"]["containers"]
    assert "main" == container["name"]
    assert ["sh", "-c", "true"] == container["command"]
    assert [
        {"name": "A", "value": "1"},
        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
    ] == container["env"]
    assert [{"configMapRef": {"name": "settings"}}] == container["envFrom"]
    assert {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2"}} == container["resources"]
    assert {"disk": "ssd"} == pod["spec"]["nodeSelector"]
    assert "runner" == pod["spec"]["serviceAccountName"]
    assert 600 == pod["spec"]["activeDeadlineSeconds"]
    assert "Never" == pod["spec"]["restartPolicy"]
    assert "a" == pod["metadata"]["labels"]["team"]
    assert "statevisor" == pod["metadata"]["labels"]["app.kubernetes.io/managed-by"]


def test_a_pod_template_merges_under_the_settings_by_container_name() -> None:
    """pod_template supplies what the settings do not: its main container is merged with the
    settings' (the settings win), other containers are added, its identity is replaced."""
    pod = made(
        image="busybox:1.36",
        pod_template={
            "metadata": {"name": "ignored", "labels": {"tier": "batch"}},
            "spec": {
                "priorityClassName": "low",
                "containers": [
                    {"name": "main", "image": "old", "securityContext": {"runAsNonRoot": True}},
                    {"name": "sidecar", "image": "envoy", "args": ["--quiet"]},
                ],
            },
        },
    )
    assert "sv-x-1" == pod["metadata"]["name"]
    assert "batch" == pod["metadata"]["labels"]["tier"]
    assert "low" == pod["spec"]["priorityClassName"]
    main, sidecar = pod["spec"]["containers"]
    assert ("busybox:1.36", {"runAsNonRoot": True}) == (main["image"], main["securityContext"])
    assert "sidecar" == sidecar["name"]


def test_the_image_may_come_from_the_template_alone() -> None:
    """Without ``image``, a main container with an image in pod_template suffices."""
    spec = parse({"cluster": "k", "pod_template": {"spec": {"containers": [{"name": "main", "image": "alpine"}]}}})
    pod = manifest(spec, name="n", namespace="ns", labels={}, annotations={})
    assert "alpine" == pod["spec"]["containers"][0]["image"]


def test_pod_names_are_dns_labels_made_from_the_process_and_action() -> None:
    """At most 63 characters, lower case and digits and '-', the same for the same action, and
    different for another action of the same process."""
    long = "Root/A Very_Long Name" * 5
    name = pod_name(long, "p:create:1")
    assert len(name) <= 63
    assert name == name.lower()
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert name == pod_name(long, "p:create:1")
    assert name != pod_name(long, "p:create:2")
    assert pod_name("root/train", "x").startswith("sv-root-train-")


def test_identity_labels_are_valid_label_values_and_carry_the_owner() -> None:
    """A pid that is not a valid label value is hashed into one; the owner's selector is a
    subset of every identity."""
    labels, annotations = identity("team-a", "has spaces/and:colons", "a:create:1")
    assert labels["statevisor.io/pid"].startswith("h-")
    assert len(labels["statevisor.io/action"]) == 32
    assert "has spaces/and:colons" == annotations["statevisor.io/process-id"]
    assert selector("team-a").items() <= labels.items()


def test_the_machine_checks_settings_at_spawn() -> None:
    """CloudPod.check_settings is the settings' parse: a spawn with a mistake is refused."""
    with pytest.raises(SettingsError, match="unknown setting"):
        CloudPod.check_settings({**BASE, "colour": "blue"})


# --- clusters and credentials ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"kubeconfg": "x"}, "kubeconfg", "unknown key"),
        ({"in_cluster": True, "context": "x"}, "in_cluster", "give no kubeconfig or context"),
        ({"qps": -1}, "qps", ">= 0"),
        ({"burst": 0}, "burst", ">= 1"),
        ({"owner": "two words"}, "owner", "label value"),
        ({"namespace": "UPPER"}, "namespace", "namespace name"),
        ({"watch_timeout": 5}, "watch_timeout", ">= 10"),
        ({"proxy": "socks5://x"}, "proxy", "proxy URL"),
        ({"retries": True}, "retries", "integer"),
    ],
)
def test_cluster_tables_are_checked_key_by_key(table: dict[str, Any], key: str, words: str) -> None:
    """A [kubernetes.NAME] table's mistakes name kubernetes.NAME.key."""
    with pytest.raises(SettingsError) as refused:
        parse_clusters({"k": table})
    assert f"kubernetes.k.{key}" == refused.value.key
    assert words in refused.value.problem


def test_a_relative_kubeconfig_is_relative_to_the_configuration(tmp_path: Path) -> None:
    """kubeconfig = "kube/config" is found next to the configuration file."""
    spec = parse_cluster("k", {"kubeconfig": "kube/config"}, tmp_path)
    assert str(tmp_path / "kube" / "config") == spec.kubeconfig


def _kubeconfig(path: Path, server: str = "https://127.0.0.1:6443", **cluster: Any) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "a",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "work"}}],
            }
        )
    )
    return path


@pytest.mark.parametrize(
    ("write", "table", "key", "words"),
    [
        (False, {}, "kubeconfig", "does not exist"),
        (True, {"context": "nope"}, "context", "Context 'nope' not found"),
        (True, {"context": "a", "_insecure": True}, "kubeconfig", "always verifies"),
        (True, {"_server": "http://cluster.example.org"}, "kubeconfig", "without TLS"),
    ],
)
def test_credentials_are_checked_before_anything_starts(
    tmp_path: Path, write: bool, table: dict[str, Any], key: str, words: str
) -> None:
    """A missing kubeconfig, a context it lacks, TLS verification turned off, plain http off
    loopback: each refused with the key that leads to it."""
    path = tmp_path / "config"
    if write:
        extra = {"insecure-skip-tls-verify": True} if table.pop("_insecure", False) else {}
        _kubeconfig(path, table.pop("_server", "https://127.0.0.1:6443"), **extra)
    spec = parse_cluster("k", {"kubeconfig": str(path), **table})
    with pytest.raises(SettingsError) as refused:
        check_credentials(spec)
    assert f"kubernetes.k.{key}" == refused.value.key
    assert words in refused.value.problem


def test_in_cluster_needs_a_service_account() -> None:
    """in_cluster = true outside a pod is refused, naming what is missing."""
    with pytest.raises(SettingsError, match="not running in a pod") as refused:
        check_credentials(parse_cluster("k", {"in_cluster": True}))
    assert "kubernetes.k.in_cluster" == refused.value.key


# --- requests: what a failure means, and the retries -----------------------------------------


def _api_error(code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> ApiError:
    request = httpx2.Request("POST", "https://127.0.0.1/api/v1/namespaces/ns/pods")
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    response = httpx2.Response(code, json=body, headers=headers or {}, request=request)
    return ApiError(request=request, response=response)


@pytest.mark.parametrize(
    ("error", "retry", "kind", "after"),
    [
        (_api_error(429, "TooManyRequests", "slow down", {"Retry-After": "7"}), True, ApiRefused, 7.0),
        (_api_error(503, "ServiceUnavailable", "restarting"), True, ApiRefused, None),
        (_api_error(500, "InternalError", "etcdserver: request timed out"), True, ApiRefused, None),
        (_api_error(403, "Forbidden", 'pods "x" is forbidden: exceeded quota: q'), False, QuotaExceeded, None),
        (_api_error(403, "Forbidden", 'pods is forbidden: User "u" cannot create'), False, Forbidden, None),
        (_api_error(401, "Unauthorized", "Unauthorized"), False, CredentialsRejected, None),
        (_api_error(404, "NotFound", 'pods "x" not found'), False, NotFound, None),
        (_api_error(409, "AlreadyExists", 'pods "x" already exists'), False, AlreadyExists, None),
        (_api_error(410, "Expired", "too old resource version"), False, Expired, None),
        (_api_error(422, "Invalid", "spec.containers: Required value"), False, ApiRefused, None),
        (httpx2.ConnectTimeout("connect"), True, ApiUnreachable, None),
        (httpx2.ReadError("reset"), True, ApiUnreachable, None),
    ],
)
def test_a_failed_request_is_classified(error: BaseException, retry: bool, kind: type, after: float | None) -> None:
    """429, 5xx, timeouts and broken connections are retried (after Retry-After when given);
    the rest become the kind's errors with the server's message."""
    failure = classify(error, "k", "create", "pods", "ns")
    assert retry == failure.retry
    assert kind is type(failure.error)
    assert after == failure.retry_after


def test_forbidden_names_the_verb_and_the_resource() -> None:
    """An RBAC denial says what was forbidden, where."""
    failure = classify(_api_error(403, "Forbidden", "no"), "k", "create", "pods", "team-a")
    assert "forbidden to create pods in namespace 'team-a': no" == str(failure.error)


async def test_retries_wait_what_retry_after_says_then_give_up_as_unreachable() -> None:
    """A request met by 429s waits Retry-After's seconds between attempts; past the retry
    budget it fails with ApiUnreachable, naming the cluster and the last answer."""
    api = KubeApi(ClusterSpec("k", retries=3, qps=0))
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    async def clients() -> tuple[Any, Any]:
        return None, None

    api.sleep = sleep
    api._clients = clients  # type: ignore[method-assign]  # no server: the request below answers

    async def throttled(client: Any, http: Any) -> None:
        raise _api_error(429, "TooManyRequests", "slow down", {"Retry-After": "7"})

    with pytest.raises(ApiUnreachable) as unreachable:
        await api.call("create", "pods", "ns", throttled)
    assert [7.0, 7.0, 7.0] == waited
    assert "cluster 'k'" in str(unreachable.value)
    assert "429 TooManyRequests: slow down (4 attempts)" in str(unreachable.value)


async def test_a_refusal_is_not_retried() -> None:
    """A 422 (a pod the server finds invalid) fails at once: retrying cannot help."""
    api = KubeApi(ClusterSpec("k", qps=0))
    calls: list[int] = []

    async def clients() -> tuple[Any, Any]:
        return None, None

    api._clients = clients  # type: ignore[method-assign]

    async def invalid(client: Any, http: Any) -> None:
        calls.append(1)
        raise _api_error(422, "Invalid", "spec.containers: Required value")

    request: Callable[[Any, Any], Awaitable[None]] = invalid
    with pytest.raises(ApiRefused, match="Invalid"):
        await api.call("create", "pods", "ns", request)
    assert [1] == calls


@pytest.mark.parametrize(
    ("method", "path", "query", "verb"),
    [
        ("POST", "/api/v1/namespaces/ns/pods", "", "create"),
        ("DELETE", "/api/v1/namespaces/ns/pods/p", "gracePeriodSeconds=30", "delete"),
        ("GET", "/api/v1/namespaces/ns/pods", "labelSelector=a%3Db", "list"),
        ("GET", "/api/v1/namespaces/ns/pods", "watch=true&resourceVersion=5", "watch"),
        ("GET", "/api/v1/namespaces/ns/pods/p", "", "get"),
        ("GET", "/api/v1/namespaces/ns/pods/p/log", "follow=true", "log"),
    ],
)
def test_requests_are_counted_by_their_kubernetes_verb(method: str, path: str, query: str, verb: str) -> None:
    """The metrics' verb of each request the kind makes."""
    assert verb == request_verb(method, path, query)


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    """0.5 s doubling, capped, each within the upper half of its step."""
    for attempt, step in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)):
        assert step / 2 <= backoff(attempt, 30.0) <= step


# --- what a pod's status means ---------------------------------------------------------------


def view(status: dict[str, Any] | None = None, *, node: str | None = "n1", deleting: bool = False) -> PodView:
    meta: dict[str, Any] = {"name": "p", "uid": "u", "resourceVersion": "7", "labels": {"a": "b"}}
    if deleting:
        meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "i"}]}
    if node:
        spec["nodeName"] = node
    pod = Pod.from_dict({"metadata": meta, "spec": spec, "status": status or {"phase": "Pending"}})
    assert isinstance(pod, Pod)
    return PodView.of(pod)


def container(state: dict[str, Any], name: str = "main") -> dict[str, Any]:
    return {"name": name, "image": "i", "imageID": "", "ready": False, "restartCount": 0, "state": state}


def test_a_pod_no_node_can_take_waits_on_scheduling_with_the_schedulers_words() -> None:
    """PodScheduled False, Unschedulable: waiting for scheduling, problem unschedulable."""
    pod = view(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available",
                }
            ],
        },
        node=None,
    )
    assert (Waiting.SCHEDULING, Problem.UNSCHEDULABLE) == (pod.waiting, pod.problem)
    assert "Unschedulable: 0/3 nodes are available" == pod.report()["problem_text"]
    assert not pod.final


@pytest.mark.parametrize(
    ("reason", "waiting", "problem"),
    [
        ("ContainerCreating", Waiting.CONTAINER_START, None),
        ("ErrImagePull", Waiting.IMAGE_PULL, Problem.IMAGE),
        ("ImagePullBackOff", Waiting.IMAGE_PULL, Problem.IMAGE),
        ("InvalidImageName", Waiting.IMAGE_PULL, Problem.HOPELESS),
        ("CreateContainerConfigError", Waiting.CONTAINER_START, Problem.CONFIG),
    ],
)
def test_a_scheduled_pods_container_says_what_it_waits_for(
    reason: str, waiting: Waiting, problem: Problem | None
) -> None:
    """The main container's waiting reason: an image pull, a container start, and what is wrong."""
    pod = view({"phase": "Pending", "containerStatuses": [container({"waiting": {"reason": reason}})]})
    assert (waiting, problem) == (pod.waiting, pod.problem)


def ended(code: int, reason: str = "", name: str = "main") -> dict[str, Any]:
    return container({"terminated": {"exitCode": code, "reason": reason}}, name)


@pytest.mark.parametrize(
    ("status", "ok", "why"),
    [
        ({"phase": "Succeeded", "containerStatuses": [ended(0)]}, True, "exited with code 0"),
        ({"phase": "Failed", "containerStatuses": [ended(3, "Error")]}, False, "exited with code 3"),
        ({"phase": "Failed", "containerStatuses": [ended(137, "OOMKilled")]}, False, "OOMKilled (exit code 137)"),
        (
            {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
            False,
            "Evicted: The node was low on resource: memory.",
        ),
        (
            {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"},
            False,
            "DeadlineExceeded: Pod was active too long",
        ),
        (
            {"phase": "Failed", "containerStatuses": [ended(0), ended(2, "Error", "sidecar")]},
            False,
            "container sidecar exited with code 2",
        ),
        (
            {"phase": "Failed", "initContainerStatuses": [ended(1, "Error", "setup")]},
            False,
            "init container setup exited with code 1",
        ),
    ],
)
def test_an_ended_pods_outcome_says_why(status: dict[str, Any], ok: bool, why: str) -> None:
    """Succeeded finishes; a failure is told with Kubernetes' reason, in this order: the pod's
    (Evicted, DeadlineExceeded), OOMKilled, the main exit code, another container's."""
    pod = view(status)
    assert pod.final
    assert (ok, why) == pod.outcome()


def test_a_pod_being_deleted_has_ended_for_its_process_saying_why() -> None:
    """A deletion (someone else's) ends the process; a DisruptionTarget condition says by whom."""
    pod = view(
        {
            "phase": "Running",
            "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}],
        },
        deleting=True,
    )
    assert pod.final
    assert (
        False,
        "the pod was deleted before it ended (DeletionByTaintManager); it was running on n1",
    ) == pod.outcome()
    assert pod.report()["deleted"]


def test_the_signature_changes_when_the_news_does_and_not_otherwise() -> None:
    """A new resourceVersion with the same meaning keeps the signature; a new problem, phase
    or node changes it."""
    pending = view({"phase": "Pending", "containerStatuses": [container({"waiting": {"reason": "ContainerCreating"}})]})
    again = view({"phase": "Pending", "containerStatuses": [container({"waiting": {"reason": "ContainerCreating"}})]})
    pulling = view({"phase": "Pending", "containerStatuses": [container({"waiting": {"reason": "ErrImagePull"}})]})
    running = view({"phase": "Running", "containerStatuses": [container({"running": {}})]})
    assert pending.signature == again.signature
    assert len({pending.signature, pulling.signature, running.signature}) == 3


@pytest.mark.parametrize(
    ("stamp", "nanos"),
    [
        ("2024-05-01T12:00:00.123456789Z", 1714564800_123456789),
        ("2024-05-01T12:00:00.5Z", 1714564800_500000000),
        ("2024-05-01T12:00:00Z", 1714564800_000000000),
        ("not a time", None),
    ],
)
def test_log_timestamps_are_read_to_the_nanosecond(stamp: str, nanos: int | None) -> None:
    """kubelet's RFC 3339 times, trailing zeros trimmed as Go does, as nanoseconds."""
    assert nanos == timestamp_ns(stamp)


# --- owed deletes ----------------------------------------------------------------------------


async def test_the_delete_journal_keeps_what_is_owed_across_a_restart(tmp_path: Path) -> None:
    """Owed deletes are read back by the next daemon; done ones are not; a line torn by a crash
    is skipped, the rest stand."""
    path = tmp_path / "cloud" / "deletes.jsonl"
    journal = DeleteJournal(path)
    owner = selector("statevisor")
    first = Delete("k", "ns", "a", owner, why="kill", due=1.0)
    second = Delete("k", "ns", "b", owner, why="ttl", due=2.0, grace=0)
    await journal.add(first)
    await journal.add(second)
    journal.done(first)
    journal.close()
    with path.open("a") as torn:
        torn.write('{"op":"add","cluster":')
    again = DeleteJournal(path)
    assert [("k", "ns", "b")] == list(again.entries)
    assert 0 == again.entries[("k", "ns", "b")].grace
    assert 0o700 == (path.parent.stat().st_mode & 0o777)


# --- in a simulation -------------------------------------------------------------------------


def test_in_a_simulation_with_crashes_no_action_makes_two_pods() -> None:
    """The real process type on a simulated cluster, crashing now and then: every process ends
    with its pod's outcome, and every pod was created exactly once."""
    clusters = parse_clusters({"k": {"kubeconfig": "/nowhere/config"}})
    cloud = SimulatedCloud(exit_codes={0: 3.0, 137: 1.0}, schedule_time=(0.1, 2.0))
    sim = Simulation([CloudPod(clusters, "/nowhere/logs")], seed=5, executors=cloud.executors, crash_every=7)
    pids = [sim.spawn("cloud", {**BASE, "command": ["./step", str(n)]}) for n in range(30)]
    sim.run_until_idle()
    assert sim.crashes >= 3
    lifecycles = {sim.lifecycle(pid) for pid in pids}
    assert lifecycles <= {Lifecycle.FINISHED, Lifecycle.FAILED}
    assert Lifecycle.FAILED in lifecycles
    assert {1} == set(cloud.creates.values())
    assert 30 == len(cloud.creates)
    failed = [sim.state(pid) for pid in pids if sim.lifecycle(pid) is Lifecycle.FAILED]
    assert {"OOMKilled (exit code 137)"} == {state["result"]["reason"] for state in failed}
