"""A protocol of your own, written once: a host hands a list of readings to a logger, which
stores them and seals the batch once. Then both roles run over a faulty simulated link with
crashes, the invariants checked after every event.

The party declares the joint steps (what each sends and answers, and what a crash may do to
them) and the decisions both sides compute alike; the host and the client implement each step
their own way; the protocol is one async function over the party.
"""

from __future__ import annotations

from dataclasses import dataclass

from processes.protocol import (
    Client,
    Host,
    LinkFaults,
    LinkSimulation,
    Message,
    Party,
    Resume,
    Specification,
    Step,
    StepFailed,
    same_terminal_step,
    state_diagram,
)


@dataclass(frozen=True, slots=True)
class Offer(Message):
    count: int


@dataclass(frozen=True, slots=True)
class Ready(Message):
    room: int


@dataclass(frozen=True, slots=True)
class Reading(Message):
    index: int
    value: float


@dataclass(frozen=True, slots=True)
class Stored(Message):
    index: int


@dataclass(frozen=True, slots=True)
class Seal(Message):
    count: int


@dataclass(frozen=True, slots=True)
class Sealed(Message):
    count: int


OFFER = Step(Offer, Ready)
SEND = Step(Reading, Stored)  # Resume.REPEAT by default: storing a reading again is harmless
SEAL = Step(Seal, Sealed, resume=Resume.ONCE)  # a batch is sealed once: a crash inside it aborts


class Logging(Party, protocol="readings", version=1):
    def __init__(self) -> None:
        self.count = 0
        self.sent = 0

    @OFFER
    async def offer(self) -> None:
        raise NotImplementedError

    @SEND
    async def send(self) -> None:
        raise NotImplementedError

    @SEAL
    async def seal(self) -> None:
        raise NotImplementedError

    def more(self) -> bool:  # a decision: both sides compute it alike
        return self.sent < self.count


async def readings(p: Logging) -> None:
    try:
        await p.offer()
        while p.more():
            await p.send()
        await p.seal()
    except StepFailed as error:
        await p.abort(error.reason)


class Sender(Logging, Host):
    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values

    async def offer(self) -> None:
        ready = await self.ask(OFFER, Offer(len(self.values)))  # mypy knows: a Ready
        if ready.room < len(self.values):
            raise self.refused(f"the logger has room for {ready.room}")
        self.count = len(self.values)

    async def send(self) -> None:
        await self.ask(SEND, Reading(self.sent, self.values[self.sent]))
        self.sent += 1

    async def seal(self) -> None:
        await self.ask(SEAL, Seal(self.count))


class Logger(Logging, Client):
    def __init__(self, disk: dict[int, float], seals: list[int]) -> None:
        super().__init__()
        self.disk, self.seals = disk, seals  # what outlives a crash: the device's storage

    async def offer(self) -> None:
        self.count = (await self.receive(OFFER)).count
        await self.answer(OFFER, Ready(room=1000))

    async def send(self) -> None:
        reading = await self.receive(SEND)
        await self.effect(self.disk.__setitem__, reading.index, reading.value)  # recorded, replayed
        await self.answer(SEND, Stored(reading.index))
        self.sent += 1

    async def seal(self) -> None:
        await self.receive(SEAL)
        await self.effect(self.seals.append, self.count)
        await self.answer(SEAL, Sealed(self.count))


SPEC = Specification(readings, host=Sender, client=Logger)

values = [20.0 + i / 10 for i in range(50)]
disk: dict[int, float] = {}
seals: list[int] = []


def sealed_once_and_whole(sim: LinkSimulation) -> None:
    assert len(seals) <= 1, "a batch sealed twice"
    if seals:
        assert [disk[i] for i in range(len(values))] == values, "sealed before every reading was stored"


simulation = LinkSimulation(
    SPEC,
    host=lambda: Sender(values),
    client=lambda: Logger(disk, seals),
    seed=7,
    faults=LinkFaults(drop=0.1, duplicate=0.1, corrupt=0.05, latency=(0.0001, 0.01), reorder=True),
    crash_every=60,  # either side crashes about every 60 events, loses its unfenced records, restarts
    invariants=[sealed_once_and_whole, same_terminal_step],
)
simulation.run_until_idle()
ends = [simulation.outcome(side) for side in ("host", "client")]
print([(end.outcome, end.terminal) for end in ends if end], "seals:", seals)  # both done at seal, [50]
print("crashes:", {side: simulation.sides[side].crashes for side in ("host", "client")})
print(state_diagram(SPEC, "client"))  # Mermaid, read from the protocol function
