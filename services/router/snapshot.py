"""Building a `ReferenceData` snapshot from plain rows (from PostgreSQL or a generated city)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import shapely

from services.router.democity import City
from services.router.geo import Grid, GridIndex, GridKind
from services.router.refdata import Department, GridInfo, ReferenceData, Unit, Worker
from services.router.rules import Rule, RuleTable
from shared.catalogue import Category, load_file

Row = Mapping[str, Any]
CITY = Unit(code="city", name="齐齐哈尔市城市运行管理中心", contact="12345")


def build_reference(
    *,
    version: int,
    districts: Iterable[Row],
    street_offices: Iterable[Row],
    communities: Iterable[Row],
    grids: Iterable[tuple[Row, shapely.Geometry]],
    buildings: Iterable[Row],
    departments: Iterable[Row],
    workers: Iterable[Row],
    categories: Iterable[Category],
    rules: Iterable[Rule],
    emergency: Mapping[str, float] | None = None,
    snap_m: float = 100.0,
    facilities: Iterable[Row] = (),
) -> ReferenceData:
    grid_rows = list(grids)
    grid_ids = {str(r["grid_id"]) for r, _ in grid_rows}
    workers_by_grid: dict[str, list[Worker]] = {}
    for w in workers:
        workers_by_grid.setdefault(str(w["grid_id"]), []).append(
            Worker(
                worker_id=str(w["worker_id"]),
                grid_id=str(w["grid_id"]),
                name=str(w["name"]),
                on_duty=bool(w["on_duty"]),
                capacity=int(w["capacity"]),
                contact=w.get("contact"),
            )
        )
    return ReferenceData(
        version=version,
        index=GridIndex.build(
            [
                Grid(str(r["grid_id"]), GridKind(r["kind"]), geom, r.get("dedicated_type"))
                for r, geom in grid_rows
            ],
            snap_m=snap_m,
        ),
        grids={
            str(r["grid_id"]): GridInfo(
                grid_id=str(r["grid_id"]),
                kind=str(r["kind"]),
                dedicated_type=r.get("dedicated_type"),
                community=str(r["community"]),
                leader_name=str(r["leader_name"]),
                leader_contact=r.get("leader_contact"),
                parent_grid=r.get("parent_grid"),
            )
            for r, _ in grid_rows
        },
        communities={
            str(r["code"]): Unit(
                str(r["code"]), str(r["name"]), r.get("contact"), r["street_office"]
            )
            for r in communities
        },
        street_offices={
            str(r["code"]): Unit(str(r["code"]), str(r["name"]), r.get("contact"), r["district"])
            for r in street_offices
        },
        districts={
            str(r["code"]): Unit(str(r["code"]), str(r["name"]), r.get("contact"))
            for r in districts
        },
        city=CITY,
        # a building whose grid is gone (a grid layer re-imported since) locates nothing: the
        # report's coordinates, if any, are used instead
        buildings={
            str(b["code"]): str(b["grid_id"]) for b in buildings if str(b["grid_id"]) in grid_ids
        },
        departments={
            str(d["code"]): Department(str(d["code"]), str(d["name"]), d.get("contact"))
            for d in departments
        },
        workers_by_grid={k: tuple(v) for k, v in workers_by_grid.items()},
        categories={c.code: c for c in categories},
        rules=RuleTable(tuple(rules)),
        emergency=dict(emergency or {}),
        # like buildings: one whose grid is gone locates nothing
        facilities={
            str(f["code"]): str(f["grid_id"]) for f in facilities if str(f["grid_id"]) in grid_ids
        },
    ).prepare()


def from_city(city: City, *, version: int = 1, snap_m: float = 100.0) -> ReferenceData:
    """A snapshot straight from a generated city (tests and benchmarks, no database)."""
    return build_reference(
        version=version,
        districts=city.districts,
        street_offices=city.street_offices,
        communities=city.communities,
        grids=[(g, shapely.box(*g["bbox"])) for g in city.grids],
        buildings=city.buildings,
        departments=city.departments,
        workers=city.workers,
        categories=load_file().categories,
        rules=city.rules,
        snap_m=snap_m,
        facilities=city.facilities,
    )
