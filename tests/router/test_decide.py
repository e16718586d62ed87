"""The routing decision on a generated city, without any server."""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.router import democity, snapshot
from services.router.decide import CaseFacts, decide, hand_over, handover_refused
from services.router.refdata import ReferenceData
from shared import events
from shared.events import Priority

CITY = democity.generate(seed=11, scale="small")
WINTER = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 10, 8, 0, tzinfo=UTC)
# a report stamped in local time, to the second (pydantic writes it with its offset)
LOCAL = datetime(2026, 12, 1, 21, 30, tzinfo=timezone(timedelta(hours=8)))


@pytest.fixture(scope="module")
def ref() -> ReferenceData:
    return snapshot.from_city(CITY)


def _grid(kind: str, dedicated_type: str | None = None) -> dict[str, Any]:
    return next(
        g
        for g in CITY.grids
        if g["kind"] == kind and (dedicated_type is None or g["dedicated_type"] == dedicated_type)
    )


def case(
    category: str,
    *,
    at: tuple[float, float] | None = None,
    when: datetime = WINTER,
    description: str = "问题",
    **kw,
) -> CaseFacts:
    lat, lon = at if at else (None, None)
    loc = kw.pop("location", None) or events.Location(lat=lat, lon=lon)
    return CaseFacts("c-1", category, description, loc, when, **kw)


def test_a_heating_outage_in_winter(ref: ReferenceData) -> None:
    grid = _grid("comprehensive")
    d = decide(case("heating.outage", at=democity.point_in(grid, 0.9, 0.9)), ref, open_cases={})
    ev = d.event
    assert isinstance(ev, events.CaseRouted)
    assert ev.grid_id == grid["grid_id"]
    assert ev.department == "heating"
    assert ev.priority is Priority.HIGH
    assert ev.rule_id == "heating-in-season"
    assert [s.role for s in ev.escalation_chain] == [
        "worker",
        "grid_leader",
        "community",
        "street_office",
        "district",
        "city",
    ]
    assert ev.deadlines.acknowledge_by == WINTER.replace(hour=9)  # 1 h from the catalogue
    # in summer the off-season rule applies
    summer = decide(
        case("heating.outage", at=democity.point_in(grid, 0.9, 0.9), when=SUMMER),
        ref,
        open_cases={},
    ).event
    assert isinstance(summer, events.CaseRouted)
    assert (summer.rule_id, summer.priority) == ("heating-off-season", Priority.LOW)


def test_dedicated_grid_and_its_rule(ref: ReferenceData) -> None:
    hospital = _grid("dedicated", "hospital")
    d = decide(case("sanitation.garbage", at=democity.point_in(hospital)), ref, open_cases={})
    assert isinstance(d.event, events.CaseRouted)
    assert d.event.grid_id == hospital["grid_id"]
    assert d.event.department == "health"


def test_a_dedicated_grid_with_nobody_on_duty_goes_to_the_grid_around_it(
    ref: ReferenceData,
) -> None:
    hospital = _grid("dedicated", "hospital")
    parent = ref.grids[hospital["grid_id"]].parent_grid
    assert parent is not None
    around = {w.worker_id for w in ref.workers_by_grid[parent] if w.on_duty}
    assert around
    at = democity.point_in(hospital)
    staffed = decide(case("sanitation.garbage", at=at), ref, open_cases={}).event
    assert isinstance(staffed, events.CaseRouted)
    assert staffed.worker_id not in around  # the hospital's own worker
    off = dataclasses.replace(
        ref,
        workers_by_grid={
            **ref.workers_by_grid,
            hospital["grid_id"]: tuple(
                dataclasses.replace(w, on_duty=False)
                for w in ref.workers_by_grid.get(hospital["grid_id"], ())
            ),
        },
    )
    d = decide(case("sanitation.garbage", at=at), off, open_cases={}).event
    assert isinstance(d, events.CaseRouted)
    assert d.grid_id == hospital["grid_id"]
    assert d.worker_id in around


def test_building_code_wins_over_coordinates(ref: ReferenceData) -> None:
    b = CITY.buildings[10]
    d = decide(
        case("water.outage", location=events.Location(building_code=b["code"])), ref, open_cases={}
    )
    assert isinstance(d.event, events.CaseRouted)
    assert d.event.grid_id == b["grid_id"]


def test_a_facility_s_number_locates_the_report(ref: ReferenceData) -> None:
    """The number on a street light or a heating substation, which a resident reads off its
    plate: the facility's grid, before a building code or a coordinate elsewhere."""
    light = next(f for f in CITY.facilities if f["kind"] == "street_light")
    station = next(f for f in CITY.facilities if f["kind"] == "heating_substation")
    far = democity.point_in(next(g for g in CITY.grids if g["grid_id"] != light["grid_id"]))
    for facility, category in ((light, "streetlight.out"), (station, "heating.outage")):
        loc = events.Location(lat=far[0], lon=far[1], facility_code=facility["code"])
        d = decide(case(category, location=loc), ref, open_cases={})
        assert isinstance(d.event, events.CaseRouted), d.event
        assert d.event.grid_id == facility["grid_id"]
        assert f"grid {facility['grid_id']}: facility {facility['code']}" in d.trail
    # a number the city does not have: the coordinate, if any; else triage, saying why
    unknown = events.Location(lat=far[0], lon=far[1], facility_code="SL-NOWHERE")
    located = decide(case("streetlight.out", location=unknown), ref, open_cases={})
    assert isinstance(located.event, events.CaseRouted)
    assert "facility SL-NOWHERE unknown; using the coordinate" in located.trail
    alone = decide(
        case("streetlight.out", location=events.Location(facility_code="SL-NOWHERE")),
        ref,
        open_cases={},
    )
    assert isinstance(alone.event, events.CaseUnroutable)
    assert alone.event.reason == "unknown facility SL-NOWHERE"


def test_least_loaded_on_duty_worker(ref: ReferenceData) -> None:
    grid_id, workers = next(
        (g, ws) for g, ws in ref.workers_by_grid.items() if len([w for w in ws if w.on_duty]) >= 2
    )
    on_duty = sorted(w.worker_id for w in workers if w.on_duty)
    grid = next(g for g in CITY.grids if g["grid_id"] == grid_id)
    busy = {on_duty[0]: 5}
    d = decide(case("roads.pothole", at=democity.point_in(grid, 0.9, 0.9)), ref, open_cases=busy)
    assert isinstance(d.event, events.CaseRouted)
    assert d.event.worker_id == on_duty[1]


def test_care_flags_and_emergency_raise_priority(ref: ReferenceData) -> None:
    grid = _grid("comprehensive")
    at = democity.point_in(grid, 0.9, 0.9)
    plain = decide(case("roads.pothole", at=at), ref, open_cases={}).event
    cared = decide(
        case("roads.pothole", at=at, care_groups=("very_old",)), ref, open_cases={}
    ).event
    assert isinstance(plain, events.CaseRouted)
    assert isinstance(cared, events.CaseRouted)
    assert (plain.priority, cared.priority) == (Priority.NORMAL, Priority.HIGH)
    district = ref.area_of(grid["grid_id"])[2].code
    wartime = dataclasses.replace(ref, emergency={district: 0.25})
    ev = decide(case("roads.pothole", at=at), wartime, open_cases={}).event
    assert isinstance(ev, events.CaseRouted)
    assert ev.priority is Priority.HIGH
    assert ev.deadlines.resolve_by - WINTER == (plain.deadlines.resolve_by - WINTER) * 0.25


def test_unroutable_cases_say_why(ref: ReferenceData) -> None:
    outside = decide(case("roads.pothole", at=(48.5, 125.0)), ref, open_cases={})
    assert isinstance(outside.event, events.CaseUnroutable)
    assert "outside every grid" in outside.event.reason
    address = decide(
        case("roads.pothole", location=events.Location(address="中华路12号")), ref, open_cases={}
    )
    assert isinstance(address.event, events.CaseUnroutable)
    assert "address only" in address.event.reason
    declined = decide(
        case(
            "roads.pothole",
            at=democity.point_in(_grid("comprehensive"), 0.9, 0.9),
            exclude_departments=frozenset({"roads"}),
        ),
        ref,
        open_cases={},
    )
    assert isinstance(declined.event, events.CaseUnroutable)


def test_manual_triage_overrides(ref: ReferenceData) -> None:
    grid = CITY.grids[20]
    d = decide(
        case(
            "roads.pothole",
            location=events.Location(address="某小区"),
            grid_id=grid["grid_id"],
            department="housing",
        ),
        ref,
        open_cases={},
    )
    assert isinstance(d.event, events.CaseRouted)
    assert (d.event.grid_id, d.event.department) == (grid["grid_id"], "housing")


def test_city_scale_matches_the_reference_figures() -> None:
    city = democity.generate(seed=1, scale="city")
    kinds = [g["kind"] for g in city.grids]
    assert kinds.count("comprehensive") == 17_242
    assert kinds.count("dedicated") == 3_188
    assert len(city.workers) == 21_237
    assert {d["code"] for d in city.districts} == {
        "longsha",
        "jianhua",
        "tiefeng",
        "angangxi",
        "fularji",
        "nianzishan",
        "meilisi",
    }


def test_small_city_topology_is_clean() -> None:
    import shapely

    from services.router import topology

    report = topology.check(
        [(g["grid_id"], g["kind"], shapely.box(*g["bbox"])) for g in CITY.grids]
    )
    assert report.ok, report.lines()
    broken = [(g["grid_id"], g["kind"], shapely.box(*g["bbox"])) for g in CITY.grids]
    mid_lat, mid_lon = (democity.SOUTH + democity.NORTH) / 2, (democity.WEST + democity.EAST) / 2
    i = min(
        range(len(broken)),
        key=lambda k: (
            broken[k][2].centroid.distance(shapely.Point(mid_lon, mid_lat))
            if broken[k][1] == "comprehensive"
            else 99
        ),
    )
    gid, kind, geom = broken[i]
    broken[i] = (gid, kind, shapely.affinity.scale(geom, 0.5, 0.5))  # opens a hole
    broken.append(("stray", "dedicated", shapely.box(130, 50, 130.1, 50.1)))
    bad = topology.check(broken)
    assert bad.gaps
    assert bad.outside == ["stray"]


@functools.cache
def _shared_ref() -> ReferenceData:
    return snapshot.from_city(CITY)


@given(
    grid_at=st.integers(0, len(CITY.grids) - 1),
    u=st.floats(0.05, 0.95),
    v=st.floats(0.05, 0.95),
    category=st.sampled_from(["heating.outage", "roads.pothole", "dispute.neighbour"]),
    care=st.booleans(),
    when=st.sampled_from([WINTER, SUMMER, LOCAL]),
    busy=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_decisions_are_valid_events(
    grid_at: int, u: float, v: float, category: str, care: bool, when: datetime, busy: bool
) -> None:
    """The decision builds its event without re-validation and renders its JSON from parts
    made once per snapshot (the hot path); validating the event must change nothing, and the
    JSON must be the model's own, whatever the place, category, care flags, season, time zone
    and staffing (a grid with nobody on duty has no worker step in its chain)."""
    ref = _shared_ref()
    at = democity.point_in(CITY.grids[grid_at], u, v)
    care_groups = ("elderly_alone",) if care else ()
    if busy:
        ref = dataclasses.replace(
            ref,
            workers_by_grid={
                g: tuple(dataclasses.replace(w, on_duty=False) for w in ws)
                for g, ws in ref.workers_by_grid.items()
            },
        )
    d = decide(case(category, at=at, when=when, care_groups=care_groups), ref, open_cases={})
    dumped = d.event.model_dump(mode="json")
    assert type(d.event).model_validate(dumped).model_dump(mode="json") == dumped
    assert isinstance(d.event, events.CaseRouted)  # every point is inside a grid
    assert d.payload_json == d.event.__pydantic_serializer__.to_json(d.event)
    if busy:
        assert d.event.worker_id is None
        assert d.event.escalation_chain[0].role == "grid_leader"


def _routed_in(ref: ReferenceData, on_duty: int) -> tuple[events.CaseRouted, list[str]]:
    """A case routed in a grid with exactly `on_duty` workers on duty, and their ids."""
    grid_id, workers = next(
        (g, ws)
        for g, ws in sorted(ref.workers_by_grid.items())
        if len([w for w in ws if w.on_duty]) == on_duty and ref.grids[g].kind == "comprehensive"
    )
    grid = next(g for g in CITY.grids if g["grid_id"] == grid_id)
    routed = decide(
        case("roads.pothole", at=democity.point_in(grid, 0.9, 0.9)), ref, open_cases={}
    ).event
    assert isinstance(routed, events.CaseRouted)
    assert routed.grid_id == grid_id
    return routed, sorted(w.worker_id for w in workers if w.on_duty)


def test_a_handover_changes_the_worker_and_nothing_else(ref: ReferenceData) -> None:
    routed, on_duty = _routed_in(ref, 2)
    away = routed.worker_id
    assert away is not None
    [other] = [w for w in on_duty if w != away]  # never the one going away, however idle
    handed = hand_over(routed, ref, away=away, open_cases={other: 7, away: 0})
    assert handed is not None
    ev = handed.event
    assert isinstance(ev, events.CaseRouted)
    assert (ev.worker_id, ev.handed_over_from) == (other, away)
    assert ev.escalation_chain[0].role == "worker"
    assert ev.escalation_chain[0] != routed.escalation_chain[0]
    assert ev.escalation_chain[1:] == routed.escalation_chain[1:]
    unchanged = {"worker_id", "escalation_chain", "handed_over_from"}
    assert ev.model_dump(exclude=unchanged) == routed.model_dump(exclude=unchanged)


def test_with_nobody_else_on_duty_the_grid_leader_takes_it(ref: ReferenceData) -> None:
    routed, [only] = _routed_in(ref, 1)
    handed = hand_over(routed, ref, away=only, open_cases={})
    assert handed is not None
    ev = handed.event
    assert isinstance(ev, events.CaseRouted)
    assert (ev.worker_id, ev.handed_over_from) == (None, only)
    assert ev.escalation_chain[0].role == "grid_leader"
    assert ev.escalation_chain[0].level == 0
    assert ev.deadlines == routed.deadlines


def test_only_a_case_still_waiting_for_its_worker_is_handed_over(ref: ReferenceData) -> None:
    grid = _grid("comprehensive")
    at = datetime.now(UTC)
    routed = decide(
        case("roads.pothole", at=democity.point_in(grid, 0.9, 0.9), when=at), ref, open_cases={}
    ).event
    assert isinstance(routed, events.CaseRouted)
    w = routed.worker_id
    waiting: dict[str, Any] = {
        "away": w,
        "worker_id": w,
        "open_": True,
        "acknowledged": False,
        "transferred": False,
        "now": at,
    }
    assert handover_refused(routed, **waiting) is None
    changes: list[tuple[dict[str, Any], str]] = [
        ({"worker_id": "w-else"}, "assigned to w-else now"),
        ({"open_": False}, "resolved or closed"),
        ({"acknowledged": True}, "acknowledged already"),
        ({"acknowledged": None}, "reopened"),
        ({"transferred": True}, "transferred"),
        ({"now": routed.deadlines.acknowledge_by}, "has passed"),
    ]
    for change, why in changes:
        refused = handover_refused(routed, **{**waiting, **change})
        assert refused is not None
        assert why in refused
    assert handover_refused(None, **waiting) == "not routed"
