"""SSH to batch hosts: one multiplexed asyncssh connection per (host, user), shared by every
process that uses the host.

What keeps a cluster's login node (and its admins) happy is built in: commands share the one
connection on at most ``max_channels`` channels at once (below sshd's MaxSessions); connection
attempts are at least ``connect_interval`` apart and back off exponentially with jitter while
they fail, and concurrent callers share one attempt instead of piling up their own. Host keys
are checked against known_hosts; a mismatch is :class:`HostKeyMismatch` and is never retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shlex
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import structlog

from supervisor import TransportError

from ._hosts import HostSpec
from .errors import HostKeyMismatch, HostUnreachable, SchedulerError

log = structlog.get_logger("statevisor.ssh")

# Output formats of the schedulers' commands are always given on the command line; these are
# unset as well, because a user's login environment may set them and some commands prefer them.
_FORMAT_VARIABLES = ("SQUEUE_FORMAT", "SQUEUE_FORMAT2", "SQUEUE_SORT", "SACCT_FORMAT", "SLURM_TIME_FORMAT")


@dataclass(frozen=True, slots=True)
class Completed:
    """What a remote command did."""

    argv: tuple[str, ...]
    exit_status: int | None
    stdout: str
    stderr: str


class SSHTransport:
    """Commands and file transfers on one host, over one shared connection."""

    def __init__(self, host: HostSpec, *, jump: SSHTransport | None = None) -> None:
        self.host = host
        self.jump = jump
        self._connection: asyncssh.SSHClientConnection | None = None
        self._attempt: asyncio.Future[asyncssh.SSHClientConnection] | None = None
        self._channels = asyncio.Semaphore(host.max_channels)
        self._next_attempt = 0.0  # monotonic time before which no new attempt starts
        self._failures = 0  # consecutive failed attempts: the backoff exponent
        self.last_error: str | None = None
        self.connections = 0  # connections opened
        self.attempts = 0  # connection attempts, failed ones included
        self.commands: Counter[str] = Counter()  # commands run, by program name
        self.in_flight = 0

    @property
    def connected(self) -> bool:
        return self._connection is not None

    # --- connecting -------------------------------------------------------------------------

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The shared connection, opened if needed (one attempt at a time, spaced by backoff)."""
        if self._connection is not None:
            return self._connection
        if self._attempt is None or self._attempt.done():
            self._attempt = asyncio.ensure_future(self._connect())
        # shield: one caller giving up (a kill) must not abort the attempt the others share
        return await asyncio.shield(self._attempt)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        host = self.host
        delay = self._next_attempt - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.attempts += 1
        tunnel = await self.jump.connection() if self.jump is not None else None
        try:
            connection = await asyncio.wait_for(
                asyncssh.connect(
                    host.address,
                    host.port,
                    tunnel=tunnel,
                    username=host.user,
                    known_hosts=host.known_hosts_path,
                    client_keys=[host.key] if host.key else (),
                    client_certs=[host.certificate] if host.certificate else (),
                    agent_path=os.environ.get("SSH_AUTH_SOCK") if host.agent else None,
                    keepalive_interval=host.keepalive,
                    keepalive_count_max=3,
                    connect_timeout=host.connect_timeout,
                    config=(),  # this host's settings are the config's, not ~/.ssh/config's
                ),
                timeout=host.connect_timeout * 2,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            self._failed(str(exc))
            raise HostKeyMismatch(
                host.name,
                f"the key {host.address}:{host.port} presented is not the one known for it in "
                f"{host.known_hosts_path} ({exc.reason}); refusing to connect. If the host's key "
                "really changed, update known_hosts, then resume the process",
            ) from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            problem = _describe(exc)
            self._failed(problem)
            raise HostUnreachable(
                host.name, f"cannot connect to {host.address}:{host.port}: {problem} (attempt {self.attempts})"
            ) from None
        self._failures = 0
        self._next_attempt = time.monotonic() + host.connect_interval
        self.last_error = None
        self.connections += 1
        self._connection = connection
        log.info("ssh_connected", host=host.name, address=host.address, port=host.port, connections=self.connections)
        return connection

    def _failed(self, problem: str) -> None:
        self._failures += 1
        self.last_error = problem
        backoff = min(self.host.backoff_max, max(self.host.connect_interval, 1.0) * 2 ** (self._failures - 1))
        backoff *= random.uniform(0.5, 1.0)  # full jitter keeps many daemons from marching in step
        self._next_attempt = time.monotonic() + max(backoff, self.host.connect_interval)
        log.warning("ssh_connect_failed", host=self.host.name, problem=problem, failures=self._failures)

    def _lost(self, connection: asyncssh.SSHClientConnection, problem: str) -> None:
        if self._connection is connection:
            self._connection = None
            self.last_error = problem
            connection.abort()
            log.warning("ssh_connection_lost", host=self.host.name, problem=problem)

    # --- commands ---------------------------------------------------------------------------

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float | None = None,
        label: str | None = None,
    ) -> Completed:
        """Run ``argv`` on the host (quoted: never re-split by the remote shell). ``label`` names
        the command in counts and errors when ``argv[0]`` is a wrapper (``sh``) around it.

        Raises :class:`TransportError` when the host cannot be reached or the connection breaks,
        :class:`SchedulerError` when ``check`` and the command exits non-zero.
        """
        command = self.command_line(argv)
        async with self._channels:
            connection = await self.connection()
            name = label or argv[0]
            self.commands[name] += 1
            self.in_flight += 1
            try:
                done = await self._run_on(connection, command, input, timeout or self.host.command_timeout)
            except (OSError, asyncssh.Error, asyncssh.ProcessError, TimeoutError) as exc:
                problem = _describe(exc)
                self._lost(connection, problem)
                raise TransportError(self.host.name, f"{name}: {problem}") from None
            finally:
                self.in_flight -= 1
        completed = Completed(tuple(argv), done.exit_status, _text(done.stdout), _text(done.stderr))
        if done.exit_status is None:
            # No exit status: the channel closed under the command (sshd stopped, the session
            # was killed). Its output may be cut short, so none of it counts.
            self._lost(connection, f"channel closed ({done.exit_signal or 'no exit status'})")
            raise TransportError(self.host.name, f"{name}: the connection closed under it")
        if check and completed.exit_status != 0:
            raise SchedulerError(shlex.join(argv), completed.exit_status, completed.stderr or completed.stdout)
        return completed

    async def _run_on(
        self, connection: asyncssh.SSHClientConnection, command: str, input: str | None, timeout: float
    ) -> asyncssh.SSHCompletedProcess:
        # sshd may refuse a channel for a moment (its count of closing sessions lags ours):
        # that is not a lost connection, so wait a little and open it again.
        for attempt in range(5):
            try:
                return await connection.run(command, input=input, check=False, timeout=timeout)
            except asyncssh.ChannelOpenError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def command_line(self, argv: Sequence[str]) -> str:
        unset = [arg for name in _FORMAT_VARIABLES for arg in ("-u", name)]
        assign = [f"{name}={value}" for name, value in (self.host.env or {}).items()]
        return shlex.join(["env", *unset, *assign, *argv])

    # --- files ------------------------------------------------------------------------------

    async def put(self, local: Path, remote: str) -> None:
        """Upload ``local`` to ``remote`` and check its size and SHA-256 on the host."""
        async with self._channels:
            connection = await self.connection()
            try:
                async with connection.start_sftp_client() as sftp:
                    await sftp.put(str(local), remote)
                    size = (await sftp.stat(remote)).size
            except (OSError, asyncssh.Error) as exc:
                self._lost(connection, _describe(exc))
                raise TransportError(self.host.name, f"upload {local} -> {remote}: {_describe(exc)}") from None
        expected = os.stat(local).st_size
        if size != expected:
            raise TransportError(self.host.name, f"upload {remote}: {size} bytes arrived, {expected} sent")
        await self._verify(remote, _sha256(local))

    async def get(self, remote: str, local: Path) -> None:
        """Download ``remote`` to ``local`` and check its size and SHA-256 against the host's."""
        async with self._channels:
            connection = await self.connection()
            try:
                async with connection.start_sftp_client() as sftp:
                    size = (await sftp.stat(remote)).size
                    await sftp.get(remote, str(local))
            except (OSError, asyncssh.Error) as exc:
                self._lost(connection, _describe(exc))
                raise TransportError(self.host.name, f"download {remote} -> {local}: {_describe(exc)}") from None
        arrived = os.stat(local).st_size
        if arrived != size:
            raise TransportError(self.host.name, f"download {remote}: {arrived} bytes of {size}")
        await self._verify(remote, _sha256(local))

    async def _verify(self, remote: str, digest: str) -> None:
        done = await self.run(["sha256sum", "--", remote])
        theirs = done.stdout.split(maxsplit=1)[0] if done.stdout else ""
        if theirs != digest:
            raise TransportError(
                self.host.name, f"{remote}: SHA-256 differs across the transfer ({theirs} vs {digest})"
            )

    async def close(self) -> None:
        if self._attempt is not None and not self._attempt.done():
            self._attempt.cancel()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            await connection.wait_closed()

    def __repr__(self) -> str:
        state = "connected" if self._connection is not None else f"down ({self.last_error})"
        return (
            f"<SSHTransport {self.host.name} {state} connections={self.connections} "
            f"attempts={self.attempts} commands={sum(self.commands.values())} in_flight={self.in_flight}>"
        )


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"authentication refused ({text})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return text


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
