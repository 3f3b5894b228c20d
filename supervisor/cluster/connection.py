"""A member's NATS connection and the cluster's key-value buckets on it.

Buckets (``sv_<cluster>_<role>``, JetStream KV, one value per key, file storage, ``replicas``
copies). Reads go to each bucket's stream leader, not to any replica ("direct gets", which a
lagging follower may answer with a value already overwritten): a member taking a process over,
or looking up its owner, must see the latest record.

* ``checkpoints``: a process's checkpoint under its key (see :func:`record_key`), with its
  owner's node and incarnation in front (:mod:`.store`);
* ``owners``: ``<node>.<key>`` for every live process a node owns, an index to find a node's
  processes without reading every checkpoint;
* ``ended``: ``<node>.<key>`` for every process that node saw end, with when (retention);
* ``quarantine``: checkpoints that could not be brought back, with why;
* ``members``: ``<node>`` for every live member, its heartbeat; the bucket's age limit is the
  lease, so a member that stops beating disappears from it on the servers' clock;
* ``roster``: ``<node>`` for every node that may have processes on the index, live or not: what
  a member looks through for processes nobody took (a departure it did not see).

The connection reconnects by itself (every server in turn, without end); what fails while it is
away fails as a :class:`StoreError` and is retried by whoever asked.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from .errors import ClusterError
from .settings import ClusterSettings

log = structlog.get_logger("statevisor.cluster")

MINIMUM_SERVER = (2, 9, 21)
"""The oldest nats-server whose compare-and-set holds on a replicated stream: before it, two
concurrent writes on the same expected revision could both be accepted (nats-server issue
4320), and a fenced member's write could land."""

ROLES = ("checkpoints", "owners", "ended", "quarantine", "members", "roster")
_NO_SUITABLE_PEERS = 10005


class _NotPlacedYet(Exception):
    """The servers found no peers for the bucket's copies: right after a cluster starts, not yet."""


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def record_key(pid: str) -> str:
    """A process id as a KV key (one subject token): itself when it is only letters, digits,
    ``-`` and ``_`` (generated ids are); else ``=`` and its UTF-8 in unpadded base64url."""
    if _PLAIN_KEY.match(pid):
        return pid
    return "=" + base64.urlsafe_b64encode(pid.encode("utf-8", "surrogatepass")).decode().rstrip("=")


def pid_of(key: str) -> str:
    """The process id a KV key stands for (:func:`record_key` undone)."""
    if not key.startswith("="):
        return key
    body = key[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8", "surrogatepass")


def tls_context(settings: ClusterSettings) -> ssl.SSLContext | None:
    """The client side of TLS to the NATS servers: their certificates verified against
    ``tls_ca`` (or the system's CAs), this daemon's own certificate when one is configured."""
    secured = any(server.startswith("tls://") for server in settings.servers)
    if settings.tls_ca is None and settings.tls_cert is None and not secured:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    if settings.tls_cert is not None and settings.tls_key is not None:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


class ClusterConnection:
    """One member's connection to the cluster's NATS servers, and the buckets on it. Open with
    ``await ClusterConnection.open(settings)``."""

    def __init__(self, settings: ClusterSettings, nc: NATS, js: JetStreamContext, buckets: dict[str, KeyValue]) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.checkpoints = buckets["checkpoints"]
        self.owners = buckets["owners"]
        self.ended = buckets["ended"]
        self.quarantine = buckets["quarantine"]
        self.members = buckets["members"]
        self.roster = buckets["roster"]
        self.address = f"nats://{settings.name}"  # what logs and the status name the store by

    @classmethod
    async def open(cls, settings: ClusterSettings) -> ClusterConnection:
        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": f"statevisor-{settings.name}-{settings.node}",
            "connect_timeout": settings.connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "error_cb": _said("nats_error"),
            "disconnected_cb": _said("nats_disconnected"),
            "reconnected_cb": _said("nats_reconnected"),
        }
        context = tls_context(settings)
        if context is not None:
            options["tls"] = context
        if settings.credentials is not None:
            options["user_credentials"] = str(settings.credentials)
        if settings.token_file is not None:
            options["token"] = settings.token_file.read_text().strip()
        try:
            nc = await nats.connect(**options)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            servers = ", ".join(settings.servers)
            raise ClusterError(f"cluster {settings.name}: no NATS server answered ({servers}): {exc!r}") from exc
        try:
            check_server(nc, settings)
            js = nc.jetstream(timeout=settings.request_timeout)
            buckets = {role: await cls._settled(js, settings, role) for role in ROLES}
        except BaseException:
            await nc.close()
            raise
        return cls(settings, nc, js, buckets)

    @staticmethod
    async def _settled(js: JetStreamContext, settings: ClusterSettings, role: str) -> KeyValue:
        """The bucket of ``role``, asked again while the servers say they are not ready (a
        cluster just started, several members making the buckets at once), for up to the
        connect timeout."""
        deadline = time.monotonic() + settings.connect_timeout
        while True:
            try:
                return await _bucket(js, settings, role)
            except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError, TimeoutError,
                    nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, _NotPlacedYet) as exc:  # fmt: skip
                if time.monotonic() > deadline:
                    raise ClusterError(f"cluster {settings.name}: bucket {settings.bucket(role)}: {exc!r}") from exc
                await asyncio.sleep(0.25)

    async def keys(self, bucket: KeyValue, pattern: str = ">") -> list[str]:
        """The keys of ``bucket`` matching ``pattern`` (deleted ones left out), read through a
        pull consumer of the bucket's stream, last message per key, headers only.

        Not ``KeyValue.keys()`` or a watch: a watch's "no more for now" marker is queued when
        the consumer reports nothing pending, which it does as soon as the server has *sent*
        every key, before the client has handed any on: a listing of a departed member's
        processes came back empty, and the survivor took none of them until its next sweep. A
        pull consumer sends nothing before it is asked, so its pending count is the whole list.
        """
        prefix = f"$KV.{bucket._name}."
        stream = f"KV_{bucket._name}"
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, ack_policy=AckPolicy.NONE, headers_only=True,
            inactive_threshold=60.0, mem_storage=True, num_replicas=1, filter_subject=prefix + pattern,
        )  # fmt: skip
        subscription = await self.js.pull_subscribe(prefix + pattern, stream=stream, config=config)
        keys: list[str] = []
        consumer: str | None = None
        try:
            info = await subscription.consumer_info()
            consumer = info.name
            pending = info.num_pending or 0
            while pending > 0:
                for message in await subscription.fetch(min(pending, 1024), timeout=self.settings.request_timeout):
                    operation = (message.headers or {}).get("KV-Operation")
                    if operation not in ("DEL", "PURGE"):
                        keys.append(message.subject[len(prefix) :])
                    pending = message.metadata.num_pending or 0
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await subscription.unsubscribe()
            if consumer is not None:  # else it goes when inactive for a minute
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self.js.delete_consumer(stream, consumer)
        return keys

    async def close(self) -> None:
        """Flush what was published and let the connection go (bounded by the connect timeout)."""
        if self.nc.is_closed:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.nc.flush(timeout=max(1, int(self.settings.connect_timeout)))
        await self.nc.close()

    def __repr__(self) -> str:
        state = "connected" if self.nc.is_connected else "closed" if self.nc.is_closed else "reconnecting"
        return f"<ClusterConnection {self.settings.node} of {self.settings.name} {state}>"


def check_server(nc: NATS, settings: ClusterSettings) -> None:
    """Refuse a NATS server too old for compare-and-set to fence (see :data:`MINIMUM_SERVER`)."""
    version = nc.connected_server_version
    found = (version.major, version.minor, version.patch)
    if found < MINIMUM_SERVER:
        wanted = ".".join(map(str, MINIMUM_SERVER))
        where = nc.connected_url.netloc if nc.connected_url else "?"
        raise ClusterError(
            f"cluster {settings.name}: nats-server {'.'.join(map(str, found))} at {where} is older than {wanted}: "
            "its compare-and-set is not atomic on a replicated stream (nats-server issue 4320), so a member "
            f"paused past its lease could still write; upgrade every server to {wanted} or later"
        )


async def _bucket(js: JetStreamContext, settings: ClusterSettings, role: str) -> KeyValue:
    """The bucket of ``role``, made when it does not exist yet; a members bucket made with
    another lease is refused (members must agree on when one of them is gone)."""
    name = settings.bucket(role)
    ttl = settings.lease if role == "members" else None
    try:
        bucket = await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=name, history=1, ttl=ttl, storage=StorageType.FILE, replicas=settings.replicas, direct=False
                )
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _NO_SUITABLE_PEERS:
                # A cluster whose leader has just been elected does not know its peers' room yet.
                raise _NotPlacedYet(str(exc)) from exc
            raise ClusterError(f"cluster {settings.name}: cannot make bucket {name}: {exc}") from exc
    if role == "members":
        info = await js.stream_info(f"KV_{name}")
        found = info.config.max_age
        if found is not None and abs(found - settings.lease) > 1e-3:
            raise ClusterError(
                f"cluster {settings.name}: its lease is {found:g} s (set by the member that made it); "
                f"[cluster] lease here says {settings.lease:g} s: every member must use the same lease"
            )
    return bucket


def _said(event: str) -> Any:
    async def say(*args: Any) -> None:
        fields = {"error": repr(args[0])} if args else {}
        (log.warning if args or event != "nats_reconnected" else log.info)(event, **fields)

    return say
