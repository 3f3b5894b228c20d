"""The fake API server's kubelet: one node that runs each container's command as a local process.

A created pod goes through what a real node does to it, each step written back to the pod's
status (so watchers see it as ``MODIFIED`` events):

1. **Scheduling**: a pod with ``schedulingGates`` is held (``SchedulingGated``, set when it is
   created) and never scheduled; the pod's ``nodeSelector`` must be a subset of the node's
   labels and its CPU and memory requests must fit the node's capacity; otherwise its
   ``PodScheduled`` condition says ``Unschedulable`` with the scheduler's message, and it stays
   pending.
2. **Image pull**: there are no images. An image whose name holds one of :attr:`Kubelet.unpullable`
   (``does-not-exist`` by default) never pulls: its container waits with ``ErrImagePull``, then
   ``ImagePullBackOff``, then again, as kubelet's back-off does.
3. **Container configuration**: env from Secrets and ConfigMaps (``valueFrom``, ``envFrom``) is
   resolved from the server's objects; a missing one leaves the container waiting with
   ``CreateContainerConfigError`` until it appears.
4. **Running**: init containers one after another, then every container at once, each as a
   local process in a session of its own (``command`` + ``args``; the image is ignored), with
   only the pod's env (and ``PATH``). stdout and stderr, merged as a container runtime does, are
   kept line by line with their times for ``pods/log``.
5. **The end**: exit codes as the process gave them (128 + N for signal N);
   ``Completed``/``Error``, phase ``Succeeded`` when every container exited 0, else ``Failed``.
   ``activeDeadlineSeconds`` fails the pod with ``DeadlineExceeded``; :meth:`Kubelet.oom_kill`
   and :meth:`Kubelet.evict` do what memory pressure would (``OOMKilled``, exit code 137;
   ``Evicted``).
6. **Deletion**: a pod marked for deletion has its processes sent SIGTERM, then SIGKILL once its
   grace period is over, and is removed from the store when they are gone.

Restart policy is always ``Never`` here: a container that ends stays ended.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ._store import Event, NotFound, Object, Store, now_rfc3339

NODE = "fake-node"
PULL_RETRY = 1.0  # seconds between two pull attempts of an unpullable image
STEP = 0.02  # seconds between two steps of a pod's start (scheduled, pulled, started)


@dataclass(slots=True)
class LogLine:
    at: float  # time.time()
    text: bytes  # without its newline


@dataclass(slots=True)
class Container:
    name: str
    spec: Object
    init: bool
    state: Object = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    lines: list[LogLine] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on each new line and at the end
    process: asyncio.subprocess.Process | None = None
    reason: str | None = None  # why the kubelet killed it (OOMKilled, DeadlineExceeded, ...)
    started: bool = False

    @property
    def ended(self) -> bool:
        return "terminated" in self.state

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(slots=True)
class PodRun:
    namespace: str
    name: str
    containers: dict[str, Container]
    task: asyncio.Task[None] | None = None
    killing: bool = False
    deadline: asyncio.TimerHandle | None = None

    def processes(self) -> list[asyncio.subprocess.Process]:
        return [c.process for c in self.containers.values() if c.process is not None and c.process.returncode is None]


class Kubelet:
    """Runs the pods of ``store`` on one node."""

    def __init__(self, store: Store, *, cpu: int = 64, memory: int = 256 * 2**30) -> None:
        self.store = store
        self.labels: dict[str, str] = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}
        self.cpu = cpu
        self.memory = memory
        self.unpullable: list[str] = ["does-not-exist"]
        self.runs: dict[tuple[str, str], PodRun] = {}
        self.node_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        store.on_change.append(self._changed)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what the API server and the control port ask ------------------------------------

    def set_labels(self, labels: dict[str, str]) -> None:
        self.labels.update(labels)
        self.node_changed.set()
        self.node_changed = asyncio.Event()

    def container(self, namespace: str, name: str, container: str | None) -> Container | str:
        """A pod's container for its logs, or the API server's message for why not."""
        run = self.runs.get((namespace, name))
        if run is None:
            return f'pods "{name}" not found'
        mains = [c for c in run.containers.values() if not c.init]
        if container is None:
            if len(mains) != 1:
                names = " ".join(c.name for c in mains)
                return f"a container name must be specified for pod {name}, choose one of: [{names}]"
            return mains[0]
        found = run.containers.get(container)
        if found is None:
            return f"container {container} is not valid for pod {name}"
        if not found.started:
            reason = found.state.get("waiting", {}).get("reason", "ContainerCreating")
            return f'container "{found.name}" in pod "{name}" is waiting to start: {reason}'
        return found

    async def oom_kill(self, namespace: str, name: str, container: str | None = None) -> bool:
        """Kill a container as the kernel's OOM killer would: SIGKILL, ``OOMKilled``, 137."""
        run = self.runs.get((namespace, name))
        if run is None:
            return False
        for candidate in run.containers.values():
            chosen = (container is None and not candidate.init) or candidate.name == container
            if chosen and candidate.process is not None and candidate.process.returncode is None:
                candidate.reason = "OOMKilled"
                _kill(candidate.process, signal.SIGKILL)
                return True
        return False

    async def evict(self, namespace: str, name: str, message: str = "The node was low on resource: memory.") -> bool:
        """Evict a pod as kubelet's memory-pressure eviction does: its containers killed, the
        pod ``Failed`` with reason ``Evicted``."""
        run = self.runs.get((namespace, name))
        if run is None:
            return False
        await self._fail_pod(run, "Evicted", message)
        return True

    async def close(self) -> None:
        for run in list(self.runs.values()):
            for process in run.processes():
                _kill(process, signal.SIGKILL)
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(r.task for r in self.runs.values() if r.task is not None), return_exceptions=True)

    # --- reacting to the store -----------------------------------------------------------

    def _changed(self, event: Event) -> None:
        if event.resource != "pods":
            return
        key = (event.namespace, (event.new or event.old or {})["metadata"]["name"])
        if event.old is None and event.new is not None:
            spec = event.new.get("spec", {})
            containers = {c["name"]: Container(c["name"], c, init=True) for c in spec.get("initContainers", [])} | {
                c["name"]: Container(c["name"], c, init=False) for c in spec.get("containers", [])
            }
            run = PodRun(key[0], key[1], containers)
            self.runs[key] = run
            run.task = asyncio.get_running_loop().create_task(self._run(run))
        elif event.new is None:
            gone = self.runs.pop(key, None)
            if gone is not None:
                if gone.task is not None:
                    gone.task.cancel()
                for process in gone.processes():
                    _kill(process, signal.SIGKILL)
        elif event.new["metadata"].get("deletionTimestamp") and not (event.old or {})["metadata"].get(
            "deletionTimestamp"
        ):
            marked = self.runs.get(key)
            if marked is not None and not marked.killing:
                marked.killing = True
                grace = int(event.new["metadata"].get("deletionGracePeriodSeconds", 30))
                self._spawn(self._terminate(marked, grace))

    # --- one pod's life ------------------------------------------------------------------

    async def _run(self, run: PodRun) -> None:
        await asyncio.sleep(STEP)  # the create's response leaves before the first status change
        pod = self._pod(run)
        if pod is None:
            return
        spec = pod.get("spec", {})
        if spec.get("schedulingGates"):
            return  # held until its gates are removed (the fake has no PATCH: until it is deleted)
        while True:
            problem = self._unschedulable(spec)
            if problem is None:
                break
            self._status(run, conditions=[_condition("PodScheduled", "False", "Unschedulable", problem)])
            await self.node_changed.wait()
        self._update(run, lambda p: p["spec"].__setitem__("nodeName", NODE))
        self._status(
            run,
            phase="Pending",
            conditions=[_condition("PodScheduled", "True")],
            hostIP="127.0.0.1",
            podIP="127.0.0.1",
            startTime=now_rfc3339(),
            qosClass="BestEffort",
        )
        deadline = spec.get("activeDeadlineSeconds")
        if isinstance(deadline, int) and deadline > 0:
            run.deadline = asyncio.get_running_loop().call_later(deadline, self._spawn, self._deadline(run))
        try:
            for container in [c for c in run.containers.values() if c.init]:
                if not await self._start(run, container):
                    return
                code = await self._finish(run, container)
                if code != 0:
                    self._end(run)
                    return
            mains = [c for c in run.containers.values() if not c.init]
            for container in mains:
                await self._pull(run, container)
            for container in mains:
                if not await self._start(run, container, report=False):
                    return
            self._containers(run, phase="Running")  # one status write, as kubelet's sync does
            await asyncio.gather(*(self._finish(run, c) for c in mains))
            self._end(run)
        finally:
            if run.deadline is not None:
                run.deadline.cancel()

    def _unschedulable(self, spec: Object) -> str | None:
        selector = spec.get("nodeSelector") or {}
        if any(self.labels.get(k) != v for k, v in selector.items()):
            return (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
        cpu = memory = 0.0
        for container in spec.get("containers", []):
            requests = (container.get("resources") or {}).get("requests") or {}
            cpu += _cpu(requests.get("cpu", "0"))
            memory += _bytes(requests.get("memory", "0"))
        for what, short in (("cpu", cpu > self.cpu), ("memory", memory > self.memory)):
            if short:
                return (
                    f"0/1 nodes are available: 1 Insufficient {what}. preemption: 0/1 nodes are available: "
                    "1 No preemption victims found for incoming pod."
                )
        return None

    async def _pull(self, run: PodRun, container: Container) -> None:
        image = str(container.spec.get("image", ""))
        failures = 0
        while any(marker in image for marker in self.unpullable):
            failures += 1
            if failures % 2:
                reason = "ErrImagePull"
                message = (
                    f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": '
                    f"{image}: not found"
                )
            else:
                reason, message = "ImagePullBackOff", f'Back-off pulling image "{image}"'
            container.state = {"waiting": {"reason": reason, "message": message}}
            self._containers(run)
            await asyncio.sleep(PULL_RETRY)
        await asyncio.sleep(STEP)

    async def _start(self, run: PodRun, container: Container, *, report: bool = True) -> bool:
        await self._pull(run, container)
        while True:
            env = self._environment(run, container.spec)
            if isinstance(env, dict):
                break
            container.state = {"waiting": {"reason": "CreateContainerConfigError", "message": env}}
            self._containers(run)
            await asyncio.sleep(PULL_RETRY)
        argv = [*container.spec.get("command", []), *container.spec.get("args", [])]
        if not argv:
            container.state = {
                "waiting": {
                    "reason": "CreateContainerError",
                    "message": "the fake kubelet has no images: give a command",
                }
            }
            self._containers(run)
            return False
        cwd = container.spec.get("workingDir") or "/"
        cwd = cwd if await asyncio.to_thread(os.path.isdir, cwd) else "/"
        try:
            container.process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            container.state = {"waiting": {"reason": "RunContainerError", "message": f"exec: {exc}"}}
            self._containers(run)
            return False
        container.started = True
        container.state = {"running": {"startedAt": now_rfc3339()}}
        if report:
            self._containers(run)
        return True

    async def _finish(self, run: PodRun, container: Container) -> int:
        """Collect a started container's output until it exits; its exit code."""
        process = container.process
        assert process is not None
        assert process.stdout is not None
        started = container.state.get("running", {}).get("startedAt", now_rfc3339())
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line past the limit: keep what came, as pieces
                line = await process.stdout.read(1 << 20)
            if not line:
                break
            container.lines.append(LogLine(time.time(), line.rstrip(b"\n")))
            container.wake()
        code = await process.wait()
        exit_code = 128 - code if code < 0 else code
        reason = container.reason or ("Completed" if exit_code == 0 else "Error")
        container.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": now_rfc3339(),
                "containerID": f"fake://{uuid.uuid4().hex}",
            }
        }
        container.wake()
        self._containers(run)
        return exit_code

    def _end(self, run: PodRun) -> None:
        codes = [c.state["terminated"]["exitCode"] for c in run.containers.values() if c.ended and not c.init]
        init_failed = any(
            c.init and c.ended and c.state["terminated"]["exitCode"] != 0 for c in run.containers.values()
        )
        ok = (
            not init_failed
            and all(code == 0 for code in codes)
            and len(codes) == sum(1 for c in run.containers.values() if not c.init)
        )
        self._status(run, phase="Succeeded" if ok else "Failed")

    async def _deadline(self, run: PodRun) -> None:
        await self._fail_pod(run, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline")

    async def _fail_pod(self, run: PodRun, reason: str, message: str) -> None:
        if run.task is not None:
            run.task.cancel()
        for container in run.containers.values():
            if container.process is not None and container.process.returncode is None:
                _kill(container.process, signal.SIGKILL)
        for container in run.containers.values():
            if container.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    await container.process.wait()
            if not container.ended:
                state = container.state
                container.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "Error" if container.started else "ContainerStatusUnknown",
                        "startedAt": state.get("running", {}).get("startedAt", now_rfc3339()),
                        "finishedAt": now_rfc3339(),
                    }
                }
                container.wake()
        self._containers(run)
        self._status(run, phase="Failed", reason=reason, message=message)

    async def _terminate(self, run: PodRun, grace: int) -> None:
        """A pod marked for deletion: SIGTERM, the grace period, SIGKILL, then gone."""
        if run.task is not None and not any(c.started for c in run.containers.values()):
            run.task.cancel()
        for process in run.processes():
            _kill(process, signal.SIGTERM)
        exits = [asyncio.ensure_future(process.wait()) for process in run.processes()]
        if exits:
            await asyncio.wait(exits, timeout=grace)
        for process in run.processes():
            _kill(process, signal.SIGKILL)
        if exits:
            await asyncio.gather(*exits, return_exceptions=True)
        if run.task is not None:
            await asyncio.wait({run.task}, timeout=2.0)
        with contextlib.suppress(NotFound):
            self.store.delete("pods", run.namespace, run.name)

    # --- writing status ------------------------------------------------------------------

    def _pod(self, run: PodRun) -> Object | None:
        return self.store.get("pods", run.namespace, run.name)

    def _update(self, run: PodRun, change: Any) -> None:
        with contextlib.suppress(NotFound):
            self.store.update("pods", run.namespace, run.name, change)

    def _status(self, run: PodRun, **fields: Any) -> None:
        def change(pod: Object) -> None:
            status = pod.setdefault("status", {})
            for key, value in fields.items():
                if key == "conditions":
                    kept = [c for c in status.get("conditions", []) if c["type"] not in {n["type"] for n in value}]
                    status["conditions"] = kept + value
                else:
                    status[key] = value

        self._update(run, change)

    def _containers(self, run: PodRun, **fields: Any) -> None:
        def status(container: Container) -> Object:
            return {
                "name": container.name,
                "image": container.spec.get("image", ""),
                "imageID": "",
                "ready": "running" in container.state,
                "started": "running" in container.state,
                "restartCount": 0,
                "state": container.state,
                "lastState": {},
            }

        inits = [status(c) for c in run.containers.values() if c.init]
        mains = [status(c) for c in run.containers.values() if not c.init]

        def change(pod: Object) -> None:
            pod.setdefault("status", {})["containerStatuses"] = mains
            if inits:
                pod["status"]["initContainerStatuses"] = inits
            pod["status"].update(fields)

        self._update(run, change)

    def _environment(self, run: PodRun, spec: Object) -> dict[str, str] | str:
        """The container's environment, or why it cannot be made (a missing Secret...)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOSTNAME": run.name}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, resource in (("secretRef", "secrets"), ("configMapRef", "configmaps")):
                ref = source.get(kind)
                if ref is None:
                    continue
                found = self.store.get(resource, run.namespace, ref["name"])
                if found is None:
                    if ref.get("optional"):
                        continue
                    what = "secret" if resource == "secrets" else "configmap"
                    return f'{what} "{ref["name"]}" not found'
                for key, value in _values(resource, found).items():
                    env[prefix + key] = value
        for item in spec.get("env") or []:
            if "value" in item or "valueFrom" not in item:
                env[item["name"]] = str(item.get("value", ""))
                continue
            for kind, resource in (("secretKeyRef", "secrets"), ("configMapKeyRef", "configmaps")):
                ref = item["valueFrom"].get(kind)
                if ref is None:
                    continue
                found = self.store.get(resource, run.namespace, ref["name"])
                values = _values(resource, found) if found is not None else None
                if values is None or ref["key"] not in values:
                    if ref.get("optional"):
                        break
                    what = "secret" if resource == "secrets" else "configmap"
                    if values is None:
                        return f'{what} "{ref["name"]}" not found'
                    return f"couldn't find key {ref['key']} in {what.capitalize()} {run.namespace}/{ref['name']}"
                env[item["name"]] = values[ref["key"]]
        return env

    def __repr__(self) -> str:
        return f"<Kubelet {NODE} pods={len(self.runs)}>"


async def follow(container: Container, since: float | None, tail: int | None, stop: bool) -> AsyncIterator[LogLine]:
    """A container's log lines (after ``since``, the last ``tail``), and with ``stop`` False the
    ones that come after, until the container has ended."""
    lines = [line for line in container.lines if since is None or line.at > since]
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    index = len(container.lines)
    for line in lines:
        yield line
    if stop:
        return
    while True:
        while index < len(container.lines):
            yield container.lines[index]
            index += 1
        if container.ended:
            return
        await container.changed.wait()


def _values(resource: str, obj: Object) -> dict[str, str]:
    if resource == "secrets":
        data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        return data
    return dict(obj.get("data") or {})


def _condition(kind: str, status: str, reason: str | None = None, message: str | None = None) -> Object:
    condition: Object = {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _kill(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _bytes(quantity: Any) -> float:
    text = str(quantity)
    for suffix, factor in _SUFFIXES.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text or 0)


def _cpu(quantity: Any) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text or 0)
