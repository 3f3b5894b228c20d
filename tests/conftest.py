"""Shared fixtures: every async test runs on uvloop and on the stdlib loop with debug on.

A test also fails when the event loop reports trouble through the ``asyncio`` logger while it
runs: a callback that blocked the loop, a task destroyed while pending, an exception nobody
retrieved. Those are bugs even when the assertions pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import pytest
import uvloop

from tests._watchdog import on_abort, pytest_runtest_protocol  # noqa: F401 - the hook, registered here

# Generous: CI machines are 2 noisy cores; a real blocking bug takes far longer than this.
SLOW_CALLBACK_SECONDS = 1.0


def _debug_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK_SECONDS
    return loop


def _uvloop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("uvloop_only") is not None:
        # Tests against real clusters take long; the loop's own behaviour is pinned elsewhere.
        return {"uvloop": _uvloop}
    return {"uvloop": _uvloop, "asyncio-debug": _debug_loop}


class _LoopTrouble(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _fail_on_loop_trouble() -> Iterator[None]:
    handler = _LoopTrouble()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.records:
        messages = "\n".join(r.getMessage() for r in handler.records)
        pytest.fail(f"the event loop reported trouble during the test:\n{messages}")


class _Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


def _running(service: _Service, missing: list[str]) -> Iterator[object]:
    """Start a real service for the session and stop it after; a missing program fails (the
    test command installs them all), it never skips."""
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run the README's test command (bash .ci/test), which installs them")
    on_abort(service.stop)
    try:
        service.start()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real single-node Slurm and sshd on loopback (see tests/hpc.py), for the session."""
    from tests.hpc import Cluster, missing_programs

    yield from _running(Cluster(tmp_path_factory.mktemp("cluster")), missing_programs())


@pytest.fixture(scope="session")
def grid_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real single-host Grid Engine on loopback ports, in a cell of its own
    (processes/batch/loopback_sge.py), for the SGE adapter's tests."""
    from tests.services.sge import GridEngine, missing_programs

    yield from _running(GridEngine(tmp_path_factory.mktemp("sge")), missing_programs())


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real 3-node NATS JetStream cluster on loopback (processes/logapply/loopback.py)."""
    from tests.services.nats import NatsCluster, nats_server

    wanted = "nats-server 2.9.21 or later (the test command unpacks one into .ci/nats/)"
    missing = [] if nats_server() is not None else [wanted]
    yield from _running(NatsCluster(tmp_path_factory.mktemp("nats")), missing)


@pytest.fixture(scope="session")
def fake_kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The fake Kubernetes API server with its kubelet, on loopback (tests/services/kube/)."""
    from tests.services.kube import FakeKube

    yield from _running(FakeKube(tmp_path_factory.mktemp("kube")), [])


@pytest.fixture(params=["fake", "real"])
def kube(request: pytest.FixtureRequest) -> Iterator[object]:
    """Where an end-to-end test of the cloud kind runs pods: the fake API server, and the real
    cluster ``STATEVISOR_TEST_KUBECONFIG`` names when it is set (else that variant is skipped,
    saying so)."""
    import os
    from pathlib import Path

    from tests.kube import REAL, REAL_SKIP, Target
    from tests.services.kube import FakeKube

    if request.param == "real":
        kubeconfig = os.environ.get(REAL)
        if not kubeconfig:
            pytest.skip(REAL_SKIP)
        if "asyncio-debug" in request.node.name:
            # Against the fake, both loops run (the debug loop catches the kind's slow callbacks
            # and lost exceptions); a real cluster's pods take seconds to start: uvloop alone.
            pytest.skip("against a real cluster these run on uvloop alone; the debug loop's checks run on the fake")
        target = Target(None, Path(kubeconfig), os.environ.get("STATEVISOR_TEST_KUBECONTEXT") or None)
    else:
        fake = request.getfixturevalue("fake_kube")
        assert isinstance(fake, FakeKube)
        target = Target(fake, fake.kubeconfig, "fake")
    try:
        yield target
    finally:
        target.cleanup()
