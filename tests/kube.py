"""What the cloud kind's tests run against: the fake API server (tests/services/kube/), or a real
cluster when ``STATEVISOR_TEST_KUBECONFIG`` names one, and the Node those tests build on it.

Each test gets a namespace of its own, so the session's pods never mix: on the fake it is made
through its control port; on a real cluster with kubectl, and deleted afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from processes.cloud import CloudExecutor, CloudPod, executors, parse_clusters
from supervisor import Node
from tests.services.kube import FakeKube, kubectl_program

REAL = "STATEVISOR_TEST_KUBECONFIG"
REAL_SKIP = (
    f"{REAL} is not set: this test's real-cluster variant runs against the cluster that kubeconfig names "
    "(kind, k3s, a cloud cluster); CI runs it against the fake API server only"
)
IMAGE = os.environ.get("STATEVISOR_TEST_IMAGE", "busybox:1.36")


class Target:
    """A cluster the tests run pods on: the fake, or a real one."""

    def __init__(self, fake: FakeKube | None, kubeconfig: Path, context: str | None) -> None:
        self.fake = fake
        self.kubeconfig = kubeconfig
        self.context = context
        self.namespaces: list[str] = []

    @property
    def real(self) -> bool:
        return self.fake is None

    def namespace(self) -> str:
        name = f"sv-test-{secrets.token_hex(4)}"
        if self.fake is not None:
            self.fake.control("/namespace", {"name": name})
        else:
            done = self.kubectl("create", "namespace", name)
            assert 0 == done.returncode, done.stderr
        self.namespaces.append(name)
        return name

    def cluster_table(self, namespace: str, **overrides: object) -> dict[str, object]:
        if self.fake is not None:
            return self.fake.cluster_table(namespace=namespace, **overrides)
        table: dict[str, object] = {
            "kubeconfig": str(self.kubeconfig),
            "namespace": namespace,
            "retries": 6,
            "backoff_max": 2.0,
            "qps": 50.0,
            "burst": 100,
        }
        if self.context:
            table["context"] = self.context
        table.update(overrides)
        return table

    def kubectl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self.fake is not None:
            return self.fake.kubectl(*args, timeout=timeout)
        context = [f"--context={self.context}"] if self.context else []
        return subprocess.run(
            [kubectl_program() or "kubectl", f"--kubeconfig={self.kubeconfig}", *context, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        done = self.kubectl("get", "pods", "-n", namespace, "-o", "json")
        assert 0 == done.returncode, done.stderr
        return list(json.loads(done.stdout)["items"])

    def cleanup(self) -> None:
        if self.fake is None:
            for name in self.namespaces:
                self.kubectl("delete", "namespace", name, "--wait=false")


def cloud_node(
    tables: Mapping[str, Mapping[str, Any]], tmp_path: Path, *, store: str | None = None
) -> tuple[Node, CloudExecutor]:
    """A Node (not started) running cloud processes on the ``[kubernetes.NAME]`` ``tables``, its
    logs in ``tmp_path/logs``, and its cloud executor."""
    clusters = parse_clusters(tables)
    made = executors(clusters, tmp_path / "cloud")
    executor = made["cloud.create"]
    assert isinstance(executor, CloudExecutor)
    node = Node(machines=[CloudPod(clusters, tmp_path / "logs")], executors=made, kill_grace=10.0, store=store)
    return node, executor


def pod_settings(namespace: str, script: str, **settings: Any) -> dict[str, Any]:
    """A cloud process's settings that run ``sh -c script`` in ``namespace`` of cluster ``k``."""
    return {"cluster": "k", "namespace": namespace, "image": IMAGE, "command": ["sh", "-c", script], **settings}
