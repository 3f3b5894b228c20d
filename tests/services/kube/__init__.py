"""A fake Kubernetes API server on loopback, with a kubelet of its own, for the cloud kind's tests
and for ``statevisor bench cloud``.

No Kubernetes API server or kubelet can be installed on the test machines (Debian ships
``kubectl`` as ``kubernetes-client``, nothing that serves the API), so the cloud kind is tested
against this: a real HTTPS server (``python -m tests.services.kube``, a process of its own) that
implements what the kind uses with Kubernetes' semantics, and whose fidelity is checked with the
real ``kubectl`` (``tests/test_cloud_fake.py``):

* resourceVersions from one counter, watches from a version with bookmarks, ``410`` (``Expired``)
  once the history is compacted, label and field selectors, ``limit``/``continue`` lists;
* ``Status`` objects for errors (``AlreadyExists``, ``NotFound``, ``Forbidden``, ``Invalid``...),
  ``429`` with ``Retry-After``, ``5xx``, RBAC denials, namespace quotas, all injected on demand;
* bearer tokens, client certificates (signed by its own CA), and TLS with a certificate for
  127.0.0.1 signed by that CA;
* a kubelet that runs each container's command as a local process: real exit codes and real
  output for ``pods/log``; unschedulable pods, images that never pull, missing Secrets,
  ``activeDeadlineSeconds``, graceful deletion, and OOM kills and evictions on demand
  (see :mod:`._kubelet`).

Every request is in an audit log the tests read (``creates()``: the pods created, by name).

Pods run the command they are given on this machine: tests give commands that exist here (the
image is ignored, but must be named; an image naming ``does-not-exist`` never pulls).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from tests.services.loopback import free_ports, port_open, wait_for

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "statevisor-test-token"  # the fake's own throwaway credential, for loopback alone
USER = "statevisor-test"


class FakeKube:
    """The fake API server as a child process, its certificates and a kubeconfig for it."""

    def __init__(
        self, root: Path, *, tls: bool = True, bookmark_interval: float = 1.0, write_latency: float = 0.0
    ) -> None:
        self.root = root
        self.tls = tls
        self.bookmark_interval = bookmark_interval
        self.write_latency = write_latency
        self.port, self.control_port = free_ports(2)
        self.process: subprocess.Popen[bytes] | None = None
        self.kubeconfig = root / "kubeconfig"
        self.exec_log = root / "exec-plugin.log"

    @property
    def server(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # --- life ----------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "tests.services.kube",
            "--port",
            str(self.port),
            "--control-port",
            str(self.control_port),
            "--token",
            f"{TOKEN}={USER}",
            "--bookmark-interval",
            str(self.bookmark_interval),
            "--write-latency",
            str(self.write_latency),
        ]
        if self.tls:
            self._certificates()
            argv += [
                "--cert",
                str(self.root / "server.pem"),
                "--key",
                str(self.root / "server.key"),
                "--client-ca",
                str(self.root / "ca.pem"),
            ]
        self._write_kubeconfig()
        log = open(self.root / "fake.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for("the fake API server to listen", self._up, 30)

    def _up(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the fake API server exited: {(self.root / 'fake.log').read_text()[-2000:]}")
        return port_open(self.port) and port_open(self.control_port)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    # --- what tests do to it -------------------------------------------------------------

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.control_port}{path}", data=data, method="GET" if body is None else "POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def audit(self) -> list[dict[str, Any]]:
        return list(self.control("/audit"))

    def creates(self) -> Counter[str]:
        """Pods created (answered 201), by name, from the audit log."""
        return Counter(
            e["name"] or ""
            for e in self.audit()
            if e["verb"] == "create" and e["resource"] == "pods" and e["code"] == 201
        )

    def requests(self, verb: str | None = None, resource: str = "pods") -> list[dict[str, Any]]:
        return [e for e in self.audit() if e["resource"] == resource and (verb is None or e["verb"] == verb)]

    def pods(self) -> list[dict[str, Any]]:
        return list(self.control("/pods"))

    def pod(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.pods() if p["metadata"]["name"] == name), None)

    def stop_api(self) -> None:
        """The API server goes down (its listener and every connection); the store, the kubelet
        and its pods stay, as etcd and the nodes do while an API server restarts."""
        self.control("/api/stop", {})

    def start_api(self) -> None:
        self.control("/api/start", {})

    def kubectl(self, *args: str, context: str = "fake", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this server."""
        return subprocess.run(
            [kubectl_program() or "kubectl", f"--kubeconfig={self.kubeconfig}", f"--context={context}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "KUBECACHEDIR": str(self.root / "kubectl-cache"), "HOME": str(self.root)},
        )

    # --- credentials ---------------------------------------------------------------------

    def _certificates(self) -> None:
        """A CA of its own, the server's certificate for 127.0.0.1 and a client certificate."""
        root = self.root
        if (root / "server.pem").exists():
            return
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        _openssl(
            "req",
            "-x509",
            *key,
            "-keyout",
            root / "ca.key",
            "-out",
            root / "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=statevisor-fake-ca",
        )
        for name, subject, extension in (
            ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
            ("client", f"/CN={USER}-cert", "extendedKeyUsage=clientAuth"),
        ):
            (root / f"{name}.ext").write_text(extension + "\n")
            _openssl("req", *key, "-keyout", root / f"{name}.key", "-out", root / f"{name}.csr", "-subj", subject)
            _openssl(
                "x509",
                "-req",
                "-in",
                root / f"{name}.csr",
                "-CA",
                root / "ca.pem",
                "-CAkey",
                root / "ca.key",
                "-CAcreateserial",
                "-out",
                root / f"{name}.pem",
                "-days",
                "3",
                "-extfile",
                root / f"{name}.ext",
            )
        # Another CA, that signed nothing here: a kubeconfig trusting it must fail TLS verification.
        _openssl(
            "req",
            "-x509",
            *key,
            "-keyout",
            root / "other-ca.key",
            "-out",
            root / "other-ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=another-ca",
        )

    def _write_kubeconfig(self) -> None:
        """JSON is YAML: kubectl and lightkube both read it. Contexts: ``fake`` (a token),
        ``fake-cert`` (the client certificate), ``fake-exec`` (an exec plugin that prints the
        token and notes each run in :attr:`exec_log`), ``fake-wrong-ca`` (a CA that did not
        sign the server's certificate)."""
        plugin = self.root / "exec-plugin.py"
        credential = {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "kind": "ExecCredential",
            "status": {"token": TOKEN},
        }
        plugin.write_text(
            f"import json, sys\nopen({str(self.exec_log)!r}, 'a').write('run\\n')\nprint(json.dumps({credential!r}))\n"
        )
        cluster: dict[str, Any] = {"server": self.server}
        wrong: dict[str, Any] = {"server": self.server}
        if self.tls:
            cluster["certificate-authority"] = str(self.root / "ca.pem")
            wrong["certificate-authority"] = str(self.root / "other-ca.pem")
        users = [
            {"name": "token", "user": {"token": TOKEN}},
            {
                "name": "exec",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": sys.executable,
                        "args": [str(plugin)],
                        "interactiveMode": "Never",
                    }
                },
            },
        ]
        if self.tls:
            users.append(
                {
                    "name": "cert",
                    "user": {
                        "client-certificate": str(self.root / "client.pem"),
                        "client-key": str(self.root / "client.key"),
                    },
                }
            )
        contexts = [
            {"name": "fake", "context": {"cluster": "fake", "user": "token", "namespace": "default"}},
            {"name": "fake-exec", "context": {"cluster": "fake", "user": "exec", "namespace": "default"}},
            {"name": "fake-wrong-ca", "context": {"cluster": "wrong-ca", "user": "token", "namespace": "default"}},
        ]
        if self.tls:
            contexts.append(
                {"name": "fake-cert", "context": {"cluster": "fake", "user": "cert", "namespace": "default"}}
            )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}, {"name": "wrong-ca", "cluster": wrong}],
            "users": users,
            "contexts": contexts,
            "current-context": "fake",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def cluster_table(self, **overrides: object) -> dict[str, object]:
        """A ``[kubernetes.NAME]`` table for this server, tuned for tests (short waits)."""
        table: dict[str, object] = {
            "kubeconfig": str(self.kubeconfig),
            "context": "fake",
            "namespace": "default",
            "request_timeout": 5.0,
            "retries": 6,
            "backoff_max": 1.0,
            "watch_timeout": 30,
            "qps": 0,
        }
        table.update(overrides)
        return table

    def __repr__(self) -> str:
        return f"<FakeKube {self.server} control=127.0.0.1:{self.control_port} running={self.process is not None}>"


def kubectl_program() -> str | None:
    """The kubectl on this machine: Debian's ``kubernetes-client`` installs /usr/bin/kubectl."""
    import shutil

    return shutil.which("kubectl")


def _openssl(*args: object) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)
