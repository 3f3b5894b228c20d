"""A real Prometheus scrapes a real daemon: the series exist, move, and pass promtool.

Needs Debian's ``prometheus`` package (prometheus and promtool); the test command installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_daemon import Daemon, free_port, wait_for


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[int, Daemon]]:
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.fail("prometheus/promtool missing: run the README's test command (bash .ci/test), which installs them")
    daemon = Daemon(tmp_path)
    daemon.start()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: statevisor\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon.port}']\n"
    )
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port, daemon
    finally:
        server.terminate()
        server.wait(timeout=30)
        daemon.stop()


def query(port: int, expression: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []
    return list(body["data"]["result"]) if body.get("status") == "success" else []


def value(port: int, expression: str) -> float:
    result = query(port, expression)
    return float(result[0]["value"][1]) if result else -1.0  # type: ignore[index]


def test_prometheus_scrapes_the_series_and_sees_them_move(prometheus: tuple[int, Daemon]) -> None:
    """Prometheus's query API returns the statevisor series, labelled by kind and lifecycle, and
    the transition counter grows between scrapes."""
    port, _ = prometheus
    wait_for(lambda: value(port, "statevisor_transitions_total") > 0, timeout=60)
    first = value(port, "statevisor_transitions_total")
    wait_for(lambda: value(port, "statevisor_transitions_total") > first, timeout=60)
    waiting = query(port, 'statevisor_processes{kind="ticker",lifecycle="waiting"}')
    assert 2.0 == float(waiting[0]["value"][1])  # type: ignore[index]
    assert value(port, "statevisor_checkpoint_records_total") > 0
    assert 1.0 == value(port, 'statevisor_build_info{version!=""}')
    assert value(port, "process_resident_memory_bytes") > 0


def test_the_exposition_passes_promtool(prometheus: tuple[int, Daemon]) -> None:
    """`promtool check metrics` finds nothing wrong with the daemon's /metrics."""
    _, daemon = prometheus
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/metrics", timeout=5) as response:
        exposition = response.read()
    checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, check=False)
    assert 0 == checked.returncode, checked.stdout.decode() + checked.stderr.decode()
    assert b"" == checked.stdout.strip() + checked.stderr.strip()


def test_prometheus_scrapes_over_tls_with_a_bearer_token(tmp_path: Path) -> None:
    """With daemon.metrics_token_file and daemon.metrics_tls, a real Prometheus configured with
    the CA and the token (authorization.credentials_file) scrapes the series; a plain scrape
    without the token gets 401 and no series."""
    import os
    import ssl
    import urllib.error

    from tests.helpers import self_signed
    from tests.services.loopback import port_open

    if shutil.which("prometheus") is None:
        pytest.fail("prometheus missing: run the README's test command (bash .ci/test), which installs it")
    cert, key = self_signed(tmp_path)
    token = tmp_path / "metrics.token"
    token.write_text("a-long-enough-metrics-token\n")
    os.chmod(token, 0o600)
    daemon = Daemon(tmp_path)
    daemon.config.write_text(
        daemon.config.read_text().replace(
            "[daemon]\n",
            f'[daemon]\nmetrics_token_file = "{token}"\nmetrics_tls = true\ntls_cert = "{cert}"\ntls_key = "{key}"\n',
        )
    )
    daemon.start(metrics_answer=port_open)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: statevisor\n    scheme: https\n"
        f"    tls_config:\n      ca_file: {cert}\n"
        f"    authorization:\n      credentials_file: {token}\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{daemon.port}']\n"
    )
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: value(port, "statevisor_transitions_total") > 0, timeout=60)
        assert 1.0 == value(port, 'up{job="statevisor"}')
        context = ssl.create_default_context(cafile=str(cert))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"https://127.0.0.1:{daemon.port}/metrics", timeout=5, context=context)
        assert 401 == refused.value.code
        assert b"statevisor_transitions_total" not in refused.value.read()
    finally:
        server.terminate()
        server.wait(timeout=30)
        daemon.stop()
