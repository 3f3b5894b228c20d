"""A protocol's specification: one function over a party, two roles, typed steps; the pictures
drawn from it; and a recorded run checked against it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes.protocol import (
    Client,
    Host,
    LinkFaults,
    LinkSimulation,
    Message,
    Party,
    ProtocolDesync,
    Specification,
    SpecificationError,
    Step,
    StepFailed,
    UnknownProtocol,
    check_run,
    events,
    flow,
    lookup,
    registered,
    sequence_diagram,
    state_diagram,
)
from processes.protocol._spec import decode_message
from processes.protocol.examples import bootloader, sensor
from processes.protocol.examples.bootloader import SPEC, BootClient, BootHost, MemoryFlash


@dataclass(frozen=True, slots=True)
class Ping(Message):
    n: int


@dataclass(frozen=True, slots=True)
class Pong(Message):
    n: int


PING = Step(Ping, Pong)


class Echo(Party, protocol="echo", version=1):
    @PING
    async def ping(self) -> int:
        raise NotImplementedError


async def echo(p: Echo) -> None:
    try:
        await p.ping()
    except StepFailed as error:
        await p.abort(error.reason)


class EchoHost(Echo, Host):
    async def ping(self) -> int:
        return (await self.ask(PING, Ping(1))).n


class EchoClient(Echo, Client):
    async def ping(self) -> int:
        request = await self.receive(PING)
        await self.answer(PING, Pong(request.n))
        return request.n


def test_a_party_collects_its_steps_and_the_roles_implement_them_as_joint_steps() -> None:
    """The party's steps (abort included) are known by name; each role's implementation is
    wrapped as a joint step of the same declaration."""
    spec = Specification(echo, host=EchoHost, client=EchoClient)
    assert ["ping", "abort"] == sorted(spec.steps, key=["ping", "abort"].index)
    assert PING is spec.steps["ping"]
    assert ("echo", 1) == (spec.name, spec.version)
    assert PING is EchoHost.ping.__protocol_step__  # type: ignore[attr-defined]


def test_a_role_that_leaves_a_step_out_is_refused() -> None:
    """A specification whose role does not implement one of the party's steps is refused at
    once, naming the role and the step."""

    class Lazy(Echo, Client):
        pass

    with pytest.raises(SpecificationError, match=r"Lazy\.ping: the role does not implement"):
        Specification(echo, host=EchoHost, client=Lazy)


def test_a_protocol_name_and_version_are_checked() -> None:
    """A party's protocol name is letters, digits, - and _; its version a whole number from 1."""
    with pytest.raises(SpecificationError, match="protocol name"):

        class Bad(Party, protocol="has space", version=1):
            pass

    with pytest.raises(SpecificationError, match="version must be"):

        class Zero(Party, protocol="zero", version=0):
            pass


def test_messages_from_the_wire_are_checked_against_the_step() -> None:
    """A body whose tag the step does not declare, whose fields are too few, or of the wrong
    type, is a ProtocolDesync that says where; a good one becomes the declared class."""
    answers = bootloader.WRITE.answer_types()
    assert bootloader.Written(0, 256) == decode_message(["Written", 0, 256], answers, lambda: "here")
    with pytest.raises(ProtocolDesync, match="here: a Erased message, where the step declares Written"):
        decode_message(["Erased", 0], answers, lambda: "here")
    with pytest.raises(ProtocolDesync, match="Written has 2 fields, the frame 1"):
        decode_message(["Written", 0], answers, lambda: "here")
    with pytest.raises(ProtocolDesync, match=r"Written.count = 'x' has the wrong type"):
        decode_message(["Written", 0, "x"], answers, lambda: "here")
    with pytest.raises(ProtocolDesync, match="has the wrong type"):
        decode_message(["Written", True, 1], answers, lambda: "here")  # a bool is no int here


def test_the_registry_finds_protocols_by_name_and_version() -> None:
    """The examples come as entry points; a name finds its newest version, ``name@N`` that one,
    and an unknown name lists what is registered."""
    assert {"bootloader@2", "sensor-config@1"} <= set(registered())
    assert SPEC is lookup("bootloader")
    assert SPEC is lookup("bootloader@2")
    with pytest.raises(UnknownProtocol, match=r"registered: .*bootloader@2"):
        lookup("bootloader@7")


BOOTLOADER_HOST = """\
stateDiagram-v2
    state "start: sends Start, awaits Accepted | Refused" as start
    state "erase_sector: sends Erase, awaits Erased" as erase_sector
    state "write_next_chunk: sends Chunk, awaits Written" as write_next_chunk
    state "boot: sends Boot, awaits Booted | Refused" as boot
    state "abort: sends Abort, awaits Abort" as abort
    [*] --> start
    start --> erase_sector
    start --> boot
    start --> abort
    erase_sector --> erase_sector
    erase_sector --> write_next_chunk
    erase_sector --> boot
    erase_sector --> abort
    write_next_chunk --> erase_sector
    write_next_chunk --> write_next_chunk
    write_next_chunk --> boot
    write_next_chunk --> abort
    boot --> abort
    boot --> [*]
    abort --> [*]
    note right of erase_sector : taken again if a crash interrupts it, its answer leaves once recorded
    note right of boot : never taken twice: a crash inside it aborts the run
"""


def test_each_role_s_state_diagram_is_read_from_the_protocol_function() -> None:
    """The host's diagram of the bootloader is the function's control flow over its steps (the
    loops, the boot after them, every step's way to the abort), each state saying what the host
    does there; the client's has the same flow, with what the client does."""
    assert BOOTLOADER_HOST == state_diagram(SPEC, "host")
    client = state_diagram(SPEC, "client")
    assert 'state "erase_sector: awaits Erase, answers Erased" as erase_sector' in client
    assert BOOTLOADER_HOST.split("[*] --> start")[1] == client.split("[*] --> start")[1]


def test_the_flow_follows_branches_and_helpers() -> None:
    """``if`` branches, a helper coroutine that takes the party, and a ``return`` are followed:
    the sensor's commit is taken only after staging or after the proposal, and the run may end
    after the proposal (nothing to change) or after the commit."""
    graph = flow(sensor.SPEC)
    assert {"stage", "commit", "[end]"} <= graph.following("propose")
    assert {"commit", "stage"} <= graph.following("stage")
    assert "[end]" in graph.following("commit")
    assert "read" in graph.following("hello")


def run_bootloader(seed: int, faults: LinkFaults | None = None, crash_every: float | None = None) -> LinkSimulation:
    image = os.urandom(10_000)
    flash = MemoryFlash(65536, 4096)
    sim = LinkSimulation(
        SPEC, host=lambda: BootHost(image), client=lambda: BootClient(flash), seed=seed, faults=faults,
        crash_every=crash_every,
    )  # fmt: skip
    sim.run_until_idle()
    return sim


def test_a_recorded_run_is_a_run_the_specification_allows() -> None:
    """Both sides' records of a run over a faulty link with crashes check out against the
    specification: their steps a path through the function's flow to an end, every message one
    its step declares, sent by the side that sends it."""
    sim = run_bootloader(3, LinkFaults(drop=0.1, duplicate=0.1, corrupt=0.05), crash_every=60)
    assert 0 < sim.crashes
    assert [] == check_run(SPEC, sim.records("host"))
    assert [] == check_run(SPEC, sim.records("client"))


def test_a_tampered_run_is_not() -> None:
    """A run whose steps the function cannot take (a chunk written before any erase), or whose
    message a step does not declare, is reported, saying where."""
    records = run_bootloader(1).records("host")
    erase = next(i for i, r in enumerate(records) if r[2] == "erase_sector")
    swapped = [r if r[2] != "erase_sector" or i != erase else [r[0], r[1], "write_next_chunk", r[3]] for i, r in
               enumerate(records) if not (r[2] == "erase_sector" and r[0] == "in" and i == erase + 1)]  # fmt: skip
    assert ["step 2 is write_next_chunk after start; the protocol allows abort, boot, erase_sector"] == [
        p for p in check_run(SPEC, swapped) if p.startswith("step 2 is")
    ]
    wrong = [[k, s, st, [d[0], ["Booted", b"x"]]] if k == "in" and st == "write_next_chunk" else [k, s, st, d]
             for k, s, st, d in records]  # fmt: skip
    assert any("the client answered Booted, the step answers ['Written']" in p for p in check_run(SPEC, wrong))


def test_the_sequence_diagram_of_a_run_folds_repeated_steps() -> None:
    """A run's diagram draws each step's request and answer, a run of the same step once in a
    loop box saying how many, and how the run ended."""
    diagram = sequence_diagram(events(run_bootloader(2).records("client"), SPEC))
    lines = diagram.splitlines()
    assert "sequenceDiagram" == lines[0]
    assert "    host->>client: 1 start: Start(size=10000, digest=b[32], chunk=256)" == lines[3]
    assert "    client-->>host: Accepted(sector_size=4096)" == lines[4]
    assert "    loop 16 times write_next_chunk, steps 3 to 18" in lines
    # 10,000 bytes leave 1,808 for the last sector: seven chunks of 256 and one of 16
    assert "    loop 8 times write_next_chunk, steps 37 to 44" in lines
    assert "    Note over host,client: done at boot" == lines[-1]


def test_the_manual_s_diagrams_are_the_ones_the_code_draws() -> None:
    """The protocol page shows each bootloader role's state diagram and a run's sequence diagram
    exactly as the code draws them (from the specification, and from a simulated run's record of
    the same image size), so the manual's pictures cannot drift from the code."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    for side in ("host", "client"):
        assert f"```mermaid\n{state_diagram(SPEC, side)}```" in page, side
    flash = MemoryFlash(262_144, 65_536)
    sim = LinkSimulation(SPEC, host=lambda: BootHost(bytes(100_000)), client=lambda: BootClient(flash), seed=3)
    sim.run_until_idle()
    assert f"```mermaid\n{sequence_diagram(events(sim.records('host'), SPEC))}```" in page


def test_mypy_checks_what_a_step_sends_and_what_it_answers(tmp_path: Path) -> None:
    """A step's declaration types its messages: mypy refuses a host that asks a step with
    another step's message, and knows the type of the answer an ask returns."""
    from mypy import api

    module = tmp_path / "wrong_host.py"
    module.write_text(
        "from processes.protocol.examples.bootloader import ERASE, WRITE, BootHost, Chunk\n"
        "\n"
        "\n"
        "class WrongHost(BootHost):\n"
        "    async def erase_sector(self, sector: int, size: int) -> None:\n"
        "        await self.ask(ERASE, Chunk(sector, b''))\n"
        "\n"
        "    async def write_next_chunk(self) -> int:\n"
        "        answer = await self.ask(WRITE, Chunk(0, b''))\n"
        "        reveal_type(answer)\n"
        "        return answer.count\n"
    )
    root = Path(__file__).resolve().parent.parent
    out, _, status = api.run([
        str(module), "--strict", "--follow-imports=silent", "--no-error-summary", "--hide-error-context",
        "--cache-dir", str(tmp_path / "cache"), "--config-file", str(root / "pyproject.toml"),
    ])  # fmt: skip
    errors = [line.partition("wrong_host.py:")[2] for line in out.splitlines() if ": error: " in line]
    assert 1 == status
    assert ["6"] == [error.partition(":")[0] for error in errors], out  # the ask with the wrong message
    assert 'wrong_host.py:10: note: Revealed type is "processes.protocol.examples.bootloader.Written"' in out
