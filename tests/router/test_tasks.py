"""Grid tasks on a generated city, without any server: which grids a task reaches, and how
each grid's case is decided."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.router import democity, snapshot
from services.router.decide import decide
from services.router.dispatch import case_facts
from services.router.refdata import ReferenceData
from services.router.tasks import TaskRefused, grids_in_area, task_case_id, task_cases
from shared import events

CITY = democity.generate(seed=11, scale="small")
ISSUED = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
STREET_OF = {c["code"]: c["street_office"] for c in CITY.communities}
DISTRICT_OF = {s["code"]: s["district"] for s in CITY.street_offices}


@pytest.fixture(scope="module")
def ref() -> ReferenceData:
    return snapshot.from_city(CITY)


def task(area: str, **kw: object) -> events.GridTaskIssued:
    values: dict[str, object] = {
        "task_id": str(uuid.uuid4()),
        "category": "task.door-to-door",
        "title": "寒潮入户排查独居老人",
        "instructions": "逐户确认供暖正常",
        "area": area,
        "issued_by": "ops",
        "issued_at": ISSUED,
        **kw,
    }
    return events.GridTaskIssued.model_validate(values)


def brute_force(area: str, kinds: set[str]) -> list[str]:
    """The grids of `area` straight from the city's tables."""
    found = []
    for g in CITY.grids:
        street = STREET_OF[g["community"]]
        places = {"city", g["grid_id"], g["community"], street, DISTRICT_OF[street]}
        if g["kind"] in kinds and area in places:
            found.append(g["grid_id"])
    return sorted(found)


@pytest.mark.parametrize(
    "area",
    ["city", "longsha", "tiefeng", "longsha-s01", "longsha-s01-c01", "longsha-g00001", "nowhere"],
)
@pytest.mark.parametrize(
    "kinds", [("comprehensive",), ("dedicated",), ("comprehensive", "dedicated")]
)
def test_an_area_reaches_its_grids_of_the_kinds_asked(
    ref: ReferenceData, area: str, kinds: tuple[str, ...]
) -> None:
    assert grids_in_area(ref, area, kinds) == brute_force(area, set(kinds))


def test_a_task_makes_one_case_per_grid_with_fixed_ids(ref: ReferenceData) -> None:
    t = task("longsha-s01")
    cases = task_cases(ref, t)
    assert [c.grid_id for c in cases] == brute_force("longsha-s01", {"comprehensive"})
    assert len({c.case_id for c in cases}) == len(cases) > 1
    assert [c.case_id for c in task_cases(ref, t)] == [c.case_id for c in cases]  # redelivery
    assert cases[0].case_id == task_case_id(t.task_id, cases[0].grid_id)
    assert cases[0].case_id != task_case_id(str(uuid.uuid4()), cases[0].grid_id)


def test_each_grid_s_case_goes_to_that_grid_and_carries_the_task(ref: ReferenceData) -> None:
    t = task("longsha-s01-c01", grid_kinds=("comprehensive", "dedicated"))
    for c in task_cases(ref, t):
        d = decide(case_facts(c.case_id, c.facts, None), ref, open_cases={})
        ev = d.event
        assert isinstance(ev, events.CaseRouted), ev
        assert (ev.grid_id, ev.task_id, ev.category) == (c.grid_id, t.task_id, t.category)
        assert ev.department == "street-office"  # the category's
        assert ev.priority is events.Priority.HIGH
        assert ev.deadlines.resolve_by == ISSUED.replace(day=11)  # 24 h
        assert ev.worker_id is None or ev.escalation_chain[0].role == "worker"
        assert d.payload_json == ev.__pydantic_serializer__.to_json(ev)


def test_a_task_may_name_its_department_until_that_department_declines(
    ref: ReferenceData,
) -> None:
    t = task("longsha-g00001", department="sanitation")
    [c] = task_cases(ref, t)
    first = decide(case_facts(c.case_id, c.facts, None), ref, open_cases={}).event
    assert isinstance(first, events.CaseRouted)
    assert (first.grid_id, first.department) == ("longsha-g00001", "sanitation")
    declined = {**c.facts, "excluded": ["sanitation"]}
    transfer = events.RerouteRequested(
        reason="not ours", requested_by="sanitation", exclude_departments=("sanitation",)
    )
    again = decide(case_facts(c.case_id, declined, transfer), ref, open_cases={}).event
    assert isinstance(again, events.CaseRouted)
    # the same grid; the category's own department now
    assert (again.grid_id, again.department, again.task_id) == (
        "longsha-g00001",
        "street-office",
        t.task_id,
    )


def test_a_task_case_the_router_cannot_route_still_names_its_task() -> None:
    """The category's department is missing from the reference data: each grid's case goes to
    triage, and says which task it belongs to (intake makes the case from it)."""
    city = dataclasses.replace(
        CITY, departments=[d for d in CITY.departments if d["code"] != "street-office"]
    )
    ref = snapshot.from_city(city)
    t = task("longsha-s01-c01")
    cases = task_cases(ref, t)
    assert cases
    for c in cases:
        ev = decide(case_facts(c.case_id, c.facts, None), ref, open_cases={}).event
        assert isinstance(ev, events.CaseUnroutable), ev
        assert (ev.task_id, ev.reason) == (t.task_id, "department street-office is not known")


def test_a_task_s_own_deadline_replaces_the_category_s(ref: ReferenceData) -> None:
    """Resolved by the task's `due_by`, on the wall clock; acknowledged by the category's
    deadline or by then, whichever is sooner; and the same after a transfer."""
    for due_by, ack_by in (
        (ISSUED + timedelta(hours=6), ISSUED + timedelta(hours=2)),  # the category's 2 h
        (ISSUED + timedelta(minutes=30), ISSUED + timedelta(minutes=30)),
    ):
        t = task("longsha-g00001", due_by=due_by, department="sanitation")
        [c] = task_cases(ref, t)
        first = decide(case_facts(c.case_id, c.facts, None), ref, open_cases={})
        ev = first.event
        assert isinstance(ev, events.CaseRouted)
        assert (ev.deadlines.resolve_by, ev.deadlines.acknowledge_by) == (due_by, ack_by)
        assert ev.deadlines.working_time is False
        assert first.payload_json == ev.__pydantic_serializer__.to_json(ev)
        transfer = events.RerouteRequested(
            reason="not ours", requested_by="sanitation", exclude_departments=("sanitation",)
        )
        declined = {**c.facts, "excluded": ["sanitation"]}
        again = decide(case_facts(c.case_id, declined, transfer), ref, open_cases={}).event
        assert isinstance(again, events.CaseRouted)
        assert again.deadlines.resolve_by == due_by
    # without one: the category's 24 h
    [plain] = task_cases(ref, task("longsha-g00001"))
    ev = decide(case_facts(plain.case_id, plain.facts, None), ref, open_cases={}).event
    assert isinstance(ev, events.CaseRouted)
    assert ev.deadlines.resolve_by == ISSUED + timedelta(hours=24)


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"area": "atlantis"}, "no comprehensive grid in area atlantis"),
        ({"category": "no.such"}, "unknown category no.such"),
        ({"department": "nobody"}, "unknown department nobody"),
    ],
)
def test_a_task_that_can_make_no_case_is_refused_with_why(
    ref: ReferenceData, kw: dict[str, str], reason: str
) -> None:
    values = {"area": "longsha", **kw}
    area = values.pop("area")
    with pytest.raises(TaskRefused, match=reason):
        task_cases(ref, task(area, **values))
