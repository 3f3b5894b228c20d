"""The cloud kind end to end: processes on a Node, pods on a cluster.

Tests taking ``kube`` run twice: against the fake API server (tests/services/kube/), and against
the real cluster ``STATEVISOR_TEST_KUBECONFIG`` names, skipped with that reason when it is not
set. Tests taking ``fake_kube`` need what only the fake can do (an API server stopped and
started, compaction, a 429 storm, OOM kills and evictions on demand, RBAC and quotas set at
will, its audit log of creates) and run against it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from processes.cloud import CREATE, CloudExecutor, DeleteJournal, identity, manifest, parse, pod_name
from supervisor import Handle, Lifecycle, Node, TrackedAction
from tests.helpers import wait_for_snapshot, wait_until
from tests.kube import IMAGE, Target, cloud_node, pod_settings
from tests.services.kube import FakeKube


@dataclass
class Cloud:
    node: Node
    executor: CloudExecutor
    namespace: str
    target: Target

    async def spawn(self, script: str, name: str | None = None, **settings: Any) -> Handle:
        return await self.node.spawn("cloud", pod_settings(self.namespace, script, **settings), name=name)

    def pods(self) -> list[dict[str, Any]]:
        if self.target.fake is not None:
            return [p for p in self.target.fake.pods() if p["metadata"]["namespace"] == self.namespace]
        return self.target.pods(self.namespace)

    def audit(self, verb: str | None = None, resource: str = "pods") -> list[dict[str, Any]]:
        assert self.target.fake is not None
        return [e for e in self.target.fake.requests(verb, resource) if e["namespace"] == self.namespace]

    def creates(self) -> Counter[str]:
        return Counter(e["name"] for e in self.audit("create") if e["code"] == 201)


@contextlib.asynccontextmanager
async def running(target: Target, tmp_path: Path, **overrides: object) -> AsyncIterator[Cloud]:
    namespace = target.namespace()
    node, executor = cloud_node({"k": target.cluster_table(namespace, **overrides)}, tmp_path)
    await node.start()
    try:
        yield Cloud(node, executor, namespace, target)
    finally:
        await node.shutdown(timeout=20)


def fake_target(fake: FakeKube) -> Target:
    return Target(fake, fake.kubeconfig, "fake")


def final(handle: Handle) -> Any:
    return handle.wait(timeout=60)


# --- against the fake, and a real cluster when one is named ------------------------------------


async def test_a_pod_runs_to_completion_and_its_log_outlives_it(kube: Target, tmp_path: Path) -> None:
    """A pod whose container exits 0 finishes its process with the pod, exit code and reason;
    its output is in the process's log, which stays readable once the pod is deleted (ttl 0)."""
    async with running(kube, tmp_path, pod_ttl=0) as cloud:
        handle = await cloud.spawn("echo hello; echo world", name="hello")
        done = await final(handle)
        assert Lifecycle.FINISHED is done.lifecycle, done.error
        assert 0 == done.result["exit_code"]
        assert "exited with code 0" == done.result["reason"]
        assert {"complete": True, "error": None, "lines": 2} == done.result["logs"]
        await wait_until(lambda: not cloud.pods(), timeout=30)
        assert ["hello", "world"] == await handle.logs()


async def test_a_failing_container_fails_its_process_with_the_exit_code(kube: Target, tmp_path: Path) -> None:
    """Exit code 3 fails the process, saying so; the phase and the code are in its state."""
    async with running(kube, tmp_path) as cloud:
        done = await final(await cloud.spawn("echo going; exit 3"))
        assert Lifecycle.FAILED is done.lifecycle
        assert "exited with code 3" == done.error
        assert 3 == done.state["result"]["exit_code"]
        assert "Failed" == done.state["phase"]


async def test_follow_yields_a_running_pods_lines_as_they_come(kube: Target, tmp_path: Path) -> None:
    """handle.follow() yields the pod's lines while it runs (its log is streamed live)."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.spawn("for i in 1 2 3; do echo line $i; sleep 0.5; done")
        await wait_for_snapshot(handle, lambda s: "pod" in s.state)  # its log is named once it has started
        seen: list[str] = []
        async with asyncio.timeout(60):
            async for line in handle.follow(lines=0):
                seen.append(line)
                if line == "line 3":
                    break
        assert ["line 1", "line 2", "line 3"] == seen
        assert Lifecycle.FINISHED is (await final(handle)).lifecycle


async def test_the_snapshot_says_what_the_process_waits_for_and_since_when(kube: Target, tmp_path: Path) -> None:
    """While its pod runs, a process is in phase running, waiting for "running" since a time,
    with the pod's name and node; the pod carries the labels naming its process and action."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.spawn("sleep 300")
        snapshot = await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
        assert "running" == snapshot.state["waiting_for"]
        assert snapshot.state["since"] >= snapshot.state["created_at"]
        assert snapshot.state["node"]
        (pod,) = cloud.pods()
        labels = pod["metadata"]["labels"]
        assert handle.pid == labels["statevisor.io/pid"]
        assert "statevisor" == labels["app.kubernetes.io/managed-by"]
        assert pod["metadata"]["annotations"]["statevisor.io/process-id"] == handle.pid
        assert snapshot.state["pod"] == pod["metadata"]["name"]
        await handle.kill()


async def test_killing_processes_deletes_their_pods(kube: Target, tmp_path: Path) -> None:
    """Killing 100 processes (10 on a real cluster) whose pods run deletes every pod."""
    count = 10 if kube.real else 100
    async with running(kube, tmp_path) as cloud:
        handles = [await cloud.spawn("sleep 300") for _ in range(count)]
        await wait_until(lambda: all(h.snapshot().phase == "running" for h in handles), timeout=120)
        await asyncio.gather(*(h.kill() for h in handles))
        assert all(h.snapshot().lifecycle is Lifecycle.KILLED for h in handles)
        await wait_until(lambda: not cloud.pods(), timeout=120)


async def test_a_pod_deleted_by_someone_else_fails_its_process(kube: Target, tmp_path: Path) -> None:
    """An operator's ``kubectl delete pod`` ends the process as failed, saying the pod was deleted."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.spawn("sleep 300")
        snapshot = await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
        deleted = kube.kubectl("delete", "pod", snapshot.state["pod"], "-n", cloud.namespace, "--wait=false")
        assert 0 == deleted.returncode, deleted.stderr
        done = await final(handle)
        assert Lifecycle.FAILED is done.lifecycle
        assert "the pod was deleted before it ended" in (done.error or "")


async def test_an_image_that_never_pulls_fails_after_start_timeout(kube: Target, tmp_path: Path) -> None:
    """A pod whose image does not exist waits on its image pull (the snapshot says so, with
    ErrImagePull or ImagePullBackOff), then fails its process past start_timeout; the pod is
    deleted."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.spawn("true", image="registry.invalid/statevisor/does-not-exist:1", start_timeout=3.0)
        waiting = await wait_for_snapshot(handle, lambda s: s.state.get("waiting_for") == "image pull", timeout=60)
        assert "Image" in waiting.state["problem"]
        done = await final(handle)
        assert Lifecycle.FAILED is done.lifecycle
        assert "for more than 3 s" in (done.error or "")
        assert "Image" in (done.error or "")
        await wait_until(lambda: not cloud.pods(), timeout=60)


async def test_an_unschedulable_pod_fails_after_schedule_timeout(kube: Target, tmp_path: Path) -> None:
    """A pod no node can take waits on scheduling with the scheduler's message, then fails its
    process past schedule_timeout; the pod is deleted."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.spawn("true", node_selector={"statevisor.io/test": "nowhere"}, schedule_timeout=3.0)
        waiting = await wait_for_snapshot(handle, lambda s: bool(s.state.get("problem")), timeout=60)
        assert "scheduling" == waiting.state["waiting_for"]
        assert waiting.state["problem"].startswith("Unschedulable: ")
        done = await final(handle)
        assert Lifecycle.FAILED is done.lifecycle
        assert "Unschedulable" in (done.error or "")
        await wait_until(lambda: not cloud.pods(), timeout=60)


async def test_active_deadline_fails_the_pod_with_deadline_exceeded(kube: Target, tmp_path: Path) -> None:
    """activeDeadlineSeconds: the pod is failed by Kubernetes, and so is its process."""
    async with running(kube, tmp_path) as cloud:
        done = await final(await cloud.spawn("sleep 300", active_deadline=2))
        assert Lifecycle.FAILED is done.lifecycle
        assert (done.error or "").startswith("DeadlineExceeded")


async def test_env_from_secrets_and_config_maps_reaches_the_container_and_stays_masked(
    kube: Target, tmp_path: Path
) -> None:
    """env, secret_env (a Secret's key), env_from_config_maps: the container sees each; the
    snapshot shows env's names, never its values."""
    async with running(kube, tmp_path) as cloud:
        ns = ["-n", cloud.namespace]
        assert (
            0 == kube.kubectl("create", "secret", "generic", "creds", "--from-literal=password=s3cret", *ns).returncode
        )
        assert 0 == kube.kubectl("create", "configmap", "settings", "--from-literal=MODE=fast", *ns).returncode
        handle = await cloud.spawn(
            'echo "$PLAIN $PASSWORD $MODE"',
            env={"PLAIN": "visible-only-to-the-pod"},
            secret_env={"PASSWORD": "creds/password"},
            env_from_config_maps=["settings"],
        )
        done = await final(handle)
        assert Lifecycle.FINISHED is done.lifecycle, done.error
        assert ["visible-only-to-the-pod s3cret fast"] == await handle.logs()
        assert {"PLAIN": "***"} == handle.snapshot().state["env"]


async def test_pausing_a_running_pod_says_it_runs_on_and_resume_takes_its_outcome(kube: Target, tmp_path: Path) -> None:
    """A running pod cannot be suspended: the snapshot says so; the pod ends while its process
    is paused, and the process takes the outcome once resumed."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.spawn("sleep 2; echo done")
        await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
        await handle.pause()
        snapshot = handle.snapshot()
        assert snapshot.paused
        assert "cannot suspend a pod" in snapshot.state["pausing"]

        def ended() -> bool:
            return any(p.get("status", {}).get("phase") == "Succeeded" for p in cloud.pods())

        await wait_until(ended, timeout=60)
        assert not handle.snapshot().done
        await handle.resume()
        assert Lifecycle.FINISHED is (await final(handle)).lifecycle


async def test_a_process_paused_before_its_pod_exists_creates_nothing_until_resumed(
    kube: Target, tmp_path: Path
) -> None:
    """Held, paused, then started: no create is even asked for; resume creates the pod."""
    async with running(kube, tmp_path) as cloud:
        handle = await cloud.node.spawn("cloud", pod_settings(cloud.namespace, "echo ok"), start=False)
        await handle.pause()
        await handle.start()
        snapshot = handle.snapshot()
        assert snapshot.paused
        assert [] == list(snapshot.waiting_on)
        assert 0 == cloud.executor.created
        await handle.resume()
        done = await final(handle)
        assert Lifecycle.FINISHED is done.lifecycle, done.error
        assert 1 == cloud.executor.created


# --- against the fake: what only it can do --------------------------------------------------


async def test_500_pods_are_tracked_by_one_watch_and_each_created_once(fake_kube: FakeKube, tmp_path: Path) -> None:
    """500 processes, 500 pods: one list and one watch request for their namespace, not one GET
    of a pod, every pod created exactly once (the fake's audit log), every process finished."""
    async with running(fake_target(fake_kube), tmp_path, watch_timeout=600) as cloud:
        handles = [await cloud.spawn("echo $HOSTNAME") for _ in range(500)]
        results = await asyncio.gather(*(h.wait(timeout=110) for h in handles))
        assert [] == [r.error for r in results if r.lifecycle is not Lifecycle.FINISHED]
        creates = cloud.creates()
        assert 500 == len(creates)
        assert {1} == set(creates.values())
        assert 0 == len(cloud.audit("get"))
        assert 1 == len(cloud.audit("list"))
        assert 1 == len(cloud.audit("watch"))
        assert 500 == len(cloud.audit("get", "pods/log")), Counter(str(r.result["logs"]) for r in results)


async def test_an_api_server_restart_mid_run_loses_nothing(fake_kube: FakeKube, tmp_path: Path) -> None:
    """The API server goes down (every connection cut) while 50 pods run, and comes back: the
    watch reconnects from its resourceVersion, every process finishes, no pod is created twice."""
    async with running(fake_target(fake_kube), tmp_path, retries=30) as cloud:
        handles = [await cloud.spawn("sleep 2; echo done") for _ in range(50)]
        await wait_until(lambda: all(h.snapshot().phase == "running" for h in handles), timeout=60)
        (watch,) = cloud.executor.watches()
        fake_kube.stop_api()
        try:
            await wait_until(lambda: watch.failures > 0, timeout=30)
        finally:
            fake_kube.start_api()
        results = await asyncio.gather(*(h.wait(timeout=90) for h in handles))
        assert [] == [r.error for r in results if r.lifecycle is not Lifecycle.FINISHED]
        assert {1} == set(cloud.creates().values())
        assert watch.restarts["error"] >= 1
        assert all(r.state["result"]["logs"]["complete"] for r in results)


async def test_compaction_mid_watch_makes_the_watch_list_again(fake_kube: FakeKube, tmp_path: Path) -> None:
    """The server compacts its history and ends the watch with 410 Expired: the watch lists
    again and goes on; every process finishes."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        handles = [await cloud.spawn("sleep 2") for _ in range(20)]
        await wait_until(lambda: all(h.snapshot().phase == "running" for h in handles), timeout=60)
        (watch,) = cloud.executor.watches()
        fake_kube.control("/compact", {"close_watches": True})
        await wait_until(lambda: watch.restarts["expired"] >= 1 and watch.lists >= 2, timeout=30)
        results = await asyncio.gather(*(h.wait(timeout=60) for h in handles))
        assert [] == [r.error for r in results if r.lifecycle is not Lifecycle.FINISHED]
        assert 2 <= len(cloud.audit("list"))


async def test_a_429_storm_is_ridden_out_with_every_pod_created_once(fake_kube: FakeKube, tmp_path: Path) -> None:
    """The next 300 requests get 429 with Retry-After: 1 while 100 processes start: they are
    retried after what the server said, every process finishes, no pod is created twice."""
    async with running(fake_target(fake_kube), tmp_path, retries=20) as cloud:
        await cloud.spawn("true")  # the watch is up before the storm
        await wait_until(lambda: bool(cloud.creates()), timeout=30)
        fake_kube.control("/throttle", {"count": 300, "retry_after": 1})
        handles = [await cloud.spawn("true") for _ in range(100)]
        results = await asyncio.gather(*(h.wait(timeout=110) for h in handles))
        assert [] == [r.error for r in results if r.lifecycle is not Lifecycle.FINISHED]
        throttled = sum(n for (verb, code), n in cloud.executor.clusters["k"].api.counts.items() if code == "429")
        assert throttled >= 300
        assert {1} == set(cloud.creates().values())


async def test_a_create_whose_answer_was_lost_adopts_the_pod_it_made(fake_kube: FakeKube, tmp_path: Path) -> None:
    """The server carries a create out and its answer is lost (504): the retry meets
    AlreadyExists, finds the pod's labels are its action's, and adopts it: one pod."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        await cloud.spawn("true")
        await wait_until(lambda: bool(cloud.creates()), timeout=30)
        fake_kube.control("/lose", {"count": 1})
        done = await final(await cloud.spawn("echo adopted"))
        assert Lifecycle.FINISHED is done.lifecycle, done.error
        assert done.state["adopted"]
        assert 1 == cloud.creates()[done.state["pod"]]
        assert [409] == [e["code"] for e in cloud.audit("create") if e["name"] == done.state["pod"]][1:]


def create_action(namespace: str, pid: str) -> TrackedAction:
    """The create action a process ``pid`` would describe for a pod running ``true``."""
    spec = parse(pod_settings(namespace, "true"))
    action_id = f"{pid}:create:1"
    labels, annotations = identity("statevisor", pid, action_id)
    pod = manifest(spec, name=pod_name(pid, action_id), namespace=namespace, labels=labels, annotations=annotations)
    return TrackedAction(action_id, CREATE, {"cluster": "k", "namespace": namespace, "manifest": pod}, pid)


async def test_a_pod_of_the_actions_name_with_other_labels_is_refused(fake_kube: FakeKube, tmp_path: Path) -> None:
    """A pod already holds the name the action's pod would take, with other labels: the create
    meets AlreadyExists and refuses it (PodConflict, naming the labels it found), leaving that
    pod alone."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        action = create_action(cloud.namespace, "someone")
        name = action.payload["manifest"]["metadata"]["name"]
        command = ["--restart=Never", "-n", cloud.namespace, "--labels=app=other", "--command", "--", "sleep", "300"]
        run = fake_kube.kubectl("run", name, f"--image={IMAGE}", *command)
        assert 0 == run.returncode, run.stderr
        with pytest.raises(Exception, match="is not this action's") as refused:
            await cloud.executor.execute(action)
        assert "PodConflict" == type(refused.value).__name__
        assert "app=other" in str(refused.value)
        assert "sleep" == cloud.pods()[0]["spec"]["containers"][0]["command"][0]


async def test_the_executor_holds_a_create_while_its_process_is_paused(fake_kube: FakeKube, tmp_path: Path) -> None:
    """A pause that reaches a create before its request is made holds it there: no create
    reaches the server until the resume."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        action = create_action(cloud.namespace, "held")
        await cloud.executor.pause(action)
        creating = asyncio.ensure_future(cloud.executor.execute(action))
        await wait_until(lambda: cloud.executor.holding == 1, timeout=30)
        assert 0 == len(cloud.audit("create"))
        await cloud.executor.resume(action)
        report = await asyncio.wait_for(creating, 30)
        assert action.payload["manifest"]["metadata"]["name"] == report["pod"]
        assert 1 == len(cloud.audit("create"))


async def test_an_oom_killed_container_fails_its_process_with_oomkilled(fake_kube: FakeKube, tmp_path: Path) -> None:
    """The kernel's OOM killer (the fake's kubelet, on demand) ends the container: OOMKilled, 137."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        handle = await cloud.spawn("echo allocating; sleep 300")
        snapshot = await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
        fake_kube.control("/oom", {"namespace": cloud.namespace, "name": snapshot.state["pod"]})
        done = await final(handle)
        assert "OOMKilled (exit code 137)" == done.error
        assert ["allocating"] == await handle.logs()


async def test_an_evicted_pod_fails_its_process_with_evicted(fake_kube: FakeKube, tmp_path: Path) -> None:
    """Node-pressure eviction: the pod is Failed with reason Evicted, and so is its process."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        handle = await cloud.spawn("sleep 300")
        snapshot = await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
        fake_kube.control("/evict", {"namespace": cloud.namespace, "name": snapshot.state["pod"]})
        done = await final(handle)
        assert (done.error or "").startswith("Evicted: The node was low on resource: memory")


async def test_rbac_forbidden_fails_naming_the_verb_and_resource(fake_kube: FakeKube, tmp_path: Path) -> None:
    """A create RBAC forbids fails the process at once, naming the verb and resource."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        rule = {"verb": "create", "resource": "pods", "namespace": cloud.namespace}
        fake_kube.control("/forbid", rule)
        try:
            done = await final(await cloud.spawn("true"))
        finally:
            fake_kube.control("/allow", rule)
        assert Lifecycle.FAILED is done.lifecycle
        assert "forbidden to create pods" in (done.error or "")
        assert "Forbidden" in (done.error or "")


async def test_a_namespace_quota_with_no_room_is_waited_on(fake_kube: FakeKube, tmp_path: Path) -> None:
    """A quota of 0 pods: the process waits on the namespace quota (the snapshot says so, with
    the server's message) and creates its pod once there is room."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        fake_kube.control("/quota", {"namespace": cloud.namespace, "pods": 0})
        try:
            handle = await cloud.spawn("echo made")
            waiting = await wait_for_snapshot(handle, lambda s: s.state.get("waiting_for") == "namespace quota")
            assert "exceeded quota" in waiting.state["problem"]
        finally:
            fake_kube.control("/quota", {"namespace": cloud.namespace, "pods": None})
        done = await final(handle)
        assert Lifecycle.FINISHED is done.lifecycle, done.error


async def test_an_unreachable_api_server_pauses_the_process_and_resume_retries(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    """Past the retry budget the process pauses itself, saying the API server is unreachable;
    once it is back, resume creates the pod and the process finishes."""
    async with running(fake_target(fake_kube), tmp_path, retries=2, backoff_max=0.2) as cloud:
        fake_kube.stop_api()
        try:
            handle = await cloud.spawn("echo back")
            paused = await wait_for_snapshot(handle, lambda s: s.paused, timeout=30)
            assert "resume to retry" in (paused.pause_reason or "")
            assert "cluster 'k'" in (paused.pause_reason or "")
        finally:
            fake_kube.start_api()
        await handle.resume()
        done = await final(handle)
        assert Lifecycle.FINISHED is done.lifecycle, done.error


async def test_a_kill_while_the_api_server_is_unreachable_is_owed_and_carried_out(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    """Kills while the API server is down are bounded; the deletes are written down as owed and
    carried out once it is back, by the next executor on the same records (a daemon restart)."""
    target = fake_target(fake_kube)
    async with running(target, tmp_path, kill_timeout=0.5) as cloud:
        handles = [await cloud.spawn("sleep 300") for _ in range(5)]
        await wait_until(lambda: all(h.snapshot().phase == "running" for h in handles), timeout=60)
        namespace = cloud.namespace
        fake_kube.stop_api()
        try:
            await asyncio.wait_for(asyncio.gather(*(h.kill() for h in handles)), 15)
            await wait_until(lambda: 5 == cloud.executor.reaper.owed("k"), timeout=15)
        finally:
            await cloud.node.shutdown(timeout=10)
            fake_kube.start_api()
    assert 5 == len(DeleteJournal(tmp_path / "cloud" / "deletes.jsonl").entries)
    node, executor = cloud_node({"k": fake_kube.cluster_table(namespace=namespace)}, tmp_path)
    await node.start()
    try:
        alive = [p for p in fake_kube.pods() if p["metadata"]["namespace"] == namespace]
        assert 5 == len(alive)
        await wait_until(lambda: not [p for p in fake_kube.pods() if p["metadata"]["namespace"] == namespace], 60)
        await wait_until(lambda: 0 == len(executor.reaper.journal), timeout=30)
    finally:
        await node.shutdown(timeout=10)


async def test_a_kill_that_meets_a_create_in_flight_deletes_by_name_and_keeps_looking(
    fake_kube: FakeKube, tmp_path: Path
) -> None:
    """A kill while the pod's create is still being retried (the API server is down) is
    bounded; the delete is owed by the pod's name, with a window in which a create the server
    carries out late is undone too. Once the server is back, no pod of that name is left."""
    async with running(fake_target(fake_kube), tmp_path, kill_timeout=0.5, retries=50, backoff_max=0.2) as cloud:
        await cloud.spawn("true")  # the namespace's watch is up: the next create goes out
        await wait_until(lambda: bool(cloud.creates()), timeout=30)
        api = cloud.executor.clusters["k"].api
        fake_kube.stop_api()
        try:
            handle = await cloud.spawn("sleep 300")
            await wait_until(lambda: api.counts[("create", "error")] >= 1, timeout=30)
            await asyncio.wait_for(handle.kill(), 15)
            key = ("k", cloud.namespace, handle.snapshot().state["pod"])
            await wait_until(lambda: key in cloud.executor.reaper.journal.entries, timeout=15)
            assert cloud.executor.reaper.journal.entries[key].linger > 0
        finally:
            fake_kube.start_api()
        await wait_until(lambda: cloud.executor.reaper.journal.entries[key].done_once, timeout=30)
        assert key[2] not in cloud.creates()
        assert key[2] not in {p["metadata"]["name"] for p in cloud.pods()}


async def test_finished_pods_are_deleted_after_their_ttl(fake_kube: FakeKube, tmp_path: Path) -> None:
    """A finished pod stays for its ttl, then the reaper deletes it; its process's log stays."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        handle = await cloud.spawn("echo kept", ttl=1.0)
        assert Lifecycle.FINISHED is (await final(handle)).lifecycle
        assert 1 == cloud.executor.reaper.scheduled("k") + len(cloud.audit("delete"))
        await wait_until(lambda: not cloud.pods(), timeout=30)
        assert ["kept"] == await handle.logs()
        assert [200] == [e["code"] for e in cloud.audit("delete")]


@pytest.mark.parametrize("context", ["fake-cert", "fake-exec"])
async def test_client_certificates_and_exec_plugins_authenticate(
    fake_kube: FakeKube, tmp_path: Path, context: str
) -> None:
    """A kubeconfig context with a client certificate, or with an exec plugin that prints the
    token, reaches the API server (as the user it names)."""
    target = fake_target(fake_kube)
    async with running(target, tmp_path, context=context) as cloud:
        done = await final(await cloud.spawn("echo authenticated"))
        assert Lifecycle.FINISHED is done.lifecycle, done.error
    users = {e["user"] for e in fake_kube.audit() if e["namespace"] == cloud.namespace}
    assert users == ({"statevisor-test-cert"} if context == "fake-cert" else {"statevisor-test"})
    if context == "fake-exec":
        assert fake_kube.exec_log.read_text().count("run") >= 1


async def test_a_server_certificate_from_another_ca_is_refused(fake_kube: FakeKube, tmp_path: Path) -> None:
    """TLS is verified: a kubeconfig trusting another CA reaches nothing; the process pauses,
    saying the certificate did not verify."""
    async with running(fake_target(fake_kube), tmp_path, context="fake-wrong-ca", retries=1) as cloud:
        handle = await cloud.spawn("true")
        paused = await wait_for_snapshot(handle, lambda s: s.paused, timeout=30)
        assert "CERTIFICATE_VERIFY_FAILED" in (paused.pause_reason or "") or "certificate" in (
            paused.pause_reason or ""
        )
        assert 0 == len(cloud.audit("create"))
        await handle.kill()


async def test_the_executor_exposes_pods_requests_watches_and_owed_deletes(fake_kube: FakeKube, tmp_path: Path) -> None:
    """metric_families(): pods by phase, requests by verb and code, one watch connection per
    namespace, no restarts, no owed deletes."""
    async with running(fake_target(fake_kube), tmp_path) as cloud:
        handle = await cloud.spawn("sleep 300")
        await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
        await wait_until(lambda: cloud.executor.clusters["k"].logs.following == 1, timeout=30)
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in cloud.executor.metric_families()
            for sample in family.samples
        }
        ns = cloud.namespace
        assert 1 == samples[("statevisor_cloud_pods", (("cluster", "k"), ("namespace", ns), ("phase", "Running")))]
        assert (
            1
            == samples[("statevisor_cloud_api_requests_total", (("cluster", "k"), ("code", "201"), ("verb", "create")))]
        )
        assert 1 == samples[("statevisor_cloud_watch_connections", (("cluster", "k"), ("namespace", ns)))]
        assert (
            0
            == samples[
                ("statevisor_cloud_watch_restarts_total", (("cluster", "k"), ("namespace", ns), ("why", "error")))
            ]
        )
        assert 0 == samples[("statevisor_cloud_deletes_owed", (("cluster", "k"),))]
        assert 1 == samples[("statevisor_cloud_log_streams", (("cluster", "k"),))]
        await handle.kill()
