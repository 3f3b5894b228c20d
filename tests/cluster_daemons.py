"""Real ``statevisor daemon`` processes as members of one cluster, on the test NATS cluster.

Each member has a directory of its own (configuration, socket, log) and a configuration naming
its node; all share the NATS servers, a cluster name unique to the test (its buckets are its
own) and the ledger of :mod:`tests.cluster_kit`. Members are started, stopped, killed, paused
and continued one by one; waiting is on conditions (its socket answers), never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from supervisor.control import Client
from tests.services.loopback import free_ports, wait_for
from tests.services.nats import NatsCluster

ROOT = Path(__file__).resolve().parent.parent


class DaemonCluster:
    """Members ``nodes`` of a fresh cluster on ``nats``, with a lease of ``lease`` seconds."""

    def __init__(
        self, root: Path, nats: NatsCluster, nodes: tuple[str, ...] = ("a", "b", "c"), *, lease: float = 3.0,
        extra: str = "",
    ) -> None:  # fmt: skip
        self.root = root
        self.nats = nats
        self.nodes = nodes
        self.lease = lease
        self.name = "t" + secrets.token_hex(4)
        self.ledger = root / "ledger.db"
        self.extra = extra
        self.ports = dict(zip(nodes, free_ports(len(nodes)), strict=True))
        self.children: dict[str, subprocess.Popen[bytes] | None] = dict.fromkeys(nodes)
        for node in nodes:
            self.write_config(node)

    def directory(self, node: str) -> Path:
        return self.root / node

    def socket(self, node: str) -> Path:
        return self.directory(node) / "var" / "s.sock"

    def log(self, node: str) -> Path:
        return self.directory(node) / "daemon.log"

    def write_config(self, node: str) -> Path:
        directory = self.directory(node)
        (directory / "var").mkdir(parents=True, exist_ok=True)
        servers = ", ".join(f'"{url}"' for url in self.nats.urls)
        config = directory / "statevisor.toml"
        config.write_text(
            f'[daemon]\nstore = "var/store.db"\nsocket = "var/s.sock"\nmetrics = "127.0.0.1:{self.ports[node]}"\n'
            'loop = "asyncio"\nshutdown_timeout = 10\n\n'
            f'[cluster]\nservers = [{servers}]\nname = "{self.name}"\nnode = "{node}"\nlease = {self.lease}\n\n'
            '[kinds]\nstepper = "tests.cluster_kit:Stepper"\n\n'
            '[executors]\n"ledger.effect" = "tests.cluster_kit:effect"\n' + self.extra
        )
        return config

    def start(self, node: str, *, wait: bool = True) -> None:
        """Start ``node``'s daemon; with ``wait``, until its socket answers."""
        env = {**os.environ, "STATEVISOR_TEST_LEDGER": str(self.ledger)}
        config = self.directory(node) / "statevisor.toml"
        with self.log(node).open("ab") as log:
            self.children[node] = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env,
            )  # fmt: skip
        if wait:
            self.wait_serving(node)

    def wait_serving(self, node: str, timeout: float = 60.0) -> None:
        child = self.children[node]
        assert child is not None

        def serving() -> bool:
            if child.poll() is not None:
                raise AssertionError(f"daemon {node} exited ({child.returncode}): {self.tail(node)}")
            return self.socket(node).exists() and self.started_since(node)

        wait_for(f"daemon {node} to serve", serving, timeout)

    def started_since(self, node: str) -> bool:
        """Whether the latest run of ``node`` logged daemon_started (after its last exit)."""
        events = [e.get("event") for e in self.events(node)]
        last_start = max((i for i, e in enumerate(events) if e == "daemon_started"), default=-1)
        last_stop = max((i for i, e in enumerate(events) if e in ("daemon_stopped", "daemon_lease_lost")), default=-1)
        return last_start > last_stop

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node, wait=False)
        for node in self.nodes:
            self.wait_serving(node)

    def signal(self, node: str, signum: int) -> None:
        child = self.children[node]
        assert child is not None
        child.send_signal(signum)

    def kill(self, node: str) -> None:
        """SIGKILL ``node``'s daemon and reap it."""
        child = self.children[node]
        assert child is not None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)

    def stop(self, node: str, timeout: float = 60.0) -> int:
        """SIGTERM ``node``'s daemon; its exit status."""
        child = self.children[node]
        if child is None or child.poll() is not None:
            return child.returncode if child is not None else 0
        child.send_signal(signal.SIGCONT)  # a paused one must run to stop
        child.send_signal(signal.SIGTERM)
        return child.wait(timeout=timeout)

    def close(self) -> None:
        for node in self.nodes:
            child = self.children[node]
            if child is not None and child.poll() is None:
                try:
                    self.stop(node, timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def client(self, node: str) -> Client:
        return Client.connect(str(self.socket(node)))

    def events(self, node: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        if not self.log(node).exists():
            return found
        for line in self.log(node).read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def tail(self, node: str, lines: int = 15) -> str:
        if not self.log(node).exists():
            return "(no log)"
        kept = [
            line for line in self.log(node).read_text(errors="replace").splitlines() if "python_warning" not in line
        ]
        return "\n".join(kept[-lines:])

    def effects(self) -> dict[tuple[str, int], str]:
        """The ledger: (pid, step) -> the action id that applied it."""
        if not self.ledger.exists():
            return {}
        with sqlite3.connect(self.ledger, timeout=30) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS effects (pid TEXT, step INTEGER, action TEXT, PRIMARY KEY (pid, step))"
            )
            return {(pid, step): action for pid, step, action in db.execute("SELECT pid, step, action FROM effects")}

    def duplicates(self) -> list[tuple[str, int, str, str]]:
        """Effects applied again under another action id (the runtime doing a step twice)."""
        if not self.ledger.exists():
            return []
        with sqlite3.connect(self.ledger, timeout=30) as db:
            db.execute("CREATE TABLE IF NOT EXISTS duplicates (pid TEXT, step INTEGER, first TEXT, again TEXT)")
            return list(db.execute("SELECT pid, step, first, again FROM duplicates"))

    def __repr__(self) -> str:
        up = [n for n, c in self.children.items() if c is not None and c.poll() is None]
        return f"<DaemonCluster {self.name}: {len(up)}/{len(self.nodes)} up>"


def wait_until(what: str, check: Any, timeout: float) -> float:
    """Wait for ``check()`` (polled); the seconds it took."""
    started = time.monotonic()
    wait_for(what, check, timeout)
    return time.monotonic() - started
