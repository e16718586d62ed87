"""Checking a reference-data file as a whole, without any server: each row, keys used once,
what rows name exists, and nothing left behind names what the file drops."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from services.router import democity, snapshot
from services.router.decide import CaseFacts, decide
from services.router.refimport import TABLES, Known, as_rows, check
from shared import events

KNOWN = Known(
    keys={
        "districts": {"longsha", "tiefeng"},
        "street-offices": {"longsha-s01"},
        "grids": {"longsha-g00001", "longsha-g00002"},
        "departments": {"heating", "water"},
    },
    referrers={
        "districts": [("street office longsha-s01", "longsha")],
        "departments": [("routing rule 3", "heating"), ("category water.outage", "water")],
    },
)
WORKERS = TABLES["workers"]


def test_a_good_file_gives_records_with_defaults() -> None:
    rows = [
        {"worker_id": "w-1", "grid_id": "longsha-g00001", "name": "张网格员", "on_duty": "yes"},
        {
            "worker_id": "w-2",
            "grid_id": "longsha-g00002",
            "name": "李网格员",
            "on_duty": "0",
            "capacity": "15",
            "contact": "13900000001",
        },
    ]
    records, problems = check(WORKERS, rows, KNOWN)
    assert problems == []
    assert records == [
        ("w-1", "longsha-g00001", "张网格员", True, 20, None),
        ("w-2", "longsha-g00002", "李网格员", False, 15, "13900000001"),
    ]
    # the export writes what the import reads
    exported = as_rows(WORKERS, [dict(zip(WORKERS.column_names, r, strict=True)) for r in records])
    assert check(WORKERS, exported, KNOWN) == (records, [])


def test_every_problem_names_its_line_and_column() -> None:
    rows: list[dict[str | None, object]] = [
        {"worker_id": "w-1", "grid_id": "longsha-g00001", "name": "张", "on_duty": "maybe"},
        {"worker_id": "w-1", "grid_id": "nowhere", "name": "", "capacity": "-3"},
        {"worker_id": "w 3", "grid_id": "longsha-g00001", "name": "王", "capacity": "lots"},
        {"worker_id": "w-4", "grid_id": "longsha-g00001", "name": "赵", "shift": "night"},
        {"worker_id": "w-5", "grid_id": "longsha-g00001", "name": "钱", None: ["extra"]},
    ]
    _, problems = check(WORKERS, rows, KNOWN)
    assert problems == [
        "line 2, on_duty: 'maybe' is not true or false",
        "line 3, name: missing",
        "line 3, capacity: must not be negative",
        "line 3, worker_id: w-1 is on line 2 too",
        "line 3, grid_id: no grid nowhere",
        "line 4, worker_id: 'w 3' is not a code (^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$)",
        "line 4, capacity: 'lots' is not a whole number",
        "line 5: unknown column(s) shift",
        "line 6: more values than the header has columns",
    ]


def test_what_stays_must_not_name_what_the_file_drops() -> None:
    only_tiefeng = [{"code": "tiefeng", "name": "铁锋区"}]
    _, problems = check(TABLES["districts"], only_tiefeng, KNOWN)
    assert problems == ["street office longsha-s01 names district longsha, which the file drops"]
    only_heating = [{"code": "heating", "name": "市供热公司"}]
    _, problems = check(TABLES["departments"], only_heating, KNOWN)
    assert problems == ["category water.outage names department water, which the file drops"]
    # a department's code names its feed topic: lower case only
    _, problems = check(TABLES["departments"], [{"code": "Heating", "name": "x"}], KNOWN)
    assert problems[0].startswith("line 2, code: 'Heating' is not a code")


def test_an_empty_file_would_empty_the_table_and_is_refused() -> None:
    assert check(TABLES["buildings"], [], KNOWN) == (
        [],
        ["no rows: an import replaces the whole table, and would empty it"],
    )


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_each_table_names_its_key_first(kind: str) -> None:
    table = TABLES[kind]
    assert table.columns[0].required
    assert set(table.parents) <= set(table.column_names)


def test_a_building_whose_grid_is_gone_locates_nothing() -> None:
    """Grids re-imported without a building's grid: the snapshot leaves the building out, so
    a report naming it is located by its coordinates (or, without any, goes to triage)."""
    city = democity.generate(seed=5, scale="small")
    orphan = {"code": "B-ORPHAN", "grid_id": "no-such-grid"}
    ref = snapshot.from_city(dataclasses.replace(city, buildings=[*city.buildings, orphan]))
    assert "B-ORPHAN" not in ref.buildings
    grid = next(g for g in city.grids if g["kind"] == "comprehensive")
    lat, lon = democity.point_in(grid, 0.9, 0.9)  # away from the dedicated grid inside

    def facts(**location: object) -> CaseFacts:
        return CaseFacts(
            case_id="c",
            category="heating.outage",
            description="暖气不热",
            location=events.Location.model_validate({"building_code": "B-ORPHAN", **location}),
            reported_at=datetime.now(UTC),
        )

    located = decide(facts(lat=lat, lon=lon), ref, open_cases={}).event
    assert isinstance(located, events.CaseRouted)
    assert located.grid_id == grid["grid_id"]
    lost = decide(facts(), ref, open_cases={}).event
    assert isinstance(lost, events.CaseUnroutable)
    assert lost.reason == "unknown building B-ORPHAN"
