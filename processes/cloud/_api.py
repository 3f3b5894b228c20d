"""One cluster's API client: lightkube's async client, paced, retried, counted, its errors mapped.

Every request to a cluster goes through :class:`KubeApi`:

* **lightkube** (``lightkube.AsyncClient``) makes the typed requests (create, get, list, delete
  a pod, read its log) with the credentials of the kubeconfig context or the in-cluster service
  account (tokens, token files re-read when rotated, client certificates, exec plugins) and TLS
  verified against the cluster's CA (lightkube's ``verify_cluster``). Its ``watch`` cannot ask
  for bookmarks (``allowWatchBookmarks``), so the watch stream is read here, over the same
  connection pool and credentials, and decoded with lightkube's decoders.
* **Pacing**: a token bucket per cluster (``qps``, ``burst``), as client-go's.
* **Retries**: 429, 5xx, timeouts and broken connections are retried with exponential backoff
  and jitter, waiting what ``Retry-After`` says when the server says it; past ``retries`` the
  request fails with :class:`ApiUnreachable`. A 401 rebuilds the client from the kubeconfig once
  (a rotated token), then fails with :class:`CredentialsRejected`.
* **Counting**: every HTTP request is counted by verb and status code at the transport, so the
  metrics see exactly what went on the wire (a retried request counts each time).
* **Errors** become the kind's (:mod:`.errors`), with the server's Status message. Credentials
  and Secret values never reach a log line: only verbs, names and Status messages do.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import structlog
from lightkube import ApiError, AsyncClient
from lightkube.config.client_adapter import user_auth, verify_cluster
from lightkube.core.decoders import decode_object, decode_status, decode_watch_event
from lightkube.resources.core_v1 import Pod

from ._clusters import ClusterSpec, load_config
from .errors import (
    AlreadyExists,
    ApiRefused,
    ApiUnreachable,
    CredentialsRejected,
    Expired,
    Forbidden,
    NotFound,
    QuotaExceeded,
)

log = structlog.get_logger("statevisor.cloud")

T = TypeVar("T")

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
SETTLE = 1.0  # seconds a cancelled request may take to finish connecting (see _Counting)
FIRST_BACKOFF = 0.5


def backoff(attempt: int, ceiling: float, rng: random.Random | None = None) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): exponential from 0.5 s, capped at
    ``ceiling``, with full jitter over its upper half."""
    delay = min(ceiling, FIRST_BACKOFF * 2 ** (attempt - 1))
    return float(delay * (rng or random).uniform(0.5, 1.0))


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed request means: retry it (after ``retry_after`` if the server said), or
    raise ``error``."""

    retry: bool
    error: Exception
    retry_after: float | None = None
    unauthorized: bool = False


def classify(exc: BaseException, cluster: str, verb: str, resource: str, namespace: str) -> Failure:
    """The meaning of an exception from a request (pure: tested on its own)."""
    if isinstance(exc, ApiError | httpx2.HTTPStatusError):
        response = exc.response
        code = response.status_code if response is not None else 0
        reason, message = "", str(exc)
        if isinstance(exc, ApiError):
            status = exc.status
            code = int(status.code or code)
            reason, message = status.reason or "", status.message or str(exc)
        if code in RETRIED_STATUS:
            after = _retry_after(response.headers.get("retry-after") if response is not None else None)
            return Failure(True, ApiRefused(code, reason, message), after)
        if code == 401:
            refused = CredentialsRejected(cluster, f"the API server refused the credentials (401): {message}")
            return Failure(False, refused, unauthorized=True)
        if code == 403:
            if "exceeded quota" in message:
                return Failure(False, QuotaExceeded(code, reason, message))
            return Failure(False, Forbidden(verb, resource, namespace, message))
        if code == 404:
            return Failure(False, NotFound(code, reason, message))
        if code == 409 and reason == "AlreadyExists":
            return Failure(False, AlreadyExists(code, reason, message))
        if code == 410:
            return Failure(False, Expired(code, reason, message))
        return Failure(False, ApiRefused(code, reason, message))
    if isinstance(exc, httpx2.TimeoutException):
        return Failure(True, ApiUnreachable(cluster, f"{verb} {resource}: timed out ({type(exc).__name__})"))
    if isinstance(exc, httpx2.TransportError):
        return Failure(
            True, ApiUnreachable(cluster, f"{verb} {resource}: {type(exc).__name__}: {exc or 'connection failed'}")
        )
    if isinstance(exc, OSError):
        return Failure(True, ApiUnreachable(cluster, f"{verb} {resource}: {exc}"))
    raise exc


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from an API server; the backoff applies


def request_verb(method: str, path: str, query: str) -> str:
    """The Kubernetes verb of an HTTP request, for the metrics."""
    if method == "POST":
        return "create"
    if method == "DELETE":
        return "delete"
    if method in ("PUT", "PATCH"):
        return "update"
    parts = [p for p in path.split("/") if p]
    if parts[-1:] == ["log"]:
        return "log"
    if "watch=true" in query or "watch=1" in query:
        return "watch"
    # /api/v1/namespaces/NS/pods is a collection; /api/v1/namespaces/NS/pods/NAME one object.
    collection = len(parts) in (3, 5) if parts[:1] == ["api"] else len(parts) in (4, 6)
    return "list" if collection else "get"


class _Counting(httpx2.AsyncBaseTransport):
    """Counts each request by (verb, status code or "error") on its way through, and keeps a
    cancellation from reaching the connection pool while it connects.

    httpcore closes a new connection's socket when its TLS handshake fails, but not when the
    handshake is cancelled: the socket is left open until it is collected (a task cancelled at
    the wrong moment, a kill's bounded delete, a shutdown). So a request runs in a task of its
    own; a caller cancelled meanwhile lets it finish (at most ``settle`` seconds: a handshake
    with a live server takes milliseconds), closes what it got, and only then is cancelled.
    """

    def __init__(self, inner: httpx2.AsyncBaseTransport, counts: Counter[tuple[str, str]], settle: float) -> None:
        self.inner = inner
        self.counts = counts
        self.settle = settle

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        verb = request_verb(request.method, request.url.path, request.url.query.decode("ascii", "replace"))
        attempt = asyncio.ensure_future(self.inner.handle_async_request(request))
        try:
            response = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            self.counts[(verb, "error")] += 1
            await _settle(attempt, self.settle)
            raise
        except BaseException:
            self.counts[(verb, "error")] += 1
            raise
        self.counts[(verb, str(response.status_code))] += 1
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _settle(attempt: asyncio.Future[httpx2.Response], seconds: float) -> None:
    """Let an abandoned request finish (bounded), and close the response it brings."""
    done, _ = await asyncio.wait({attempt}, timeout=seconds)
    if not done:
        attempt.cancel()  # still connecting after its connect timeout: nothing better to do
        await asyncio.gather(attempt, return_exceptions=True)
        return
    if attempt.exception() is None:
        with contextlib.suppress(Exception):
            await attempt.result().aclose()


class RateLimit:
    """A token bucket: ``qps`` per second, up to ``burst`` at once; ``qps`` 0 is no limit.
    Waiters are served in turn."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()
        self._turn = asyncio.Lock()

    async def take(self) -> None:
        if self.qps <= 0:
            return
        async with self._turn:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.qps)
            self.stamp = now
            if self.tokens < 1:
                await asyncio.sleep((1 - self.tokens) / self.qps)
                self.tokens = 1.0
                self.stamp = time.monotonic()
            self.tokens -= 1

    def __repr__(self) -> str:
        return f"<RateLimit qps={self.qps} burst={self.burst} tokens={self.tokens:.1f}>"


class KubeApi:
    """One cluster's client (built on first use; see the module's docstring)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.counts: Counter[tuple[str, str]] = Counter()  # (verb, code) -> requests
        self.limit = RateLimit(spec.qps, spec.burst)
        self.failures = 0  # consecutive failed requests (any verb)
        self.last_success = 0.0  # time.monotonic() of the last answered request
        self._client: AsyncClient | None = None
        self._http: httpx2.AsyncClient | None = None
        self._namespace = spec.namespace or "default"
        self._building = asyncio.Lock()
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # between retries (a test's seam)

    @property
    def namespace(self) -> str:
        """The namespace a process that names none runs in."""
        return self._namespace

    async def ready(self) -> None:
        """Build the client (reading the kubeconfig, its CA and key files) unless built."""
        await self._clients()

    async def _clients(self) -> tuple[AsyncClient, httpx2.AsyncClient]:
        """The built clients, built first if need be; both from one build."""
        while self._client is None or self._http is None:
            async with self._building:
                if self._client is None or self._http is None:
                    await asyncio.to_thread(self._build)
        return self._client, self._http

    def _build(self) -> None:
        config = load_config(self.spec)
        self._namespace = self.spec.namespace or config.namespace or "default"
        # Our transports, so that every request is counted. Given a transport, httpx uses its
        # TLS context, so it is lightkube's own (verify_cluster: the cluster's CA, the user's
        # client certificate). Requests share a few kept-alive connections (each new TLS
        # connection costs both ends a handshake); watches and followed logs, which hold a
        # connection for minutes, have a pool of their own and never starve them.
        tls = verify_cluster(config.cluster, config.user, config.abs_file, trust_env=False)
        connections = self.spec.connections
        requests = httpx2.AsyncHTTPTransport(
            verify=tls,
            limits=httpx2.Limits(max_connections=connections, max_keepalive_connections=connections),
            proxy=self.spec.proxy,
            trust_env=False,
        )
        streams = httpx2.AsyncHTTPTransport(
            verify=tls,
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=4),
            proxy=self.spec.proxy,
            trust_env=False,
        )
        timeout = httpx2.Timeout(self.spec.request_timeout)
        self._client = AsyncClient(
            config=config,
            namespace=self._namespace,
            timeout=timeout,
            trust_env=False,
            transport=_Counting(requests, self.counts, SETTLE),
            field_manager="statevisor",
        )
        self._http = httpx2.AsyncClient(
            base_url=config.cluster.server,
            auth=user_auth(config.user),
            transport=_Counting(streams, self.counts, SETTLE),
            timeout=timeout,
            trust_env=False,
        )

    async def _rebuild(self) -> None:
        """A 401: the kubeconfig may hold a rotated token or certificate: read it again."""
        http, client = self._http, self._client
        self._client = self._http = None
        await self._clients()
        with contextlib.suppress(Exception):
            if http is not None:
                await http.aclose()
            if client is not None:
                await client.close()

    async def close(self) -> None:
        http, client, self._http, self._client = self._http, self._client, None, None
        if http is not None:
            await http.aclose()
        if client is not None:
            await client.close()

    # --- requests ------------------------------------------------------------------------

    async def call(
        self,
        verb: str,
        resource: str,
        namespace: str,
        request: Callable[[AsyncClient, httpx2.AsyncClient], Awaitable[T]],
        *,
        retries: int | None = None,
    ) -> T:
        """``request`` with pacing and retries (see the module's docstring); ``retries`` other
        than the cluster's for a caller that retries on its own."""
        budget = self.spec.retries if retries is None else retries
        attempt = 0
        reloaded = False
        while True:
            client, http = await self._clients()
            await self.limit.take()
            try:
                result = await request(client, http)
            except Exception as exc:
                failure = classify(exc, self.spec.name, verb, resource, namespace)
                if failure.unauthorized and not reloaded:
                    reloaded = True
                    await self._rebuild()
                    continue
                if not failure.retry:
                    self._answered()  # the server answered, refusing: it is reachable
                    raise failure.error from None
                attempt += 1
                self.failures += 1
                if attempt > budget:
                    error = failure.error
                    problem = error.problem if isinstance(error, ApiUnreachable) else f"{verb} {resource}: {error}"
                    raise ApiUnreachable(self.spec.name, f"{problem} ({attempt} attempts)") from None
                delay = (
                    failure.retry_after if failure.retry_after is not None else backoff(attempt, self.spec.backoff_max)
                )
                log.warning(
                    "cloud_request_retry",
                    cluster=self.spec.name,
                    verb=verb,
                    resource=resource,
                    attempt=attempt,
                    delay=round(delay, 3),
                    error=str(failure.error),
                )
                await self.sleep(delay)
                continue
            self._answered()
            return result

    def _answered(self) -> None:
        self.failures = 0
        self.last_success = time.monotonic()

    @property
    def healthy(self) -> bool:
        """The server answered the last request (a kill tries it at once, else owes it)."""
        return self.failures == 0

    async def create_pod(self, namespace: str, manifest: dict[str, Any]) -> Pod:
        pod = Pod.from_dict(manifest)
        assert isinstance(pod, Pod)

        async def create(client: AsyncClient, http: httpx2.AsyncClient) -> Pod:
            created: Pod = await client.create(pod)  # its namespace is the manifest's
            return created

        return await self.call("create", "pods", namespace, create)

    async def get_pod(self, namespace: str, name: str) -> Pod:
        async def get(client: AsyncClient, http: httpx2.AsyncClient) -> Pod:
            return await client.get(Pod, name, namespace=namespace)

        return await self.call("get", "pods", namespace, get)

    async def list_pods(self, namespace: str, labels: Mapping[str, str]) -> tuple[list[Pod], str]:
        """Every pod with ``labels`` (pages of 500) and the list's resourceVersion."""

        async def listing(client: AsyncClient, http: httpx2.AsyncClient) -> tuple[list[Pod], str]:
            found = client.list(Pod, namespace=namespace, labels=dict(labels.items()), chunk_size=500)
            pods = [pod async for pod in found]
            return pods, found.resourceVersion

        return await self.call("list", "pods", namespace, listing)

    async def delete_pod(self, namespace: str, name: str, grace: int | None, *, retries: int | None = None) -> None:
        async def delete(client: AsyncClient, http: httpx2.AsyncClient) -> None:
            await client.delete(Pod, name, namespace=namespace, grace_period=grace)

        await self.call("delete", "pods", namespace, delete, retries=retries)

    async def log_lines(
        self, namespace: str, name: str, container: str, *, follow: bool, since_time: str | None
    ) -> AsyncIterator[str]:
        """The container's log lines with their timestamps (``<RFC3339Nano> <text>``), from
        ``since_time`` (RFC 3339, whole seconds) on; with ``follow``, until the container ends.
        Opening is retried; a stream cut halfway raises, and the caller resumes from its last
        timestamp. (Read here rather than with lightkube's ``log``, whose followed form reads an
        error's body synchronously from an async stream and fails.)"""
        params = {"container": container, "timestamps": "true"}
        if follow:
            params["follow"] = "true"
        if since_time:
            params["sinceTime"] = since_time
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/log"
        read = None if follow else self.spec.request_timeout

        async def opened(client: AsyncClient, http: httpx2.AsyncClient) -> httpx2.Response:
            return await _open(http, path, params, read, self.spec.request_timeout)

        response = await self.call("log", "pods/log", namespace, opened)
        try:
            async for line in response.aiter_lines():
                yield line
        except httpx2.HTTPError as exc:  # cut halfway: the caller resumes
            raise classify(exc, self.spec.name, "log", "pods/log", namespace).error from None
        finally:
            await response.aclose()

    @contextlib.asynccontextmanager
    async def watch_pods(self, namespace: str, selector: str, since: str | None) -> AsyncIterator[AsyncIterator[Any]]:
        """One watch request: its events as lightkube ``WatchEvent`` (``type``; ``object`` raw,
        for :func:`decode_pod` or :func:`decode_error`). One attempt: the watch loop retries."""
        _, http = await self._clients()
        await self.limit.take()
        params = {
            "watch": "true",
            "labelSelector": selector,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.spec.watch_timeout),
        }
        if since:
            params["resourceVersion"] = since
        # Reads may wait the whole watch: the server ends it (timeoutSeconds), or sends
        # bookmarks; a silent connection longer than that is dead.
        read = self.spec.watch_timeout + self.spec.request_timeout
        try:
            response = await _open(
                http, f"/api/v1/namespaces/{namespace}/pods", params, read, self.spec.request_timeout
            )
        except Exception as exc:
            failure = classify(exc, self.spec.name, "watch", "pods", namespace)
            if failure.unauthorized:
                await self._rebuild()
            raise failure.error from None
        try:
            self._answered()
            yield _events(response, self.spec.name, namespace)
        finally:
            await response.aclose()

    def __repr__(self) -> str:
        requests = sum(self.counts.values())
        return f"<KubeApi {self.spec.name} requests={requests} failures={self.failures} {self.limit!r}>"


async def _open(
    http: httpx2.AsyncClient, path: str, params: dict[str, str], read: float | None, timeout: float
) -> httpx2.Response:
    """A streamed GET, once its status says it is a stream: an error's body is read and raised
    as lightkube's ``ApiError`` (a Status) or httpx's ``HTTPStatusError``."""
    request = http.build_request("GET", path, params=params, timeout=httpx2.Timeout(timeout, read=read))
    response = await http.send(request, stream=True)
    if response.status_code == 200:
        return response
    try:
        await response.aread()
    finally:
        await response.aclose()
    if response.headers.get("content-type", "").startswith("application/json"):
        raise ApiError(request=request, response=response)
    raise httpx2.HTTPStatusError(f"{response.status_code} from {path}", request=request, response=response)


async def _events(response: httpx2.Response, cluster: str, namespace: str) -> AsyncIterator[Any]:
    try:
        async for line in response.aiter_lines():
            if line.strip():
                yield decode_watch_event(line.encode())
    except httpx2.HTTPError as exc:  # the stream was cut: the watch reconnects
        raise classify(exc, cluster, "watch", "pods", namespace).error from None


def decode_pod(raw: Any) -> Pod:
    pod: Pod = decode_object(raw, Pod)
    return pod


def decode_error(raw: Any) -> ApiRefused:
    """An ``ERROR`` event's Status as the error it means (``Expired`` for 410)."""
    status = decode_status(raw)
    code = int(status.code or 0)
    reason, message = status.reason or "", status.message or ""
    if code == 410:
        return Expired(code, reason, message)
    return ApiRefused(code, reason, message)
