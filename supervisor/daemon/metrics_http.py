"""The metrics endpoint's HTTP server: prometheus_client's WSGI app behind a server that slow or
hostile clients cannot wear down, with an optional bearer token and TLS.

Why not prometheus_client's ``start_http_server``:
* it starts a thread per connection without bound and never times a connection out, so clients
  that connect and say nothing pile up threads for as long as the daemon runs;
* its TLS handshake runs in the accepting thread, where one silent client stops every scrape;
* it has no authentication, and an endpoint beyond loopback needs a token.

Here each read of a connection has :data:`REQUEST_TIMEOUT` seconds, and the whole connection
:data:`CONNECTION_DEADLINE` (a client trickling its headers a byte at a time is cut off too);
at most :data:`MAX_SCRAPERS` are served at once (Prometheus holds one per target; more are
closed at once and counted); and the handshake runs in the connection's own thread.
"""

from __future__ import annotations

import contextlib
import hmac
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.metrics_core import CounterMetricFamily
from prometheus_client.registry import Collector

MAX_SCRAPERS = 8
REQUEST_TIMEOUT = 10.0
CONNECTION_DEADLINE = 30.0  # Prometheus's own scrape timeout is 10 s by default

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT  # StreamRequestHandler sets it on the socket: a silent client is dropped

    def log_message(self, format: str, *args: Any) -> None:
        return None  # one line per scrape would drown the daemon's log


class MetricsServer(ThreadingMixIn, WSGIServer):
    """Serves one WSGI app; see the module's text for its bounds. ``refused`` counts the
    connections turned away, by reason (``busy``, ``unauthorized``, ``broken``)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, tls: ssl.SSLContext | None) -> None:
        self.address_family = family
        self.tls = tls
        self.refused = {"busy": 0, "unauthorized": 0, "broken": 0}
        self._counting = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_SCRAPERS)
        super().__init__(address, _QuietHandler)

    def count(self, reason: str) -> None:
        with self._counting:  # the accepting thread and the connections' threads all count
            self.refused[reason] += 1

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.count("busy")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # Shutting the connection down wakes a read blocked in this thread, whatever it waits
        # for. Through a duplicate of its own: TLS takes the request's descriptor over, and
        # the descriptor is closed (its number free for reuse) before this thread is done.
        try:
            watch = request.dup()
        except OSError:
            self._slots.release()
            self.shutdown_request(request)
            return
        deadline = threading.Timer(CONNECTION_DEADLINE, _cut_off, (watch,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            deadline.join()  # a cut-off under way finishes before the duplicate goes
            watch.close()
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(REQUEST_TIMEOUT)  # the handshake, too, is bounded
        with self.tls.wrap_socket(request, server_side=True) as secured:
            super().finish_request(secured, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out, reset or failed its handshake: counted, not a traceback on
        # the daemon's stderr for every port scanner.
        self.count("broken")

    def close(self) -> None:
        """Stop serving and free the port."""
        self.shutdown()
        self.server_close()


def _cut_off(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed meanwhile
        connection.shutdown(socket.SHUT_RDWR)


def bearer_guard(app: WSGIApp, token: str, refused: Callable[[], None]) -> WSGIApp:
    """``app``, answering 401 to a request without ``Authorization: Bearer <token>``."""
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            refused()
            start_response(
                "401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="statevisor"'), ("Content-Type", "text/plain")]
            )
            return [b"statevisor metrics: a bearer token is required (daemon.metrics_token_file)\n"]
        return app(environ, start_response)

    return guarded


class RefusedCollector(Collector):
    """The server's refused connections, read on the scrape's thread (plain numbers)."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(
            "statevisor_metrics_refused",
            "Connections to the metrics endpoint turned away: busy (too many at once), unauthorized "
            "(no or a wrong bearer token), broken (timed out, reset, or a failed TLS handshake)",
            labels=["reason"],
        )
        for reason, count in sorted(self.server.refused.items()):
            family.add_metric([reason], count)
        yield family


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, *, token: str | None = None, tls: ssl.SSLContext | None = None
) -> MetricsServer:
    """Serve ``registry`` on ``host:port`` from a thread of its own; ``.close()`` stops it."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    server = MetricsServer((host, port), family, tls)
    app: WSGIApp = make_wsgi_app(registry)
    server.set_app(bearer_guard(app, token, lambda: server.count("unauthorized")) if token is not None else app)
    registry.register(RefusedCollector(server))
    threading.Thread(target=server.serve_forever, name="statevisor-metrics", daemon=True).start()
    return server
