"""A sensor's versioned configuration: read it, propose changes, stage them, commit once.

The protocol, once, for both sides::

    keys = hello()                       # the sensor says who it is, its config's version and keys
    for key in keys:
        read(key)                        # the host reads each value
    changes = propose()                  # the host says which keys it will change (both now know)
    for key in changes:
        stage(key)                       # the host sends the new value; the sensor stages it
    if changes:
        commit()                         # the sensor applies them all at once, on top of the version read
                                         # abort() on any error, on both sides

The commit is optimistic: it names the version the host read, and the sensor refuses it if
its configuration changed since (someone else configured it), so two hosts never overwrite
each other's changes unknowingly. Staging is no effect at all, only the client's state (replay
rebuilds it); the commit is the one effect, and it happens once (``Resume.ONCE``).

The client emulates the sensor with a JSON file, ``{"version": N, "config": {...}}``, replaced
atomically by a commit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor import SettingsError

from .._spec import Client, Host, Message, Party, Resume, Specification, Step
from ..errors import StepFailed


@dataclass(frozen=True, slots=True)
class Hello(Message):
    host: str


@dataclass(frozen=True, slots=True)
class Identity(Message):
    model: str
    version: int
    keys: list[str]


@dataclass(frozen=True, slots=True)
class Read(Message):
    key: str


@dataclass(frozen=True, slots=True)
class Value(Message):
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class Proposal(Message):
    keys: list[str]


@dataclass(frozen=True, slots=True)
class Agreed(Message):
    count: int


@dataclass(frozen=True, slots=True)
class Stage(Message):
    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class Staged(Message):
    key: str


@dataclass(frozen=True, slots=True)
class Commit(Message):
    base: int


@dataclass(frozen=True, slots=True)
class Committed(Message):
    version: int


@dataclass(frozen=True, slots=True)
class Refused(Message):
    reason: str


HELLO = Step(Hello, Identity)
READ = Step(Read, Value)
PROPOSE = Step(Proposal, Agreed)
STAGE = Step(Stage, Staged)
COMMIT: Step[Commit, Committed | Refused] = Step(Commit, (Committed, Refused), resume=Resume.ONCE)


class SensorConfig(Party, protocol="sensor-config", version=1):
    """Reading and writing a sensor's versioned configuration."""

    def __init__(self) -> None:
        self.model = ""
        self.config_version = 0  # the configuration's, not the protocol's (Party.version)
        self.keys: list[str] = []
        self.current: dict[str, Any] = {}
        self.changes: list[str] = []

    @HELLO
    async def hello(self) -> list[str]:
        """The sensor's model, its configuration's version and keys."""
        raise NotImplementedError

    @READ
    async def read(self, key: str) -> None:
        """One key's value, from the sensor to the host."""
        raise NotImplementedError

    @PROPOSE
    async def propose(self) -> list[str]:
        """The keys the host will change; both return them."""
        raise NotImplementedError

    @STAGE
    async def stage(self, key: str) -> None:
        """One new value, staged by the sensor (not applied yet)."""
        raise NotImplementedError

    @COMMIT
    async def commit(self) -> None:
        """The sensor applies what was staged, on top of the version read, or refuses."""
        raise NotImplementedError

    def identified(self, identity: Identity) -> list[str]:
        self.model, self.config_version, self.keys = identity.model, identity.version, list(identity.keys)
        return self.keys


async def configure(p: SensorConfig) -> None:
    """Read a sensor's configuration, then change what differs, in one commit."""
    try:
        keys = await p.hello()
        for key in keys:
            await p.read(key)
        changes = await p.propose()
        for key in changes:
            await p.stage(key)
        if changes:
            await p.commit()
    except StepFailed as error:
        await p.abort(error.reason)


class SensorHost(SensorConfig, Host):
    """Sets a sensor's configuration to ``desired`` (options: ``desired``, a table)."""

    def __init__(self, desired: Mapping[str, Any], *, name: str = "host") -> None:
        super().__init__()
        self.desired = dict(desired)
        self.name = name
        self.committed: int | None = None

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - {"desired", "name"})
        if unknown:
            raise SettingsError(f"options.{unknown[0]}", "unknown option; expected desired, name")
        if not isinstance(options.get("desired"), Mapping):
            raise SettingsError("options.desired", "the host needs the desired configuration: a table")

    @classmethod
    def open(cls, options: Mapping[str, Any]) -> SensorHost:
        return cls(options["desired"], name=str(options.get("name", "host")))

    async def hello(self) -> list[str]:
        return self.identified(await self.ask(HELLO, Hello(self.name)))

    async def read(self, key: str) -> None:
        value = await self.ask(READ, Read(key))
        if value.key != key:
            raise self.desync(f"asked for {key}, the sensor sent {value.key}")
        self.current[key] = value.value

    async def propose(self) -> list[str]:
        unknown = sorted(set(self.desired) - set(self.keys))
        if unknown:
            raise self.refused(f"the sensor ({self.model}) has no {', '.join(unknown)}")
        changes = [k for k in self.keys if k in self.desired and self.current.get(k) != self.desired[k]]
        agreed = await self.ask(PROPOSE, Proposal(changes))
        if agreed.count != len(changes):
            raise self.desync(f"proposed {len(changes)} changes, the sensor agreed to {agreed.count}")
        self.changes = changes
        return changes

    async def stage(self, key: str) -> None:
        staged = await self.ask(STAGE, Stage(key, self.desired[key]))
        if staged.key != key:
            raise self.desync(f"staged {staged.key}, sent {key}")

    async def commit(self) -> None:
        answer = await self.ask(COMMIT, Commit(self.config_version))
        if isinstance(answer, Refused):
            raise self.refused(answer.reason)
        self.committed = answer.version


class SensorClient(SensorConfig, Client):
    """A sensor, emulated by a JSON file (options: ``config``, its path)."""

    local_options = ("config",)

    def __init__(self, sensor: SensorFile | MemorySensor) -> None:
        super().__init__()
        self.sensor = sensor
        self.staged: dict[str, Any] = {}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - {"config"})
        if unknown:
            raise SettingsError(f"options.{unknown[0]}", "unknown option; expected config")
        if not isinstance(options.get("config"), str) or not options["config"]:
            raise SettingsError("options.config", "the sensor needs its configuration file's path")

    @classmethod
    def open(cls, options: Mapping[str, Any]) -> SensorClient:
        return cls(SensorFile(options["config"]))

    async def hello(self) -> list[str]:
        await self.receive(HELLO)
        version, config = await self.effect(self.sensor.load)
        self.current = dict(config)
        identity = Identity(self.sensor.model, version, sorted(config))
        await self.answer(HELLO, identity)
        return self.identified(identity)

    async def read(self, key: str) -> None:
        request = await self.receive(READ)
        if request.key != key:
            raise self.desync(f"asked for {request.key}, the next key is {key}")
        await self.answer(READ, Value(key, self.current.get(key)))

    async def propose(self) -> list[str]:
        proposal = await self.receive(PROPOSE)
        unknown = [k for k in proposal.keys if k not in self.keys]
        if unknown:
            raise self.desync(f"asked to change {', '.join(unknown)}, which this sensor does not have")
        self.changes = list(proposal.keys)
        await self.answer(PROPOSE, Agreed(len(self.changes)))
        return self.changes

    async def stage(self, key: str) -> None:
        request = await self.receive(STAGE)
        if request.key != key:
            raise self.desync(f"asked to stage {request.key}, the next change is {key}")
        self.staged[key] = request.value  # the client's state, rebuilt by replay: no effect yet
        await self.answer(STAGE, Staged(key))

    async def commit(self) -> None:
        request = await self.receive(COMMIT)
        version = await self.effect(self.sensor.commit, request.base, self.staged)
        if version is None:
            reason = f"the configuration changed since version {request.base} was read"
            await self.answer(COMMIT, Refused(reason))
            raise self.refused(reason)
        await self.answer(COMMIT, Committed(version))


class SensorFile:
    """A sensor's configuration in a JSON file, ``{"model": ..., "version": N, "config": {...}}``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.model = str(self._read().get("model", "sensor"))

    def _read(self) -> dict[str, Any]:
        data = json.loads(self.path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise ValueError(f"{self.path}: expected {{'version': N, 'config': {{...}}}}")
        return data

    def load(self) -> list[Any]:
        """The configuration's version and values."""
        data = self._read()
        return [int(data.get("version", 0)), data["config"]]

    def commit(self, base: int, changes: Mapping[str, Any]) -> int | None:
        """Apply ``changes`` on top of version ``base``: the new version, or None when the
        configuration is no longer at ``base``."""
        data = self._read()
        if int(data.get("version", 0)) != base:
            return None
        data["config"].update(changes)
        data["version"] = base + 1
        partial = self.path.with_name(self.path.name + ".new")
        partial.write_text(json.dumps(data, indent=2, sort_keys=True))
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, self.path)
        return base + 1


class MemorySensor:
    """A sensor in memory, for simulations: it keeps its configuration across the simulated
    crashes of the role that drives it. ``commits`` counts the commits it applied."""

    def __init__(self, config: Mapping[str, Any], *, version: int = 1, model: str = "sensor") -> None:
        self.model = model
        self.version = version
        self.config = dict(config)
        self.commits = 0

    def load(self) -> list[Any]:
        return [self.version, dict(self.config)]

    def commit(self, base: int, changes: Mapping[str, Any]) -> int | None:
        if self.version != base:
            return None
        self.config.update(changes)
        self.version += 1
        self.commits += 1
        return self.version


SPEC = Specification(configure, host=SensorHost, client=SensorClient)
"""The sensor configuration protocol as the protocol kind runs it (entry point ``sensor``)."""
