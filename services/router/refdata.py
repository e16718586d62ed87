"""Reference data: one immutable snapshot of grids, places, people and rules.

The router decides against one snapshot at a time; a reload builds a new snapshot and swaps it
in with a single assignment, so no case is ever routed against half-loaded data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from services.router.geo import GridIndex
from services.router.rules import RuleTable
from shared.catalogue import Category
from shared.events import EscalationStep, trusted


@dataclass(frozen=True)
class Unit:
    """A district, street office or community: a rung of the escalation ladder."""

    code: str
    name: str
    contact: str | None = None
    parent: str | None = None


@dataclass(frozen=True)
class GridInfo:
    grid_id: str
    kind: str
    dedicated_type: str | None
    community: str
    leader_name: str
    leader_contact: str | None = None
    parent_grid: str | None = None  # dedicated grids: the comprehensive grid around them


@dataclass(frozen=True)
class Worker:
    worker_id: str
    grid_id: str
    name: str
    on_duty: bool = True
    capacity: int = 20
    contact: str | None = None

    @cached_property
    def escalation_step(self) -> EscalationStep:
        """The chain's first step when this worker takes a case (built once per snapshot;
        the name and contact are validated strings already)."""
        return trusted(EscalationStep, level=0, role="worker", name=self.name, contact=self.contact)

    @cached_property
    def escalation_step_json(self) -> bytes:
        return step_json(self.escalation_step)


@dataclass(frozen=True, slots=True)
class GridPlace:
    """What routing needs of a grid, looked up once per snapshot: where it is on the ladder
    and who in it can take a case."""

    info: GridInfo
    community: Unit
    street_office: Unit
    district: Unit
    # the grid's workers on duty; for a dedicated grid with nobody on duty, the comprehensive
    # grid's around it; empty: the grid leader takes the case
    on_duty: tuple[Worker, ...]


@dataclass(frozen=True)
class Department:
    code: str
    name: str
    contact: str | None = None


@dataclass(frozen=True)
class ReferenceData:
    version: int
    index: GridIndex
    grids: dict[str, GridInfo]
    communities: dict[str, Unit]
    street_offices: dict[str, Unit]
    districts: dict[str, Unit]
    city: Unit
    buildings: dict[str, str]  # building code → grid id
    departments: dict[str, Department]
    workers_by_grid: dict[str, tuple[Worker, ...]]
    categories: dict[str, Category]
    rules: RuleTable
    # area code (district, street office or grid) → deadline factor, e.g. 0.25 in wartime
    emergency: dict[str, float] = field(default_factory=dict)
    facilities: dict[str, str] = field(default_factory=dict)  # facility code → grid id
    # The escalation chain above the worker, per (grid, first level), with its JSON: the same
    # for every case of the grid, and this snapshot never changes, so it is built once.
    _chain_tails: dict[tuple[str, int], tuple[tuple[EscalationStep, ...], bytes]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _unit_steps: dict[tuple[int, str, str], EscalationStep] = field(
        default_factory=dict, repr=False, compare=False
    )
    # init=False: a copy with other workers (`dataclasses.replace`) must not inherit these
    _places: dict[str, GridPlace] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def prepare(self) -> ReferenceData:
        """Build now, while the snapshot is made off the event loop, what routing would
        otherwise build on a grid's or worker's first case: each grid's chain above a worker
        (and its JSON) and each worker's own step. A city has as many grids as a busy hour
        has cases, and every reload starts afresh, so left lazy these were built for most
        cases. (The chain of a grid with nobody on duty stays lazy: it is rare.)"""
        for grid_id in self.grids:
            self.place(grid_id)
            self._chain_tail(grid_id, 1)
        for workers in self.workers_by_grid.values():
            for worker in workers:
                _ = worker.escalation_step_json
        return self

    def chain_json(self, grid_id: str, worker: Worker | None) -> bytes:
        """The JSON of the chain `(worker,) + chain_above_worker(grid_id, …)`, as the event's
        model writes it, from parts rendered once per worker and grid (a third of the cost of
        serialising a routing decision was this chain)."""
        if worker is None:
            return b"[" + self._chain_tail(grid_id, 0)[1] + b"]"
        return b"[" + worker.escalation_step_json + b"," + self._chain_tail(grid_id, 1)[1] + b"]"

    def chain_above_worker(self, grid_id: str, first_level: int) -> tuple[EscalationStep, ...]:
        """Grid leader → community → street office → district → city, numbered from
        `first_level`."""
        return self._chain_tail(grid_id, first_level)[0]

    def _chain_tail(
        self, grid_id: str, first_level: int
    ) -> tuple[tuple[EscalationStep, ...], bytes]:
        key = (grid_id, first_level)
        tail = self._chain_tails.get(key)
        if tail is None:
            place = self.place(grid_id)
            leader = trusted(
                EscalationStep,
                level=first_level,
                role="grid_leader",
                name=place.info.leader_name,
                contact=place.info.leader_contact,
            )
            above = (
                ("community", place.community),
                ("street_office", place.street_office),
                ("district", place.district),
                ("city", self.city),
            )
            steps = (
                leader,
                *(
                    self._unit_step(first_level + 1 + i, role, unit)
                    for i, (role, unit) in enumerate(above)
                ),
            )
            tail = steps, b",".join(step_json(s) for s in steps)
            self._chain_tails[key] = tail
        return tail

    def _unit_step(self, level: int, role: str, unit: Unit) -> EscalationStep:
        """A community's, street office's, district's or the city's step: one object for
        all the grids under it (most cases meet a grid the snapshot has not chained yet)."""
        key = (level, role, unit.code)
        step = self._unit_steps.get(key)
        if step is None:
            step = trusted(
                EscalationStep, level=level, role=role, name=unit.name, contact=unit.contact
            )
            self._unit_steps[key] = step
        return step

    def place(self, grid_id: str) -> GridPlace:
        """The grid's `GridPlace` (built with the snapshot by `prepare`)."""
        place = self._places.get(grid_id)
        if place is None:
            info = self.grids[grid_id]
            on_duty = tuple(w for w in self.workers_by_grid.get(grid_id, ()) if w.on_duty)
            if not on_duty and info.parent_grid:
                on_duty = tuple(
                    w for w in self.workers_by_grid.get(info.parent_grid, ()) if w.on_duty
                )
            place = GridPlace(info, *self.area_of(grid_id), on_duty)
            self._places[grid_id] = place
        return place

    def area_of(self, grid_id: str) -> tuple[Unit, Unit, Unit]:
        """(community, street office, district) of a grid."""
        community = self.communities[self.grids[grid_id].community]
        street = self.street_offices[community.parent or ""]
        district = self.districts[street.parent or ""]
        return community, street, district

    def stats(self) -> dict[str, int]:
        return {
            "grids": len(self.grids),
            "buildings": len(self.buildings),
            "workers": sum(len(w) for w in self.workers_by_grid.values()),
            "departments": len(self.departments),
            "rules": len(self.rules.rules),
        }


def step_json(step: EscalationStep) -> bytes:
    return step.__pydantic_serializer__.to_json(step)
