"""The link simulation: both roles of a protocol on virtual time, over a faulty simulated link,
with crashes, invariants checked after every event, and the same trace for the same seed.

It runs the very drivers the daemon runs (the protocol function, the roles, phase lock,
retransmission, the record, replay, fences): only the link and the clock are simulated. It is a
runner of its own rather than :class:`supervisor.Simulation`, whose unit is a process's
transition: a role's process only relays its driver's reports, and what can go wrong here
happens frame by frame, between two drivers and their records, below any transition.

Faults, all drawn from the seed: frames dropped, duplicated, corrupted (a byte flipped: the
checksum catches it), delayed, and reordered where the transport allows it (a simulated
channel; a stream keeps its order); and crashes of either side, which lose the record's tail
that no fence made durable (a power cut, the harshest case) and restart the side after a
delay, replaying what survived.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor import ConfigurationError, InvariantViolation, SimulationError
from supervisor.lowlevel import pack

from ._driver import Outcome, RoleDriver, Timing
from ._spec import Client, Host, Role, Specification
from ._wire import FrameError, decode_frame

SIDES = ("host", "client")
_DELIVER, _TICK, _FENCED, _RESTART = range(4)


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """What the simulated link does to frames: the chance of each fault per frame, the
    latency range, and whether frames may overtake each other (``reorder``: a channel; a
    stream keeps its order)."""

    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    latency: tuple[float, float] = (0.0002, 0.002)
    reorder: bool = False

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "corrupt"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigurationError(f"{name} must be within [0, 1), got {getattr(self, name)}")
        low, high = self.latency
        if not 0 <= low <= high:
            raise ConfigurationError(f"latency must be (low, high) with 0 <= low <= high, got {self.latency}")


@dataclass(slots=True)
class SimSide:
    """One side: its role's factory (the role's resources, a device's flash, outlive its
    crashes), its record (``durable``: how many records a crash keeps at least) and its driver."""

    name: str
    make_role: Callable[[], Role]
    records: list[list[Any]]
    durable: int = 0
    driver: RoleDriver | None = None
    epoch: int = 0
    tick_at: float | None = None
    crashes: int = 0
    fencing: bool = False

    @property
    def alive(self) -> bool:
        return self.driver is not None


class LinkSimulation:
    """Both roles of ``spec`` over a simulated link.

    ``host`` and ``client`` make a fresh role each time the side starts (after a crash too):
    keep the resources that must survive a crash (the device's flash) outside, in the factory's
    closure. ``crash_every`` is the mean number of events between crashes (None: none), at most
    ``max_crashes`` of them; a crashed side restarts after a delay drawn from
    ``restart_delay``. ``client_spec`` is the client's specification when it is not ``spec``
    (another version of the protocol). ``invariants`` are callables ``(simulation) -> None`` that raise
    ``AssertionError``; they run after every event, and the first that fails raises
    :class:`~supervisor.InvariantViolation` with the seed and the event.
    """

    def __init__(
        self,
        spec: Specification[Any],
        *,
        host: Callable[[], Host],
        client: Callable[[], Client],
        seed: int = 0,
        faults: LinkFaults | None = None,
        timing: Timing | None = None,
        crash_every: float | None = None,
        max_crashes: int = 20,
        restart_delay: tuple[float, float] = (0.01, 0.5),
        fence_latency: tuple[float, float] = (0.0001, 0.001),
        invariants: Sequence[Callable[[LinkSimulation], Any]] = (),
        replay_hint: str | None = None,
        client_spec: Specification[Any] | None = None,
    ) -> None:
        if crash_every is not None and crash_every < 1:
            raise ConfigurationError(f"crash_every must be >= 1 event, got {crash_every}")
        self.spec = spec
        self.specs = {"host": spec, "client": client_spec or spec}
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults or LinkFaults()
        self.timing = timing or Timing(step_timeout=30.0, rto_min=0.002, rto_max=0.5, rto_initial=0.01)
        self.crash_every = crash_every
        self.max_crashes = max_crashes
        self.restart_delay = restart_delay
        self.fence_latency = fence_latency
        self.invariants = list(invariants)
        self.replay_hint = replay_hint
        self.sides = {
            "host": SimSide("host", host, []),
            "client": SimSide("client", client, []),
        }
        self.now = 0.0
        self.events = 0
        self.crashes = 0
        self.frames = {"sent": 0, "dropped": 0, "duplicated": 0, "corrupted": 0, "rejected": 0, "delivered": 0}
        self._heap: list[tuple[float, int, int, str, int, Any]] = []
        self._seq = itertools.count()
        self._last_delivery = {"host": 0.0, "client": 0.0}
        self._forced: dict[str, list[str]] = {"host": [], "client": []}
        self._hash = hashlib.blake2b(digest_size=16)
        self._run = f"sim{seed}"
        for side in SIDES:
            self._start(self.sides[side])

    # --- what tests read -----------------------------------------------------------------------

    def driver(self, side: str) -> RoleDriver | None:
        """The side's driver (None while it is down after a crash)."""
        return self.sides[side].driver

    def role(self, side: str) -> Role | None:
        driver = self.sides[side].driver
        return driver.role if driver is not None else None

    def outcome(self, side: str) -> Outcome | None:
        driver = self.sides[side].driver
        return driver.outcome if driver is not None else None

    def records(self, side: str) -> list[list[Any]]:
        """The side's record as it stands (durable or not)."""
        return self.sides[side].records

    @property
    def ended(self) -> bool:
        """Both sides have ended their run."""
        return all(self.outcome(side) is not None for side in SIDES)

    @property
    def trace_hash(self) -> str:
        """A stable hash of every event so far: the same seed and workload give the same."""
        return self._hash.hexdigest()

    # --- what tests do -------------------------------------------------------------------------

    def run(self, events: int) -> int:
        """Handle up to ``events`` events; returns how many were handled."""
        done = 0
        while done < events and self.step():
            done += 1
        return done

    def run_until_idle(self, max_events: int = 5_000_000) -> None:
        """Handle events until nothing is left to happen (both sides ended and quiet)."""
        for _ in range(max_events):
            if not self.step():
                return
        raise SimulationError(f"still busy after {max_events} events (seed {self.seed})")

    def crash(self, side: str) -> None:
        """Crash ``side`` now: its driver is lost with the record's tail no fence made durable
        (some of it may have reached the disk anyway); it restarts after a delay."""
        state = self.sides[side]
        if state.driver is None:
            return
        self.crashes += 1
        state.crashes += 1
        state.driver = None
        state.epoch += 1
        state.tick_at = None
        state.fencing = False
        kept = state.durable + self.rng.randint(0, len(state.records) - state.durable)
        del state.records[kept:]
        state.durable = kept
        self._note("crash", side, kept)
        low, high = self.restart_delay
        self._schedule(self.now + self.rng.uniform(low, high), _RESTART, side, state.epoch, None)

    def fault_next(self, sender: str, fault: str) -> None:
        """The next frame ``sender`` sends meets ``fault`` (``drop``, ``duplicate``, ``corrupt``),
        whatever the odds: a fault a Hypothesis rule can place, and shrink."""
        if fault not in ("drop", "duplicate", "corrupt"):
            raise ConfigurationError(f"fault must be drop, duplicate or corrupt, not {fault!r}")
        self._forced[sender].append(fault)

    # --- the engine ----------------------------------------------------------------------------

    def step(self) -> bool:
        """Handle the next event; False when nothing is left to happen."""
        if not self._heap:
            return False
        when, _, kind, side, epoch, payload = heapq.heappop(self._heap)
        state = self.sides[side]
        if kind == _RESTART:
            if epoch != state.epoch or state.driver is not None:
                return True
        elif epoch != state.epoch or state.driver is None or (kind == _TICK and state.tick_at != when):
            return True  # meant for a side that crashed since, or a timer moved since: time stays
        self.now = max(self.now, when)
        if kind == _RESTART:
            self._start(state)
        elif kind == _DELIVER:
            self._deliver(state, payload)
        elif kind == _TICK:
            state.tick_at = None
            driver = state.driver
            assert driver is not None
            driver.tick(self.now)
            self._after(state)
        else:
            state.fencing = False
            state.durable = max(state.durable, payload)
            driver = state.driver
            assert driver is not None
            driver.fenced(self.now)
            self._after(state)
        self.events += 1
        self._check(side, kind)
        if (
            self.crash_every is not None
            and self.crashes < self.max_crashes
            and self.rng.random() * self.crash_every < 1.0
        ):
            self.crash(self.rng.choice(SIDES))
        return True

    def _start(self, state: SimSide) -> None:
        role = state.make_role()
        driver = RoleDriver(
            self.specs[state.name],
            role,
            replay=list(state.records),
            sink=state.records.append,
            run=self._run if state.name == "host" else "",
            timing=self.timing,
        )
        state.driver = driver
        self._note("start", state.name, len(state.records))
        driver.start(self.now)
        self._after(state)

    def _deliver(self, state: SimSide, data: bytes) -> None:
        driver = state.driver
        assert driver is not None
        try:
            frame = decode_frame(data)
        except FrameError:
            self.frames["rejected"] += 1
            driver.rejected += 1
            return
        self.frames["delivered"] += 1
        driver.deliver(frame, self.now)
        self._after(state)

    def _after(self, state: SimSide) -> None:
        """Send what the driver put out, take its fence, and wake it at its next deadline."""
        driver = state.driver
        assert driver is not None
        if driver.outbox:
            frames, driver.outbox = driver.outbox, []
            for frame in frames:
                self._send(state.name, frame)
        waiting = driver.waiting
        if waiting is not None and waiting.need.name == "FENCE" and not state.fencing:
            state.fencing = True
            low, high = self.fence_latency
            self._schedule(self.now + self.rng.uniform(low, high), _FENCED, state.name, state.epoch, len(state.records))
        deadline = driver.next_deadline()
        if deadline is None:
            state.tick_at = None
        elif state.tick_at is None or deadline < state.tick_at:
            state.tick_at = deadline
            self._schedule(deadline, _TICK, state.name, state.epoch, None)

    def _send(self, sender: str, frame: bytes) -> None:
        receiver = "client" if sender == "host" else "host"
        faults = self.faults
        rng = self.rng
        self.frames["sent"] += 1
        forced = self._forced[sender].pop(0) if self._forced[sender] else None
        if forced == "drop" or (forced is None and rng.random() < faults.drop):
            self.frames["dropped"] += 1
            self._note("drop", sender, frame)
            return
        copies = 1
        if forced == "duplicate" or (forced is None and rng.random() < faults.duplicate):
            copies = 2
            self.frames["duplicated"] += 1
        if forced == "corrupt" or (forced is None and rng.random() < faults.corrupt):
            flipped = bytearray(frame)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            frame = bytes(flipped)
            self.frames["corrupted"] += 1
        state = self.sides[receiver]
        low, high = faults.latency
        for _ in range(copies):
            when = self.now + rng.uniform(low, high)
            if not faults.reorder:
                when = max(when, self._last_delivery[receiver])  # a stream: in order
                self._last_delivery[receiver] = when
            self._schedule(when, _DELIVER, receiver, state.epoch, frame)

    def _schedule(self, when: float, kind: int, side: str, epoch: int, payload: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, side, epoch, payload))

    def _note(self, what: str, side: str, detail: Any) -> None:
        self._hash.update(pack([self.events, round(self.now, 9), what, side, detail]))

    def _check(self, side: str, kind: int) -> None:
        driver = self.sides[side].driver
        self._hash.update(
            pack(
                [
                    self.events,
                    round(self.now, 9),
                    kind,
                    side,
                    driver.seq if driver else -1,
                    len(self.sides[side].records),
                ]
            )
        )
        for invariant in self.invariants:
            try:
                invariant(self)
            except AssertionError as exc:
                name = getattr(invariant, "__name__", repr(invariant))
                raise InvariantViolation(
                    invariant=name,
                    message=str(exc) or "assertion failed",
                    seed=self.seed,
                    step=self.events,
                    pid=side,
                    input=("deliver", "tick", "fenced", "restart")[kind],
                    replay=self.replay_hint or f"LinkSimulation(..., seed={self.seed}) and the same workload",
                ) from exc

    def _where(self, side: str) -> str:
        driver = self.sides[side].driver
        return "down" if driver is None else driver.where() or "start"

    def __repr__(self) -> str:
        states = ", ".join(f"{s}: {self._where(s)}" for s in SIDES)
        return f"<LinkSimulation {self.spec.key} seed={self.seed} t={self.now:.4f} {states}; {self.crashes} crashes>"


def same_terminal_step(simulation: LinkSimulation) -> None:
    """Once both sides have ended, they ended in the same step (both booted, or both aborted)."""
    host, client = simulation.outcome("host"), simulation.outcome("client")
    if host is not None and client is not None:
        assert host.terminal == client.terminal, f"the host ended in {host}, the client in {client}"
