"""How the batch kind logs in, against real sshds on loopback (tests/hpc.py): an ssh-agent,
an OpenSSH user certificate, and a jump host (ProxyJump). Each way is shown to work and, with
the one thing it depends on taken away, to be refused with a reason that says so: a test that
passed however we logged in would prove nothing."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from processes.batch import BatchExecutor, parse_hosts
from processes.batch._transport import SSHTransport
from processes.batch.errors import HostUnreachable
from supervisor import Lifecycle, Node
from tests.helpers import wait_until
from tests.hpc import Cluster, Sshd, batch_host, spawn_job, wait_for

pytestmark = pytest.mark.uvloop_only


def transport(cluster: Cluster, **overrides: Any) -> SSHTransport:
    """A transport to the cluster's sshd; an override of None leaves that key out."""
    table = cluster.host_table(connect_interval=0.0, backoff_max=0.1, **overrides)
    table = {key: value for key, value in table.items() if value is not None}
    return SSHTransport(parse_hosts({"cluster": table})["cluster"])


async def whoami(ssh: SSHTransport) -> str:
    try:
        return (await ssh.run(["id", "-un"])).stdout.strip()
    finally:
        await ssh.close()


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent on a socket of its own, exported as SSH_AUTH_SOCK for the test."""
    socket = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket)], stdout=subprocess.DEVNULL)
    try:
        wait_for("ssh-agent to listen", socket.exists, 10)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket))
        yield socket
    finally:
        process.terminate()
        process.wait(10)


def agent_only_key(cluster: Cluster, agent: Path, name: str) -> None:
    """An authorized key handed to the agent, then deleted from disk."""
    key = cluster.sshd.new_key(name, authorize=True)
    subprocess.run(["ssh-add", "-q", str(key)], check=True, env={**os.environ, "SSH_AUTH_SOCK": str(agent)})
    key.unlink()


async def test_a_key_held_only_by_the_agent_logs_in(cluster: Cluster, agent: Path) -> None:
    """With ``agent = true`` and no key file, the key the agent holds logs in; the private key
    is deleted from disk first, so nothing but the agent can have offered it."""
    agent_only_key(cluster, agent, "agentkey")
    assert await whoami(transport(cluster, key=None, agent=True)) == "root"


async def test_without_the_agent_that_key_is_refused(cluster: Cluster, agent: Path) -> None:
    """The same set-up with ``agent = false``: authentication is refused and the error says so
    (the agent really was what logged in above)."""
    agent_only_key(cluster, agent, "agentkey2")
    with pytest.raises(HostUnreachable, match="authentication refused"):
        await whoami(transport(cluster, key=None, agent=False))


async def test_a_certificate_signed_by_the_trusted_ca_logs_in(cluster: Cluster) -> None:
    """A key that is not in authorized_keys logs in with its user certificate (the sshd trusts
    the CA that signed it): ``certificate`` in the host table is what is offered."""
    key = cluster.sshd.new_key("certkey")
    certificate = cluster.sshd.certify(key)
    assert await whoami(transport(cluster, key=str(key), certificate=str(certificate))) == "root"


@pytest.mark.parametrize(
    ("why", "certify"),
    [
        ("no certificate", None),
        ("expired", {"validity": "20200101:20200102"}),
        ("another principal", {"principal": "nobody"}),
    ],
)
async def test_a_key_without_a_valid_certificate_is_refused(
    cluster: Cluster, why: str, certify: dict[str, str] | None
) -> None:
    """The same unlisted key without its certificate, or with one that has expired or names
    another user, is refused with a reason that says authentication failed."""
    key = cluster.sshd.new_key(f"certkey-{why.replace(' ', '-')}")
    certificate = None if certify is None else str(cluster.sshd.certify(key, **certify))
    with pytest.raises(HostUnreachable, match="authentication refused"):
        await whoami(transport(cluster, key=str(key), certificate=certificate))


@contextlib.asynccontextmanager
async def gateway(cluster: Cluster, root: Path, extra: str = "") -> AsyncIterator[Sshd]:
    """A second sshd, the jump host, with keys and known_hosts of its own."""
    sshd = Sshd(root, cluster.slurm.conf, extra=extra)
    sshd.prepare()
    sshd.start()
    try:
        yield sshd
    finally:
        sshd.stop()


def jumped_host(cluster: Cluster, jump: Sshd, tmp_path: Path) -> tuple[Node, BatchExecutor]:
    tables = {
        "gateway": {
            "address": "127.0.0.1",
            "port": jump.port,
            "user": "root",
            "key": str(jump.client_key),
            "agent": False,
            "known_hosts": str(jump.known_hosts),
            "connect_timeout": 5.0,
            "connect_interval": 0.2,
            "backoff_max": 1.0,
            "retries": 1,
        },
        "cluster": cluster.host_table(jump="gateway", retries=1, backoff_max=1.0),
    }
    return batch_host(tables, tmp_path)


async def test_a_job_runs_through_a_jump_host(cluster: Cluster, tmp_path: Path) -> None:
    """``jump = "gateway"``: the cluster's connection is tunnelled through the gateway's, one
    connection each however many commands run, and a job submitted that way completes."""
    async with gateway(cluster, tmp_path / "gateway") as jump:
        host, executor = jumped_host(cluster, jump, tmp_path)
        await host.start()
        try:
            handle = await spawn_job(host, ["sh", "-c", "exit 0"])
            done = await handle.wait(timeout=60)
            assert done.lifecycle is Lifecycle.FINISHED, done
            assert done.result["state"] == "completed"
            assert executor.transport("gateway").connections == 1
            assert executor.transport("cluster").connections == 1
        finally:
            await host.shutdown(timeout=10)


async def test_a_jump_host_that_refuses_forwarding_stops_the_route(cluster: Cluster, tmp_path: Path) -> None:
    """The same route through a gateway whose sshd forbids forwarding: the cluster (which is
    reachable directly) is not reached at all, and the process pauses saying why. Had the
    connection bypassed the jump host, this job would have run."""
    async with gateway(cluster, tmp_path / "gateway", extra="DisableForwarding yes") as jump:
        host, executor = jumped_host(cluster, jump, tmp_path)
        await host.start()
        try:
            handle = await spawn_job(host, ["true"])
            await wait_until(lambda: handle.snapshot().paused, timeout=60)
            reason = handle.snapshot().pause_reason or ""
            assert "cannot connect" in reason, reason
            assert executor.transport("gateway").connections == 1
            assert executor.transport("cluster").connections == 0
            assert executor.submitted == 0
        finally:
            await host.shutdown(timeout=10)
