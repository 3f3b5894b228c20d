"""The metrics endpoint's server: bounded connections, cut-off slow clients, bearer token, TLS.

Real sockets, real threads, real TLS (a certificate made by openssl): the server is the one the
daemon runs, serving a registry of its own here.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge

import supervisor.daemon.metrics_http as metrics_http
from supervisor.daemon.metrics_http import MAX_SCRAPERS, MetricsServer, serve_metrics
from tests.helpers import self_signed

TOKEN = "a-long-enough-metrics-token"


def registry() -> CollectorRegistry:
    found = CollectorRegistry()
    Gauge("statevisor_test_gauge", "a gauge for these tests", registry=found).set(7)
    return found


@pytest.fixture
def servers() -> Iterator[list[MetricsServer]]:
    started: list[MetricsServer] = []
    yield started
    for server in started:
        server.close()


def start(servers: list[MetricsServer], **options: object) -> tuple[MetricsServer, int]:
    server = serve_metrics(registry(), "127.0.0.1", 0, **options)  # type: ignore[arg-type]
    servers.append(server)
    return server, server.server_address[1]


def get(url: str, *, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_closed(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (reads EOF or a reset)."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def refused(port: int, reason: str) -> float:
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():
        if line.startswith(f'statevisor_metrics_refused_total{{reason="{reason}"}}'):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"no refused count for {reason} in the exposition")


def test_connections_beyond_the_bound_are_closed_at_once_and_counted(servers: list[MetricsServer]) -> None:
    """At most MAX_SCRAPERS connections are served at once: clients that connect and say
    nothing take no more threads than that. One more is closed at once (counted as busy), and
    scrapes work again once the idle ones go."""
    server, port = start(servers)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_SCRAPERS)]
    try:
        deadline = time.monotonic() + 10
        while server.refused["busy"] == 0 and time.monotonic() < deadline:
            extra = socket.create_connection(("127.0.0.1", port))
            closed = wait_closed(extra, 5)
            extra.close()
            assert closed, "a connection beyond the bound was left open"
        assert server.refused["busy"] >= 1
    finally:
        for sock in idle:
            sock.close()
    status, text = 0, ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the slots come back as the server sees the idle ones go
        try:
            status, text = get(f"http://127.0.0.1:{port}/metrics")
        except OSError:
            continue
        if status == 200:
            break
    assert "statevisor_test_gauge 7.0" in text
    assert refused(port, "busy") >= 1


def test_a_silent_connection_is_closed_after_the_request_timeout(
    servers: list[MetricsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that connects and sends nothing is closed by the server once REQUEST_TIMEOUT
    has passed, freeing its slot (prometheus_client's own server keeps it for ever)."""
    monkeypatch.setattr(metrics_http._QuietHandler, "timeout", 0.3)
    _, port = start(servers)
    with socket.create_connection(("127.0.0.1", port)) as silent:
        assert wait_closed(silent, 10)


def test_a_client_trickling_its_request_is_cut_off_at_the_connection_deadline(
    servers: list[MetricsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sends its request a byte at a time, each byte within the read timeout,
    is cut off once the connection's deadline has passed."""
    monkeypatch.setattr(metrics_http, "CONNECTION_DEADLINE", 0.5)
    _, port = start(servers)
    with socket.create_connection(("127.0.0.1", port)) as slow:
        cut = False
        deadline = time.monotonic() + 10
        for byte in (b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 1000)[:1000]:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            if wait_closed(slow, 0.05):
                cut = True
                break
            assert time.monotonic() < deadline, "still served after 10 s of trickling"
        assert cut, "the trickling client was never cut off"


def test_with_a_token_a_scrape_needs_it(servers: list[MetricsServer]) -> None:
    """With a token, a scrape without it or with another gets 401 (saying Bearer, naming the
    setting) and no metrics; with it, the metrics. Refusals are counted as unauthorized."""
    _, port = start(servers, token=TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    status, text = get(url)
    assert 401 == status
    assert "daemon.metrics_token_file" in text
    assert "statevisor_test_gauge" not in text
    assert (401, text) == get(url, token="not-the-token-at-all")
    status, text = get(url, token=TOKEN)
    assert 200 == status
    assert "statevisor_test_gauge 7.0" in text
    assert 'statevisor_metrics_refused_total{reason="unauthorized"} 2.0' in text


def test_with_tls_a_silent_client_does_not_stop_other_scrapes(servers: list[MetricsServer], tmp_path: Path) -> None:
    """With TLS, plain HTTP gets no metrics, a client verifying the certificate does, and a
    client that connects and never starts its handshake does not hold up others: handshakes
    run in each connection's thread, not the accepting one."""
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    _, port = start(servers, tls=tls, token=TOKEN)
    client = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(("127.0.0.1", port)) as silent:
        status, text = get(f"https://127.0.0.1:{port}/metrics", token=TOKEN, context=client)
        assert 200 == status
        assert "statevisor_test_gauge 7.0" in text
        assert silent.fileno() >= 0  # still connected, still silent
    with pytest.raises((OSError, http.client.HTTPException)):
        get(f"http://127.0.0.1:{port}/metrics", token=TOKEN)
