"""One watch for many pods: a list, then a watch from its resourceVersion, per (cluster,
namespace, owner), however many pods are tracked there.

The watch keeps what it has seen of every pod with the owner's labels (:class:`PodView`), and
wakes the processes waiting on a pod when its :attr:`PodView.signature` changes: no process ever
asks the API server about its pod. It follows the informer pattern of client-go:

* **list** the owner's pods (label selector), remember the list's resourceVersion; a pod the
  cache holds that the list does not, and that no newer news of came in meanwhile, was deleted
  while nobody watched;
* **watch** from that version with bookmarks, so the version moves on even when none of our
  pods changes, and a reconnect resumes where it was;
* on ``410 Expired`` (the server compacted that version away), **list again**;
* on a broken connection or an error, **reconnect with backoff**; past the cluster's retry
  budget, the processes waiting here are told (:class:`ApiUnreachable`: they pause, and resume
  watches again), and the watch goes on trying.

A pod created by this daemon is put in the cache from the create's answer if the watch has not
brought it yet, so a process never waits on a pod its watch has not heard of.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from supervisor import TransportError

from ._api import KubeApi, backoff, decode_error, decode_pod
from ._settings import OURS
from ._status import PodView
from .errors import ApiRefused, ApiUnreachable, Expired

log = structlog.get_logger("statevisor.cloud")

ACTION = OURS + "action"


@dataclass(slots=True, eq=False)
class _Waiter:
    name: str
    known: str  # the signature the process knows
    future: asyncio.Future[PodView] = field(repr=False)


class PodWatch:
    """The pods of one owner in one namespace of one cluster (see the module's docstring)."""

    def __init__(self, api: KubeApi, namespace: str, labels: dict[str, str]) -> None:
        self.api = api
        self.namespace = namespace
        self.labels = dict(labels)
        self.selector = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        self.pods: dict[str, PodView] = {}
        self.version: str | None = None  # the resourceVersion to watch from; None: list first
        self.synced = asyncio.Event()  # a list has filled the cache
        self.connected = False  # a watch request is open
        self.lists = 0
        self.watches = 0  # watch requests made
        self.events = 0
        self.bookmarks = 0
        self.restarts: Counter[str] = Counter()  # why the watch started over: expired, error
        self.failures = 0  # consecutive failed attempts
        self.on_change: list[Callable[[PodView], None]] = []
        self._seq = 0
        self._touched: dict[str, int] = {}  # pod name -> the _seq of its last news
        self._by_action: dict[str, str] = {}  # the statevisor.io/action label -> pod name
        self._waiters: dict[str, set[_Waiter]] = {}
        self._sync_waiters: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()

    # --- what the executor asks ----------------------------------------------------------

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_synced(self) -> None:
        """Until a list has filled the cache; raises what the watch meets past its retry budget."""
        self.start()
        if self.synced.is_set():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiters.add(future)
        try:
            await future
        finally:
            self._sync_waiters.discard(future)

    def find(self, labels: dict[str, str]) -> PodView | None:
        """A cached pod carrying all of ``labels``, its action's among them (the lookup by
        label a restore makes): by the action label's index, not a scan of every pod."""
        name = self._by_action.get(labels.get(ACTION, ""))
        view = self.pods.get(name) if name is not None else None
        if view is not None and all(view.labels.get(k) == v for k, v in labels.items()):
            return view
        return None

    def learn(self, view: PodView) -> None:
        """The answer to our own create: cached unless the watch brought newer news already."""
        if view.name not in self.pods:
            self._update(view)

    async def wait(self, name: str, known: str) -> PodView:
        """The pod once its signature differs from ``known`` (gone: a deleted view)."""
        await self.wait_synced()
        current = self.pods.get(name)
        if current is None:
            return PodView(name=name, uid="", resource_version="", labels={}, phase="Unknown").gone()
        if current.signature != known:
            return current
        future: asyncio.Future[PodView] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(name, known, future)
        self._waiters.setdefault(name, set()).add(waiter)
        try:
            return await future
        finally:
            waiters = self._waiters.get(name)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[name]

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self.version is None:
                    await self._list()
                await self._watch()
                self.failures = 0
            except Expired:
                self.restarts["expired"] += 1
                log.info("cloud_watch_expired", cluster=self.api.spec.name, namespace=self.namespace)
                self.version = None  # list again, at once
            except (TransportError, ApiRefused, OSError) as exc:
                self.failures += 1
                self.restarts["error"] += 1
                spec = self.api.spec
                log.warning(
                    "cloud_watch_failed",
                    cluster=spec.name,
                    namespace=self.namespace,
                    failures=self.failures,
                    error=str(exc) or type(exc).__name__,
                )
                if self.failures > spec.retries:
                    problem = exc.problem if isinstance(exc, TransportError) else str(exc)
                    self._fail_waiters(ApiUnreachable(spec.name, f"watching pods in {self.namespace}: {problem}"))
                    self.failures = spec.retries  # go on trying, at the slowest pace
                await asyncio.sleep(backoff(self.failures, spec.backoff_max, self._rng))
            except Exception as exc:  # a bug: the waits fail with it rather than hang on a dead watch
                log.exception("cloud_watch_crashed", cluster=self.api.spec.name, namespace=self.namespace)
                self._fail_waiters(exc)
                await asyncio.sleep(self.api.spec.backoff_max)

    async def _list(self) -> None:
        before = self._seq
        pods, version = await self.api.list_pods(self.namespace, self.labels)
        self.lists += 1
        listed = set()
        for pod in pods:
            view = PodView.of(pod)
            listed.add(view.name)
            self._update(view)
        for name in [n for n in self.pods if n not in listed and self._touched.get(n, 0) <= before]:
            self._gone(name)
        self.version = version
        self.synced.set()
        for future in list(self._sync_waiters):
            if not future.done():
                future.set_result(None)

    async def _watch(self) -> None:
        self.watches += 1
        async with self.api.watch_pods(self.namespace, self.selector, self.version) as events:
            self.connected = True
            try:
                async for event in events:
                    self._event(event)
            finally:
                self.connected = False
        # The server ended the request (timeoutSeconds): renew it from the version reached.

    def _event(self, event: Any) -> None:
        kind = event.type
        if kind == "ERROR":
            raise decode_error(event.object)
        self.events += 1
        if kind == "BOOKMARK":
            self.bookmarks += 1
            meta = decode_pod(event.object).metadata
            self.version = (meta.resourceVersion if meta is not None else None) or self.version
            return
        view = PodView.of(decode_pod(event.object))
        self.version = view.resource_version or self.version
        if kind == "DELETED":
            self._gone(view.name, view)
        else:
            self._update(view)

    # --- the cache -----------------------------------------------------------------------

    def _update(self, view: PodView) -> None:
        self._seq += 1
        self._touched[view.name] = self._seq
        self.pods[view.name] = view
        action = view.labels.get(ACTION)
        if action:
            self._by_action[action] = view.name
        self._notify(view)

    def _gone(self, name: str, last: PodView | None = None) -> None:
        view = last or self.pods.get(name)
        self.pods.pop(name, None)
        self._touched.pop(name, None)
        if view is not None and self._by_action.get(view.labels.get(ACTION, "")) == name:
            del self._by_action[view.labels[ACTION]]
        if view is not None:
            self._notify(view.gone())

    def _notify(self, view: PodView) -> None:
        for waiter in list(self._waiters.get(view.name, ())):
            if view.signature != waiter.known and not waiter.future.done():
                waiter.future.set_result(view)
        for callback in self.on_change:
            callback(view)

    def _fail_waiters(self, error: BaseException) -> None:
        futures: list[asyncio.Future[Any]] = [w.future for ws in self._waiters.values() for w in ws]
        for future in [*futures, *self._sync_waiters]:
            if not future.done():
                future.set_exception(error)
                with contextlib.suppress(BaseException):
                    future.exception()  # retrieved: the waiter may be gone already

    def phases(self) -> Counter[str]:
        return Counter(view.phase for view in self.pods.values())

    def __repr__(self) -> str:
        return (
            f"<PodWatch {self.api.spec.name}/{self.namespace} pods={len(self.pods)} waiting={self.waiting} "
            f"connected={self.connected} lists={self.lists} watches={self.watches} restarts={dict(self.restarts)}>"
        )
