"""The Grafana dashboards in config/grafana/: well-formed for Grafana, and every query of every
panel answered with data by a real Prometheus scraping real daemons under load.

Grafana itself does not run here (it is not packaged for Debian); what the tests do in its place
is what Grafana does with a dashboard's queries: substitute its variables (``$job`` and
``$instance`` from their own ``label_values`` queries, ``$__rate_interval`` and ``$__range`` from
the scrape interval and the time range) and send each to Prometheus, as a range query or, for a
target marked instant, as an instant one. One daemon feeds ``daemon.json``; the three members of a
real cluster on NATS JetStream feed ``cluster.json``, one of them killed so that failover moves.
Needs Debian's ``prometheus`` (prometheus and promtool) and ``nats-server``; the test command
installs them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor import CallTimeout, Unavailable
from supervisor.control import Client, RemoteHandle
from tests.cluster_daemons import DaemonCluster
from tests.services.loopback import free_port, port_open, wait_for
from tests.services.nats import NatsCluster
from tests.services.prometheus import Prometheus, QueryError, prometheus_programs
from tests.test_daemon import answers

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "config" / "grafana"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILT_IN_ANNOTATIONS = {"type": "grafana", "uid": "-- Grafana --"}
PANEL_TYPES = {"row", "stat", "timeseries", "state-timeline", "bargauge"}
"""Grafana's own panels that the dashboards use (no plugin to install)."""
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms"}
SCRAPE = 1.0  # seconds between two scrapes, as the Prometheus data source's scrape interval says
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def load(name: str) -> dict[str, Any]:
    with (DASHBOARDS / f"{name}.json").open() as file:
        board: dict[str, Any] = json.load(file)
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included (Grafana keeps them in the row)."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(board: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, target) for every query of every panel."""
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield f"{panel['title']!r} {target.get('refId')}", target


def templating(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in board["templating"]["list"]}


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def references(value: Any) -> Iterator[Any]:
    """Every ``datasource`` reference anywhere in a dashboard."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "datasource":
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


@dataclass(frozen=True)
class Window:
    """A dashboard's time range, and what Grafana derives from it for a Prometheus with scrape
    interval ``scrape``: ``$__interval`` (the step), ``$__rate_interval`` (the step plus one
    scrape, at least four scrapes) and ``$__range``."""

    start: float
    end: float
    step: float = 1.0
    scrape: float = SCRAPE

    @property
    def rate_interval(self) -> float:
        return max(self.step + self.scrape, 4 * self.scrape)

    @property
    def seconds(self) -> int:
        return max(1, round(self.end - self.start))

    def builtins(self) -> dict[str, str]:
        return {
            "__rate_interval": f"{self.rate_interval:g}s", "__interval": f"{self.step:g}s",
            "__interval_ms": f"{self.step * 1000:g}", "__range": f"{self.seconds}s",
            "__range_s": str(self.seconds), "__range_ms": str(self.seconds * 1000),
        }  # fmt: skip


def regex_escape(value: str) -> str:
    """A value of a multi-value variable inside a PromQL regex string, escaped as Grafana's
    Prometheus data source does (a backslash doubled: one for the string, one for the regex)."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def format_values(variable: dict[str, Any], values: list[str]) -> str:
    """``values`` of ``variable`` as Grafana writes them into a Prometheus query: a multi-value
    or include-all variable as an escaped alternation (all of them when "All" is chosen and no
    allValue is set), a single-value one as it is."""
    if not (variable.get("multi") or variable.get("includeAll")):
        assert 1 == len(values), f"${variable['name']} is single-valued; offered {values}"
        return values[0].replace("\\", "\\\\").replace("'", "\\'")
    escaped = [regex_escape(value) for value in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def choose(variable: dict[str, Any], values: list[str]) -> str:
    """What Grafana writes for ``variable`` with all of ``values`` chosen ("All"), or the first
    of them for a single-valued variable."""
    return format_values(variable, values if variable.get("multi") or variable.get("includeAll") else values[:1])


def interpolate(expression: str, chosen: dict[str, str], window: Window) -> str:
    """``expression`` with its variables substituted; an unknown one fails the test."""
    values = {**window.builtins(), **chosen}

    def substitute(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise AssertionError(f"${name} in {expression!r} is neither a dashboard variable nor Grafana's")
        return values[name]

    return VARIABLE.sub(substitute, expression)


def choose_variables(board: dict[str, Any], prometheus: Prometheus, window: Window) -> dict[str, list[str]]:
    """Every query variable's values, from its ``label_values`` query run on Prometheus as
    Grafana runs it (in order: a later one's query uses the earlier ones), all of them chosen."""
    chosen: dict[str, str] = {}
    offered: dict[str, list[str]] = {}
    for name, variable in templating(board).items():
        if variable["type"] != "query":
            continue
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable_query(variable))
        assert found is not None, f"${name}: {variable_query(variable)!r} is not label_values(selector, label)"
        match = interpolate(found.group(1), chosen, window)
        values = prometheus.label_values(found.group(2), match, window.start, window.end)
        assert values, f"${name}: {variable_query(variable)!r} offers nothing"
        offered[name] = values
        chosen[name] = choose(variable, values)
    return offered


def has_data(result: list[dict[str, Any]]) -> bool:
    """Whether a query's result holds a number: a series, and in it a sample that is not NaN
    (a quantile of a histogram that saw nothing in its window is NaN)."""
    for series in result:
        samples = series.get("values") or [series["value"]]
        if any(math.isfinite(float(sample[1])) for sample in samples):
            return True
    return False


def run_dashboard(
    board: dict[str, Any], prometheus: Prometheus, window: Window, marks: tuple[str, ...] = ()
) -> list[str]:
    """Run every query of every panel, and every annotation's, as Grafana would; what came back
    refused, or empty (an annotation only when it is one of ``marks``, which must mark something:
    most mark what is rare)."""
    offered = choose_variables(board, prometheus, window)
    variables = templating(board)
    chosen = {name: choose(variables[name], values) for name, values in offered.items()}
    problems = []
    for where, target in queries(board):
        expression = interpolate(target["expr"], chosen, window)
        try:
            if target.get("instant"):
                result = prometheus.query(expression, at=window.end)
            else:
                result = prometheus.query_range(expression, window.start, window.end, window.step)
        except QueryError as refused:
            problems.append(f"{where}: refused ({refused}): {expression}")
            continue
        if not has_data(result):
            problems.append(f"{where}: no data: {expression}")
    for annotation in board["annotations"]["list"]:
        if "expr" not in annotation:
            continue
        expression = interpolate(annotation["expr"], chosen, window)
        try:
            result = prometheus.query_range(expression, window.start, window.end, window.step)
        except QueryError as refused:
            problems.append(f"annotation {annotation['name']!r}: refused ({refused}): {expression}")
            continue
        if annotation["name"] in marks and not has_data(result):
            problems.append(f"annotation {annotation['name']!r}: marks nothing: {expression}")
    return problems


# --- the dashboards as Grafana reads them ----------------------------------------------------


@pytest.mark.parametrize("name", ["daemon", "cluster"])
def test_the_dashboard_is_well_formed_for_grafana(name: str) -> None:
    """The dashboard is a Grafana JSON model that imports into any Grafana with a Prometheus:
    a uid, a current schema version, a data source variable that every reference uses (nothing
    names one Grafana's data source), ``job`` and ``instance`` variables from label_values
    queries; every panel has a unique id and title, a core panel type, a place on the 24-column
    grid that overlaps no other, and, but for rows, a description, a unit and queries with an
    expression and a unique refId that choose the daemons by ``$job`` and ``$instance``."""
    board = load(name)
    assert f"statevisor-{name}" == board["uid"]
    assert board["schemaVersion"] >= 39
    assert board["id"] is None  # Grafana gives it one at import
    assert "statevisor" in board["tags"]
    variables = templating(board)
    assert ["datasource", "job", "instance"] == list(variables)
    assert ("datasource", "prometheus") == (variables["datasource"]["type"], variables["datasource"]["query"])
    for variable in ("job", "instance"):
        assert "query" == variables[variable]["type"]
        assert variable_query(variables[variable]).startswith("label_values(")
    for reference in references(board):
        assert reference in (DATASOURCE, BUILT_IN_ANNOTATIONS), reference

    ids: set[int] = set()
    titles: set[str] = set()
    cells: set[tuple[int, int]] = set()
    for panel in panels(board):
        title = panel.get("title")
        assert title, panel
        assert panel["type"] in PANEL_TYPES, title
        assert isinstance(panel["id"], int), title
        assert panel["id"] not in ids, f"panel id {panel['id']} twice ({title})"
        ids.add(panel["id"])
        position = panel["gridPos"]
        assert 0 <= position["x"], title
        assert position["x"] + position["w"] <= 24, title
        area = {(x, y) for x in range(position["x"], position["x"] + position["w"])
                for y in range(position["y"], position["y"] + position["h"])}  # fmt: skip
        assert not area & cells, f"{title!r} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert title not in titles, f"two panels titled {title!r}"
        titles.add(title)
        assert panel.get("description"), f"{title!r} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title!r} has no unit"
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["value"] is None, title
        bounds = [step["value"] for step in steps[1:]]
        assert sorted(bounds) == bounds, f"{title!r}: thresholds out of order"
        assert panel["targets"], f"{title!r} has no query"
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), title
        for target in panel["targets"]:
            assert target.get("expr"), f"{title!r} {target['refId']} has no expression"
            for matcher in ('job=~"$job"', 'instance=~"$instance"'):
                assert matcher in target["expr"], f"{title!r} {target['refId']} ignores {matcher}: {target['expr']}"


@pytest.mark.parametrize("name", ["daemon", "cluster"])
def test_every_expression_passes_promtool(tmp_path: Path, name: str) -> None:
    """With its variables substituted as Grafana would, every panel's and annotation's
    expression is PromQL that `promtool check rules` accepts (each as a recording rule), before
    any server runs; the variables are only ones the dashboard or Grafana defines."""
    board = load(name)
    window = Window(time.time() - 3600, time.time())
    chosen = {variable: "x" for variable in templating(board) if variable != "datasource"}
    expressions = [target["expr"] for _, target in queries(board)]
    expressions += [a["expr"] for a in board["annotations"]["list"] if "expr" in a]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": interpolate(expression, chosen, window)}
        for i, expression in enumerate(expressions)
    ]
    path = tmp_path / "rules.json"  # JSON is YAML: promtool reads it as it is
    path.write_text(json.dumps({"groups": [{"name": name, "rules": rules}]}))
    assert not prometheus_programs(), "promtool missing: run the README's test command (bash .ci/test)"
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout


def test_the_manuals_alert_rules_pass_promtool_and_name_real_panels(tmp_path: Path) -> None:
    """The alerting rules docs/dashboards.md suggests are rules `promtool check rules` accepts,
    and each names (``panel``) a panel of one of the dashboards, by its title."""
    manual = (ROOT / "docs" / "dashboards.md").read_text()
    blocks = re.findall(r"```yaml\n(groups:.*?)```", manual, re.DOTALL)
    assert not prometheus_programs(), "promtool missing: run the README's test command (bash .ci/test)"
    assert 1 == len(blocks)
    path = tmp_path / "alerts.yml"
    path.write_text(blocks[0])
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    titles = {(load(name)["title"], panel["title"]) for name in ("daemon", "cluster") for panel in panels(load(name))}
    named = re.findall(r'panel: "(.+?) / (.+?)"', blocks[0])
    assert len(named) == blocks[0].count("- alert:"), "every rule names its panel"
    assert set() == set(named) - titles


# --- every query against a real Prometheus scraping real daemons -----------------------------


class Load:
    """Work for daemons while Prometheus watches, from a thread with an event loop of its own:
    long-running steppers (up to ``steppers``, a new one each round), a short one spawned each
    round that finishes, a call to every long one (routed to its owner in a cluster), and with
    ``logapply`` an entry proposed to a log-apply machine each round. What a failover makes
    fail for a while (retryable errors, calls timing out) is counted; anything else fails the
    test when the load stops."""

    def __init__(self, socket: Path, *, steppers: int, logapply: bool = False) -> None:
        self.socket = socket
        self.steppers = steppers
        self.logapply = logapply
        self.stopping = threading.Event()
        self.started = threading.Event()
        self.rounds = 0
        self.running = 0  # long-running steppers spawned so far
        self.unavailable = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        wait_for("the load to start", lambda: self.started.is_set() or self.error is not None, 60)
        self.check()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)
        if exc[0] is None:
            self.check()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the load failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self.error = exc

    async def _main(self) -> None:
        async with Client.connect(str(self.socket)) as client:
            kv: Any = None
            if self.logapply:
                from processes.logapply import LogApplyClient

                kv = LogApplyClient(await client.spawn("logapply", {"app": "kv", "snapshot_every": 20}, name="kv"))
            running: list[RemoteHandle] = []
            for count in itertools.count():
                if self.stopping.is_set():
                    return
                if len(running) < self.steppers:
                    running.append(await client.spawn("stepper", {"steps": 1_000_000, "pause": 0.2, "done": 0}))
                    self.running = len(running)
                work = [self._tolerant(handle.call("done", timeout=5)) for handle in running]
                work.append(self._tolerant(client.spawn("stepper", {"steps": 3, "pause": 0.01, "done": 0})))
                if kv is not None:
                    work.append(kv.propose({"op": "add", "key": "rounds", "by": 1}))
                await asyncio.gather(*work)
                self.rounds = count + 1
                self.started.set()
                await asyncio.sleep(0.2)  # pacing: a round every 0.2 s or so, not a wait on a condition

    async def _tolerant(self, work: Any) -> None:
        try:
            await work
        except (Unavailable, CallTimeout):  # a process moving after a failover, its owner gone
            self.unavailable += 1

    def __repr__(self) -> str:
        return (
            f"<Load {self.rounds} rounds, {self.running} long steppers, {self.unavailable} unavailable, "
            f"error {self.error!r}>"
        )


def wait_for_scrapes(prometheus: Prometheus, job: str, count: int) -> None:
    """Wait until Prometheus has ``count`` scrapes of every target of ``job``: enough samples
    for a rate over ``$__rate_interval`` at every step."""
    targets = len(prometheus.targets(job))
    prometheus.wait_until(
        f"{count} scrapes of each of {targets} targets",
        f'count(count_over_time(up{{job="{job}"}}[5m]) >= {count}) == {targets}',
    )


def report(problems: list[str]) -> str:
    return f"{len(problems)} queries refused or without data:\n" + "\n".join(problems)


DAEMON_CONFIG = """\
[daemon]
store = "var/store.db"
socket = "var/s.sock"
metrics = "127.0.0.1:{port}"
loop = "asyncio"
shutdown_timeout = 10

[daemon.slots]
stepper = 4

[supervisor]
max_restarts = 100
period = 10.0

[kinds]
stepper = "tests.cluster_kit:Stepper"

[executors]
"ledger.effect" = "tests.cluster_kit:effect"

# A command that fails at once, every time: restarted twice, then given up.
[[process]]
name = "flaky"
kind = "shell"
restart = "permanent"
max_restarts = 2
period = 300.0
backoff = {{ initial = 0.1, maximum = 0.1 }}
[process.settings]
argv = ["false"]
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A real daemon (steppers, a log-apply kind, a shell command that is given up, slots for
    steppers) and its socket and metrics port; its log in daemon.log."""
    port = free_port()
    directory = tmp_path / "daemon"
    (directory / "var").mkdir(parents=True)
    config = directory / "statevisor.toml"
    config.write_text(DAEMON_CONFIG.format(port=port))
    env = {**os.environ, "STATEVISOR_TEST_LEDGER": str(tmp_path / "ledger.db")}
    with (directory / "daemon.log").open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "daemon", "--config", str(config)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env,
        )  # fmt: skip
    socket = directory / "var" / "s.sock"

    def serving() -> bool:
        if child.poll() is not None:
            raise AssertionError(f"the daemon exited: {(directory / 'daemon.log').read_text()[-2000:]}")
        return port_open(port) and answers(socket)

    try:
        wait_for("the daemon to serve", serving, 60)
        yield socket, port
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Path:
    if prometheus_programs():
        pytest.fail(f"missing {', '.join(prometheus_programs())}: run the README's test command (bash .ci/test)")
    return tmp_path / "prometheus"


def test_every_daemon_panel_query_returns_data(daemon: tuple[Path, int], prometheus_dir: Path) -> None:
    """Against a real Prometheus scraping a real daemon that runs steppers (tracked effects, a
    slot limit they queue for, some finishing), a log-apply machine taking entries and
    snapshots, and a shell command failing until it is given up: every query of every panel of
    daemon.json, its variables substituted as Grafana would, returns data; the ``job`` and
    ``instance`` variables offer exactly the scraped daemon."""
    socket, port = daemon
    prometheus = Prometheus(prometheus_dir, {"statevisor": [port]}, interval=SCRAPE)
    prometheus.start()
    try:
        started = time.time()
        with Load(socket, steppers=8, logapply=True):
            prometheus.wait_until("actions completing", "rate(statevisor_action_duration_seconds_count[5s]) > 0")
            prometheus.wait_until("the flaky command given up", "statevisor_children_given_up >= 1")
            prometheus.wait_until("a log-apply snapshot", "statevisor_logapply_snapshot_age_seconds >= 0")
            prometheus.wait_until(
                "short steppers finishing", 'statevisor_processes_ended_total{lifecycle="finished"} > 0'
            )
            wait_for_scrapes(prometheus, "statevisor", 10)
            window = Window(started, time.time())
            board = load("daemon")
            assert {"job": ["statevisor"], "instance": prometheus.targets("statevisor")} == choose_variables(
                board, prometheus, window
            )
            problems = run_dashboard(board, prometheus, window)
        assert [] == problems, report(problems)
    finally:
        prometheus.stop()


def test_every_cluster_panel_query_returns_data(
    tmp_path: Path, nats_cluster: NatsCluster, prometheus_dir: Path
) -> None:
    """Against a real Prometheus scraping the three members of a real cluster (on the test's
    NATS JetStream cluster) while steppers run on all of them and calls are routed to their
    owners, with member b killed and its processes taken over by the survivors: every query of
    every panel of cluster.json, its variables substituted as Grafana would, returns data
    (failovers and takeovers included), the failover annotation marks the failover, and the
    ``instance`` variable offers all three members."""
    members = DaemonCluster(tmp_path / "cluster", nats_cluster)
    prometheus = Prometheus(prometheus_dir, {"statevisor-cluster": list(members.ports.values())}, interval=SCRAPE)
    try:
        members.start_all()
        prometheus.start()
        started = time.time()
        with Load(members.socket("a"), steppers=24) as work:
            # b must own long-running processes for its death to be a failover: rendezvous hashing
            # places each stepper on one of three, so b gets none of 24 in under a run in 10,000.
            wait_for("the long steppers to be spawned", lambda: work.running == 24, 60)
            prometheus.wait_until(
                "every member owning processes",
                'count(statevisor_cluster_processes_owned{job="statevisor-cluster"} > 0) == 3',
            )
            prometheus.wait_until("requests routed", "statevisor_cluster_routed_requests_total > 0")
            wait_for_scrapes(prometheus, "statevisor-cluster", 5)
            members.kill("b")
            prometheus.wait_until("a survivor's failover", "statevisor_cluster_failovers_total > 0", timeout=90)
            prometheus.wait_until("processes taken over", "statevisor_cluster_processes_taken_total > 0")
            rounds = work.rounds
            wait_for("the load to go on after the failover", lambda: work.rounds > rounds + 2, 60)
            wait_for_scrapes(prometheus, "statevisor-cluster", 10)
            window = Window(started, time.time())
            board = load("cluster")
            assert {"job": ["statevisor-cluster"], "instance": sorted(prometheus.targets("statevisor-cluster"))} == (
                choose_variables(board, prometheus, window)
            )
            problems = run_dashboard(board, prometheus, window, marks=("Failovers",))
        assert [] == problems, report(problems)
    finally:
        prometheus.stop()
        members.close()
