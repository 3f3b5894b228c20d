"""Metrics read from a host: names, labels and values follow what the host did."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from supervisor import Node
from supervisor.daemon.metrics import registry_for
from tests.helpers import Recorder, wait_for_snapshot
from tests.machines import Worker


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split(" ")[0] == name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the exposition")


async def test_action_latency_mailbox_and_connections_are_exposed() -> None:
    """Tracked actions feed a latency histogram labelled by kind, action type and outcome;
    mailbox depth and control connections are gauges; no label carries a process id."""
    host = Node(machines=[Worker], executors={"work": Recorder()})
    await host.start()
    registry = registry_for(host, connections=lambda: 3)
    handle = await host.spawn(Worker, pid="w-1")
    await handle.cast(("work", 1))
    await wait_for_snapshot(handle, lambda s: "done" in s.state)
    text = generate_latest(registry).decode()
    count = 'statevisor_action_duration_seconds_count{action_type="work",kind="worker",outcome="succeeded"}'
    assert 1.0 == sample(text, count)
    assert 0.0 == sample(text, 'statevisor_mailbox_depth{kind="worker"}')
    assert 3.0 == sample(text, "statevisor_control_connections")
    assert "w-1" not in text
    await handle.kill()


async def test_scrapes_from_the_server_thread_are_consistent_while_processes_come_and_go() -> None:
    """A scrape from another thread (as the HTTP server makes them) while thousands of processes
    are spawned and killed never fails: the host is read on its event loop. (Read from the
    server's thread, 3 of 57 scrapes failed with "dictionary changed size during iteration".)"""
    import threading

    from tests.machines import Counter

    host = Node(machines=[Counter])
    await host.start()
    registry = registry_for(host)
    errors: list[str] = []
    scrapes: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                scrapes.append(sample(generate_latest(registry).decode(), 'statevisor_processes{kind="counter",'
                                                                           'lifecycle="created"}'))  # fmt: skip
            except Exception as exc:
                errors.append(repr(exc))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        handles = [await host.spawn("counter", {"n": i}) for i in range(1000)]
        while len(scrapes) < 150:  # about 1,000 live processes throughout, 200 in and out a round
            handles += [await host.spawn("counter", {"n": i}) for i in range(200)]
            for handle in handles[:200]:
                await handle.kill()
            del handles[:200]
    finally:
        stop.set()
        await asyncio.to_thread(thread.join)
    assert [] == errors
    await host.runtime.kill_all()
