"""Deletes the kind owes: pods of killed processes, and finished pods whose time is up.

Every delete the kind means to make is written here first, durably (``deletes.jsonl`` in the
kind's records, an append-only journal, fsynced in groups), and carried out when it is due:

* a **kill** whose delete the API server did not accept in time (unreachable, slow) is owed and
  retried until it is, also after a daemon restart;
* a kill that came while the pod's create was in flight keeps looking for that pod for a while
  (``linger``): a create the server carries out after the delete is undone too;
* a **finished** pod, once its outcome and its log are kept, is deleted ``ttl`` seconds later
  (``pod_ttl``), so a daemon running for months does not fill its namespaces;
* a pod whose process gave up on it (unschedulable, an image that never pulls) is deleted at once.

A 404 is success: the pod is gone, whoever deleted it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog

from supervisor import TransportError
from supervisor.lowlevel import private_directory

from ._api import KubeApi
from ._watch import PodWatch
from .errors import ApiRefused, NotFound

log = structlog.get_logger("statevisor.cloud")

TICK = 0.5  # seconds between two looks at what is due
BATCH = 200  # deletes sent at once (the cluster's qps paces them)


@dataclass(slots=True)
class Delete:
    cluster: str
    namespace: str
    name: str
    owner: dict[str, str]  # the owner's labels: the watch that sees the pod
    why: str  # "kill", "ttl" or "gave up"
    due: float  # time.time() from which to delete it
    grace: int | None = None  # seconds (None: the pod's own terminationGracePeriodSeconds)
    linger: float = 0.0  # time.time() until which to look for the pod again after deleting it
    done_once: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cluster, self.namespace, self.name)


class DeleteJournal:
    """The owed deletes, durable: ``add`` returns once its line is fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple[str, str, str], Delete] = {}
        self._file: TextIO | None = None
        self._closed = False
        self._written = 0
        self._synced = 0
        self._syncing = asyncio.Lock()
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                record = json.loads(line)
                if record.pop("op") == "add":
                    entry = Delete(**record)
                    self.entries[entry.key] = entry
                else:
                    cluster, namespace, name = record["key"]
                    self.entries.pop((cluster, namespace, name), None)
            except (ValueError, KeyError, TypeError) as exc:  # a line torn by a crash: the rest stands
                log.warning("cloud_delete_journal_line_skipped", path=str(self.path), error=str(exc))

    def _open(self) -> TextIO:
        if self._file is None:
            private_directory(self.path.parent)
            # Rewritten with only what is still owed each time the daemon opens it.
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text("".join(_line("add", asdict(e)) for e in self.entries.values()))
            os.replace(temporary, self.path)
            self._file = open(self.path, "a")  # noqa: SIM115 - kept open; closed in close()
        return self._file

    async def add(self, entry: Delete) -> None:
        if not self._closed:
            self._open()  # first: opening rewrites the file with what was owed before
        self.entries[entry.key] = entry
        self._append(_line("add", asdict(entry)))
        await self._sync()

    def done(self, entry: Delete) -> None:
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
            self._append(_line("done", {"key": list(entry.key)}))  # a lost "done" only repeats a delete

    def _append(self, text: str) -> None:
        if self._closed:
            return  # shut down: what is owed now was written before, or is owed by the next start
        out = self._open()
        out.write(text)
        out.flush()
        self._written += 1

    async def _sync(self) -> None:
        """fsync, shared: one fsync covers every line appended before it started."""
        target = self._written
        async with self._syncing:
            if self._synced >= target or self._file is None:
                return
            upto = self._written
            await asyncio.to_thread(os.fsync, self._file.fileno())
            self._synced = upto

    def close(self) -> None:
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"<DeleteJournal {self.path} owed={len(self.entries)}>"


def _line(op: str, record: dict[str, Any]) -> str:
    return json.dumps({"op": op, **record}, separators=(",", ":")) + "\n"


class Reaper:
    """Carries out the journal's deletes when they are due (see the module's docstring)."""

    def __init__(
        self,
        journal: DeleteJournal,
        api: Callable[[str], KubeApi | None],
        watch: Callable[[str, str, dict[str, str]], PodWatch | None],
    ) -> None:
        self.journal = journal
        self.api = api
        self.watch = watch
        self.deleted = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        if self.journal.entries and (self._task is None or self._task.done()):
            with contextlib.suppress(RuntimeError):  # no running loop yet: the first add starts it
                self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def owe(self, entry: Delete) -> None:
        await self.journal.add(entry)
        self.start()

    def owed(self, cluster: str) -> int:
        """Deletes due and not yet carried out."""
        now = time.time()
        return sum(
            1 for e in self.journal.entries.values() if e.cluster == cluster and e.due <= now and not e.done_once
        )

    def scheduled(self, cluster: str) -> int:
        now = time.time()
        return sum(1 for e in self.journal.entries.values() if e.cluster == cluster and e.due > now)

    async def _run(self) -> None:
        while self.journal.entries:
            self._wake.clear()
            now = time.time()
            due = [e for e in self.journal.entries.values() if e.due <= now]
            for start in range(0, len(due), BATCH):
                await asyncio.gather(*(self._settle(entry, now) for entry in due[start : start + BATCH]))
            pending = [e.due for e in self.journal.entries.values() if e.due > now]
            wait = max(0.05, min([TICK, *(d - time.time() for d in pending)]))
            with contextlib.suppress(TimeoutError):
                # Not wait_for: in Python 3.11 it can swallow the cancellation of a close that
                # comes as the event is set, and this loop would outlive its executor.
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _settle(self, entry: Delete, now: float) -> None:
        api = self.api(entry.cluster)
        if api is None:
            self.journal.done(entry)  # the cluster is no longer declared: nothing to delete on
            return
        watch = self.watch(entry.cluster, entry.namespace, entry.owner)
        if entry.done_once:
            # Deleted once; a create that was in flight may still land: look until linger ends.
            if now >= entry.linger:
                self.journal.done(entry)
                return
            if watch is None or entry.name not in watch.pods or watch.pods[entry.name].deleting:
                if watch is not None:
                    watch.start()
                return
        try:
            await api.delete_pod(entry.namespace, entry.name, entry.grace, retries=1)
            self.deleted += 1
            log.info(
                "cloud_pod_deleted", cluster=entry.cluster, namespace=entry.namespace, pod=entry.name, why=entry.why
            )
        except NotFound:
            pass
        except (TransportError, ApiRefused, OSError) as exc:
            log.warning(
                "cloud_delete_deferred",
                cluster=entry.cluster,
                namespace=entry.namespace,
                pod=entry.name,
                why=entry.why,
                error=str(exc),
            )
            return
        if entry.linger > time.time():
            entry.done_once = True
            if watch is not None:
                watch.start()
        else:
            self.journal.done(entry)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.journal.close()

    def __repr__(self) -> str:
        return f"<Reaper owed={len(self.journal)} deleted={self.deleted}>"
