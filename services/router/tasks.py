"""Grid tasks: one task for every grid of an area, each a case of its own. Pure: no I/O.

A `GridTaskIssued` names an area (a district, street office, community or grid code, or
`city`) and which kinds of grid in it. `task_cases` lists the grids it reaches, in a fixed
order, with each grid's case id and the facts the router decides that case on: the grid is
pinned (no lookup), the department is the task's or the category's rules', the deadlines the
category's unless the task sets its own (`due_by`), and the worker and escalation chain are
decided as for any report.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from services.router.refdata import ReferenceData
from shared import events
from shared.ids import derived_event_id

CITY = "city"


class TaskRefused(ValueError):
    """The task cannot make any case here (the message names why): a dead letter."""


@dataclass(frozen=True)
class TaskCase:
    grid_id: str
    case_id: str
    facts: dict[str, Any]  # as the router stores a case's facts (`dispatch.facts_from_report`)


def task_case_id(task_id: str, grid_id: str) -> str:
    """The case of `task_id` in `grid_id`: the same on every redelivery of the task."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"griddispatch:task/{task_id}/{grid_id}"))


def grids_in_area(ref: ReferenceData, area: str, kinds: tuple[str, ...]) -> list[str]:
    """The grids of the given kinds in `area`, sorted by id."""
    found = []
    for grid_id, info in ref.grids.items():
        if info.kind not in kinds:
            continue
        if area not in (CITY, grid_id):
            community, street, district = ref.area_of(grid_id)
            if area not in (community.code, street.code, district.code):
                continue
        found.append(grid_id)
    return sorted(found)


def task_cases(ref: ReferenceData, task: events.GridTaskIssued) -> list[TaskCase]:
    """The cases a task makes, one per grid it reaches. Raises TaskRefused."""
    if task.category not in ref.categories:
        raise TaskRefused(f"grid task {task.task_id}: unknown category {task.category}")
    if task.department is not None and task.department not in ref.departments:
        raise TaskRefused(f"grid task {task.task_id}: unknown department {task.department}")
    grids = grids_in_area(ref, task.area, task.grid_kinds)
    if not grids:
        kinds = " or ".join(task.grid_kinds)
        raise TaskRefused(f"grid task {task.task_id}: no {kinds} grid in area {task.area}")
    description = task.title + (f"\n\n{task.instructions}" if task.instructions else "")
    return [
        TaskCase(
            grid_id=grid_id,
            case_id=task_case_id(task.task_id, grid_id),
            facts={
                "category": task.category,
                "description": description,
                "location": {
                    "lat": None,
                    "lon": None,
                    "address": None,
                    "building_code": None,
                    "facility_code": None,
                },
                "reported_at": task.issued_at.isoformat(),
                "care_groups": [],
                "excluded": [],
                "grid_id": grid_id,
                "department": task.department,
                "task_id": task.task_id,
                "due_by": task.due_by.isoformat() if task.due_by else None,
            },
        )
        for grid_id in grids
    ]


def task_case_event_id(task_event_id: uuid.UUID, grid_id: str) -> uuid.UUID:
    """The id the router records one grid's case of a task under (as if it were an input)."""
    return derived_event_id(task_event_id, f"task-case/{grid_id}")
