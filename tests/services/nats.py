"""A real 3-node NATS JetStream cluster on loopback, for the log-apply tests and benchmark.

Needs Debian's ``nats-server`` (the test command installs it). Every node gets client and
cluster ports of its own and storage in the given directory; nodes can be stopped (SIGKILL or
SIGTERM) and started again on the same ports and storage, which is what failover tests need.
Waiting is on conditions (ports answer; every node's ``/healthz`` says its JetStream is current,
which needs an elected meta leader), never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.services.loopback import free_ports, port_open, wait_for

MINIMUM = (2, 9, 21)
"""The oldest nats-server whose compare-and-set holds on a replicated stream (issue 4320)."""

PINNED = Path(__file__).resolve().parents[2] / ".ci" / "nats" / "usr" / "sbin" / "nats-server"


def nats_server() -> str | None:
    """The nats-server the tests run: ``STATEVISOR_NATS_SERVER``, else the one the test command
    unpacked into .ci/nats/, else one on the PATH, if it is recent enough (an older one is
    refused by name: the cluster's fencing would not hold on it)."""
    for candidate in (os.environ.get("STATEVISOR_NATS_SERVER"), str(PINNED), shutil.which("nats-server")):
        if candidate and Path(candidate).is_file():
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False).stdout
            found = re.search(r"v(\d+)\.(\d+)\.(\d+)", version)
            if found and tuple(map(int, found.groups())) >= MINIMUM:
                return candidate
    return None


class NatsCluster:
    """``size`` nats-server nodes with JetStream, clustered over loopback."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.size = size
        self._choose_ports()
        self.children: list[subprocess.Popen[bytes] | None] = [None] * size

    def _choose_ports(self) -> None:
        ports = free_ports(3 * self.size)
        self.ports = ports[: self.size]
        self.cluster_ports = ports[self.size : 2 * self.size]
        self.http_ports = ports[2 * self.size :]

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.ports]

    def _config(self, node: int) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster_ports)
        store = self.root / f"n{node}"
        store.mkdir(parents=True, exist_ok=True)
        path = self.root / f"n{node}.conf"
        path.write_text(
            f"""server_name: n{node}
listen: 127.0.0.1:{self.ports[node]}
http: 127.0.0.1:{self.http_ports[node]}
jetstream {{ store_dir: "{store}", max_memory_store: 256MB, max_file_store: 4GB }}
cluster {{ name: statevisor, listen: 127.0.0.1:{self.cluster_ports[node]}, routes: [{routes}] }}
"""
        )
        return path

    def start_node(self, node: int) -> None:
        program = nats_server()
        if program is None:
            raise RuntimeError("nats-server is not installed (Debian package nats-server)")
        log = open(self.root / f"n{node}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.children[node] = subprocess.Popen(
            [program, "-c", str(self._config(node))], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(f"nats-server n{node} to listen", lambda: self._alive(node) and port_open(self.ports[node]), 15)

    def _alive(self, node: int) -> bool:
        """True while ``node`` runs; raises, with the end of its log, once it has exited."""
        child = self.children[node]
        if child is None or child.poll() is not None:
            tail = (self.root / f"n{node}.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"nats-server n{node} exited: {tail}")
        return True

    def stop_node(self, node: int, sig: int = signal.SIGKILL) -> None:
        child = self.children[node]
        if child is not None and child.poll() is None:
            child.send_signal(sig)
            child.wait(timeout=20)
        self.children[node] = None

    def healthy(self, node: int) -> bool:
        """Whether ``node`` answers its health check (JetStream current, meta leader known)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_ports[node]}/healthz", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until every running node is healthy (after a start, a restart or a freeze)."""
        running = [n for n, child in enumerate(self.children) if child is not None and child.poll() is None]
        wait_for("the NATS cluster to be healthy", lambda: all(self.healthy(n) for n in running), timeout)

    def start(self, attempts: int = 3) -> None:
        """Start every node and wait until all of them are up and healthy. A node that exits
        at start (a port taken meanwhile by another program) fails the attempt: the cluster is
        stopped and started again on fresh ports. Waiting only on the nodes still running would
        pass with two of three, and a 3-replica stream then finds no place."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            try:
                for node in range(self.size):
                    self.start_node(node)
                wait_for("every NATS node to be up and healthy", self._all_up_and_healthy, 60)
                self.wait_placeable()
                return
            except (RuntimeError, TimeoutError):
                self.stop()
                if attempt == attempts:
                    raise
                self._choose_ports()
                for node in range(self.size):  # nothing stored yet; no state of the failed try kept
                    shutil.rmtree(self.root / f"n{node}", ignore_errors=True)

    def wait_placeable(self, timeout: float = 60) -> None:
        """Wait until a 3-replica stream can be made: a just-elected meta leader answers "no
        suitable peers for placement" until it has heard of its peers' room (health says
        nothing of that). Runs its own event loop on a thread, so it works inside a test's too."""
        errors: list[BaseException] = []

        async def probe() -> None:
            import nats
            import nats.js.errors
            from nats.js.api import StreamConfig

            connection = await nats.connect(servers=self.urls)
            try:
                js = connection.jetstream()
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        await js.add_stream(StreamConfig(name="placement_probe", subjects=["probe.x"], num_replicas=3))
                        break
                    except (nats.js.errors.APIError, nats.errors.Error, TimeoutError):
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.25)
                await js.delete_stream("placement_probe")
            finally:
                await connection.close()

        def run() -> None:
            try:
                asyncio.run(probe())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run, name="nats-placement-probe")
        thread.start()
        thread.join(timeout + 15)
        if thread.is_alive() or errors:
            raise RuntimeError(f"the NATS cluster cannot place 3-replica streams: {errors or 'probe hung'}")

    def _all_up_and_healthy(self) -> bool:
        return all(self._alive(node) for node in range(self.size)) and all(map(self.healthy, range(self.size)))

    def stop(self) -> None:
        for node in range(self.size):
            self.stop_node(node, signal.SIGTERM)

    def __repr__(self) -> str:
        up = sum(1 for c in self.children if c is not None and c.poll() is None)
        return f"<NatsCluster {up}/{self.size} up ports={self.ports}>"
