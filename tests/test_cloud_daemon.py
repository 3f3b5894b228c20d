"""Cloud processes in a real daemon against the fake API server: clusters declared in the
configuration (and checked there), a SIGKILL of the daemon in the middle of creating pods (every
pod created exactly once, counted in the fake's audit log, every process ending with its pod's
outcome), and remote handles and the command line on a pod: pause, resume, ``statevisor logs -f``."""

from __future__ import annotations

import asyncio
import secrets
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from supervisor import ProcessRecord, decode_record
from supervisor.control import Client
from tests.helpers import wait_for_snapshot
from tests.services.kube import FakeKube
from tests.test_daemon import ROOT, free_port, kill_if_running, start_daemon, wait_for

PODS = 40


def write_config(
    directory: Path, fake: FakeKube, namespace: str, processes: list[tuple[str, str]], **table: object
) -> tuple[Path, int]:
    port = free_port()
    cluster = fake.cluster_table(namespace=namespace, **table)
    lines = [
        "[daemon]",
        'store = "var/store.db"',
        'socket = "var/s.sock"',
        f'metrics = "127.0.0.1:{port}"',
        'log_dir = "var/log"',
        'run_dir = "var/runs"',
        "",
        "[kubernetes.k]",
        *(f"{key} = {_toml(value)}" for key, value in cluster.items()),
        "",
    ]
    for name, script in processes:
        lines += [
            "[[process]]",
            f'name = "{name}"',
            'kind = "cloud"',
            'restart = "temporary"',
            "[process.settings]",
            'cluster = "k"',
            'image = "busybox:1.36"',
            f"command = ['sh', '-c', '{script}']",
            "",
        ]
    config = directory / "statevisor.toml"
    config.write_text("\n".join(lines))
    return config, port


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def ended(store: Path) -> dict[str, ProcessRecord]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT record FROM processes WHERE ended IS NOT NULL").fetchall()
    return {decode_record(blob).name.rpartition("/")[2]: decode_record(blob) for (blob,) in rows}


def namespace_of(fake: FakeKube) -> str:
    name = f"daemon-{secrets.token_hex(4)}"
    fake.control("/namespace", {"name": name})
    return name


def audit(fake: FakeKube, namespace: str, verb: str, resource: str = "pods") -> list[dict[str, Any]]:
    return [e for e in fake.requests(verb, resource) if e["namespace"] == namespace]


@pytest.mark.uvloop_only
def test_daemon_sigkill_mid_creation_creates_every_pod_exactly_once(tmp_path: Path, fake_kube: FakeKube) -> None:
    """40 cloud processes from the configuration, their creates paced (qps 10) so that the
    daemon is SIGKILLed with some pods made and some not. After a restart every pod is created
    exactly once (the fake's audit log), the pods made before the kill are adopted by label
    without a request of their own, and every process finishes with its pod's exit code and log."""
    namespace = namespace_of(fake_kube)
    processes = [(f"pod{index}", f"echo started {index}; sleep 1; echo done {index}") for index in range(PODS)]
    config, port = write_config(tmp_path, fake_kube, namespace, processes, qps=10, burst=1)
    first = start_daemon(config, port)
    try:
        wait_for(lambda: len(audit(fake_kube, namespace, "create")) >= 5, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        made_before_kill = len({e["name"] for e in audit(fake_kube, namespace, "create") if e["code"] == 201})
        second = start_daemon(config, port)
    finally:
        kill_if_running(first)
    try:
        store = tmp_path / "var" / "store.db"
        wait_for(lambda: len(ended(store)) == PODS, timeout=120)
        records = ended(store)
        creates = Counter(e["name"] for e in audit(fake_kube, namespace, "create") if e["code"] == 201)
        assert PODS == len(creates), f"{len(creates)} pods created for {PODS} processes"
        assert {1} == set(creates.values()), "a pod was created twice"
        assert [] == audit(fake_kube, namespace, "get"), "a pod was looked up by its own request"
        for index in range(PODS):
            record = records[f"pod{index}"]
            assert "finished" == str(record.lifecycle), f"pod{index}: {record.error}"
            assert 0 == record.state["result"]["exit_code"]
            log = tmp_path / "var" / "log" / "root" / f"pod{index}.out.log"  # a declared process is root/NAME
            assert f"started {index}\ndone {index}\n" == log.read_text(), f"pod{index}'s log"
        assert 0 < made_before_kill < PODS, f"{made_before_kill} of {PODS} pods made at the kill"
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=30)


@pytest.mark.uvloop_only
async def test_remote_handles_pause_and_resume_a_pod_and_the_cli_follows_its_log(
    tmp_path: Path, fake_kube: FakeKube
) -> None:
    """Through the control socket: pause says the running pod runs on, resume takes its
    outcome; ``statevisor logs -f`` prints the pod's lines as they come."""
    namespace = namespace_of(fake_kube)
    script = f"for i in 1 2 3; do echo tick $i; sleep 0.5; done; while [ ! -e {tmp_path / 'go'} ]; do sleep 0.1; done"
    config, port = write_config(tmp_path, fake_kube, namespace, [("ticker", script)])
    daemon = await asyncio.to_thread(start_daemon, config, port)
    socket = str(tmp_path / "var" / "s.sock")
    try:
        async with Client.connect(socket) as client:
            handle = await client.get("root/ticker")
            await wait_for_snapshot(handle, lambda s: s.phase == "running", timeout=60)
            follower = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "supervisor",
                "logs",
                "-f",
                "--socket",
                socket,
                "ticker",
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                assert follower.stdout is not None
                lines = [(await asyncio.wait_for(follower.stdout.readline(), 30)).decode() for _ in range(3)]
            finally:
                follower.terminate()
                await follower.wait()
            assert ["tick 1\n", "tick 2\n", "tick 3\n"] == lines
            await handle.pause()
            paused = await handle.snapshot()
            assert paused.paused
            assert "cannot suspend a pod: it runs on" in paused.state["pausing"]
            (tmp_path / "go").touch()
            await handle.resume()
            done = await handle.wait(timeout=60)
            assert "finished" == str(done.lifecycle), done.error
    finally:
        daemon.send_signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.communicate, timeout=30)


def refused(config: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_the_configuration_check_names_a_clusters_mistakes(tmp_path: Path, fake_kube: FakeKube) -> None:
    """The daemon refuses a configuration with an unknown key in [kubernetes.k], or a context
    its kubeconfig lacks, before anything starts, naming the dotted key."""
    config, _ = write_config(tmp_path, fake_kube, "default", [], contxt="fake")
    done = refused(config)
    assert 0 != done.returncode
    assert "kubernetes.k.contxt" in done.stderr + done.stdout
    assert "unknown key" in done.stderr + done.stdout
    config, _ = write_config(tmp_path, fake_kube, "default", [], context="no-such-context")
    done = refused(config)
    assert 0 != done.returncode
    assert "kubernetes.k.context" in done.stderr + done.stdout
    assert "Context 'no-such-context' not found" in done.stderr + done.stdout
