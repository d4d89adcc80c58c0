"""The Ray driver's bookkeeping of where work is: actor slots, the unit queue, units in flight, awaited calls.

Pure data and small queries, no Ray calls: `cluster.driver.RayJob` owns one `Scheduler`, asks it what to
start next (`next_assignment`), records every Ray call it makes (`expect`, with a typed `Pending` record saying
what the reply is), and takes each reply's record back when it arrives (`take`). Failures go through
`cluster.failures.Recovery`, which uses `forget_unit` / `forget_slot`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ttsvar.engine import Report, WorkUnit


@dataclass(eq=False)
class ActorSlot:
    """The driver's record of one generator actor: which units it holds, whether it is up."""

    index: int
    handle: Any
    ready: bool = False
    dead: bool = False
    pid: int | None = None
    host: str | None = None
    node_id: str | None = None
    units: set[int] = field(default_factory=set)


@dataclass
class Flight:
    """A unit being run: on which actor, and (once its final report came) the picks awaiting images."""

    unit: WorkUnit
    slot: ActorSlot
    reports: int = 0  # reports received so far (0: the actor has not reached the first decision scale)
    final: Report | None = None
    picks: dict[int, int] | None = None


# ----------------------------------------------------------------------------- what an awaited reply is


@dataclass
class Pending:
    """An awaited Ray call; the subclass says what its reply is and who handles it."""


@dataclass
class ActorReady(Pending):
    """`GeneratorActor.ready()`: the actor has loaded its models (or its constructor raised)."""

    slot: ActorSlot


@dataclass
class RewardReady(Pending):
    """`RewardActor.ready()` of a pool actor."""


@dataclass
class UnitReport(Pending):
    """`start` / `apply` of a unit: a `Report` (answered with a `Selection`, or with `collect` when final)."""

    slot: ActorSlot
    unit_id: int


@dataclass
class UnitImagesDue(Pending):
    """`collect` of a unit: its final images (`UnitImages`)."""

    slot: ActorSlot
    unit_id: int


class Scheduler:
    """Which unit runs on which generator actor, and which replies the driver waits for."""

    def __init__(self, units_in_flight: int):
        self.units_in_flight = units_in_flight
        self.slots: list[ActorSlot] = []
        self.queue: deque[WorkUnit] = deque()
        self.flights: dict[int, Flight] = {}
        self.pending: dict[Any, Pending] = {}  # Ray object ref -> what it is
        # units whose actor died under them: each runs alone on an actor, so a death is blamed on one unit
        self.suspects: set[int] = set()

    # -- actors ---------------------------------------------------------------------------------------

    def add_slot(self) -> ActorSlot:
        slot = ActorSlot(len(self.slots), None)
        self.slots.append(slot)
        return slot

    def live(self) -> list[ActorSlot]:
        return [s for s in self.slots if s.ready and not s.dead]

    # -- units ----------------------------------------------------------------------------------------

    def next_assignment(self) -> tuple[ActorSlot, WorkUnit] | None:
        """The queue's next unit and the least loaded ready actor with a free slot (None if either is missing).
        A suspect unit takes an idle actor and keeps it to itself."""
        if not self.queue:
            return None
        if self.queue[0].unit_id in self.suspects:
            free = [s for s in self.live() if not s.units]
        else:
            free = [s for s in self.live() if len(s.units) < self.units_in_flight and not s.units & self.suspects]
        if not free:
            return None
        return min(free, key=lambda s: (len(s.units), s.index)), self.queue.popleft()

    def start(self, unit: WorkUnit, slot: ActorSlot) -> Flight:
        fl = self.flights[unit.unit_id] = Flight(unit, slot)
        slot.units.add(unit.unit_id)
        return fl

    def finish(self, unit_id: int) -> Flight:
        fl = self.flights.pop(unit_id)
        fl.slot.units.discard(unit_id)
        self.suspects.discard(unit_id)
        return fl

    def forget_unit(self, unit_id: int) -> WorkUnit:
        """A unit that will not finish where it runs: out of its actor, its awaited replies dropped."""
        fl = self.finish(unit_id)
        for ref, rec in list(self.pending.items()):
            if getattr(rec, "unit_id", None) == unit_id:
                del self.pending[ref]
        return fl.unit

    def forget_slot(self, slot: ActorSlot) -> None:
        """Drop every awaited reply of an actor that is gone."""
        for ref, rec in list(self.pending.items()):
            if getattr(rec, "slot", None) is slot:
                del self.pending[ref]

    # -- awaited replies ------------------------------------------------------------------------------

    def expect(self, ref: Any, record: Pending) -> None:
        self.pending[ref] = record

    def take(self, ref: Any) -> Pending:
        return self.pending.pop(ref)

    def busy(self) -> bool:
        """Units are queued or running."""
        return bool(self.queue or self.flights)
