"""A real Prometheus on loopback, scraping the daemons the tests start, and its query API.

Needs Debian's ``prometheus`` (the test command installs it). It scrapes every second, keeps its
data in the given directory, and answers on a free loopback port; waiting is on conditions (it
says it is ready, a query holds), never fixed sleeps. A query Prometheus refuses raises
:class:`QueryError` with Prometheus's own reason, so a broken expression is never mistaken for
one that found nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.services.loopback import free_port, wait_for


def prometheus_programs() -> list[str]:
    """What is missing of ``prometheus`` and ``promtool`` (Debian package prometheus)."""
    return [name for name in ("prometheus", "promtool") if shutil.which(name) is None]


class QueryError(Exception):
    """Prometheus refused a query (it does not parse, or cannot be evaluated)."""


class Prometheus:
    """A Prometheus scraping ``jobs`` (job name -> loopback ports) every ``interval`` seconds."""

    def __init__(self, root: Path, jobs: Mapping[str, Sequence[int]], *, interval: float = 1.0) -> None:
        self.root = root
        self.jobs = {job: list(ports) for job, ports in jobs.items()}
        self.interval = interval
        self.port = free_port()
        self.child: subprocess.Popen[bytes] | None = None

    def targets(self, job: str) -> list[str]:
        """The instance labels of ``job``'s targets, as Prometheus sets them."""
        return [f"127.0.0.1:{port}" for port in self.jobs[job]]

    def _config(self) -> Path:
        lines = [
            f"global:\n  scrape_interval: {self.interval:g}s\n  scrape_timeout: {self.interval:g}s\n",
            "scrape_configs:\n",
        ]
        for job, ports in self.jobs.items():
            targets = ", ".join(f"'127.0.0.1:{port}'" for port in ports)
            lines.append(f"  - job_name: {job}\n    static_configs:\n      - targets: [{targets}]\n")
        path = self.root / "prometheus.yml"
        path.write_text("".join(lines))
        return path

    def start(self) -> None:
        """Start it and wait until it is ready to answer queries."""
        self.root.mkdir(parents=True, exist_ok=True)
        config = self._config()
        with (self.root / "prometheus.log").open("ab") as log:
            self.child = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.root / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        wait_for("prometheus to be ready", self._ready, 60)

    def _ready(self) -> bool:
        child = self.child
        if child is None or child.poll() is not None:
            tail = (self.root / "prometheus.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"prometheus exited: {tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.child = None

    def api(self, path: str, **params: Any) -> Any:
        """The ``data`` of an answer of the HTTP API at ``/api/v1/<path>``; a refusal raises
        :class:`QueryError` with Prometheus's reason."""
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{query}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                body = json.load(reply)
        except urllib.error.HTTPError as refused:  # 400 and 422 carry the reason in the body
            try:
                body = json.loads(refused.read())
            except ValueError:
                raise QueryError(f"{path}: HTTP {refused.code}") from None
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expression: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (a vector: one sample per series)."""
        params: dict[str, Any] = {"query": expression}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return _series(self.api("query", **params))

    def query_range(self, expression: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query's result (a matrix: samples per series, one each ``step``)."""
        data = self.api("query_range", query=expression, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
        return _series(data)

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        """The values ``label`` takes on the series ``match`` selects between ``start`` and
        ``end``: what Grafana's ``label_values(match, label)`` offers."""
        values = self.api(f"label/{label}/values", **{"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        return sorted(str(value) for value in values)

    def value(self, expression: str) -> float:
        """The first sample of an instant query, or -1 when it found nothing (for waiting)."""
        try:
            result = self.query(expression)
        except (QueryError, OSError):
            return -1.0
        return float(result[0]["value"][1]) if result else -1.0

    def wait_until(self, what: str, expression: str, timeout: float = 60.0) -> None:
        """Wait until the instant query ``expression`` (a comparison) finds a series."""
        wait_for(what, lambda: self.value(f"count({expression})") > 0, timeout)

    def __repr__(self) -> str:
        state = "running" if self.child is not None and self.child.poll() is None else "stopped"
        return f"<Prometheus 127.0.0.1:{self.port} {state}, {sum(map(len, self.jobs.values()))} targets>"


def _series(data: Any) -> list[dict[str, Any]]:
    if data.get("resultType") == "scalar":  # time(), a bare number: one unlabelled sample
        return [{"metric": {}, "value": data["result"]}]
    return list(data["result"])
