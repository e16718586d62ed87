"""The router's PostgreSQL side: reference data in and out, cases and decisions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from services.router import refimport
from services.router.rules import Rule
from shared import events
from shared.catalogue import Catalogue, CatalogueRefused, Category, Taken, load_file

if TYPE_CHECKING:  # the geometry stack (shapely, numpy) loads where geometry is handled: every
    # `griddispatch` command imports this module
    from services.router.democity import City
    from services.router.refdata import ReferenceData

CHANNEL = "router_refdata"
REF_TABLES = (
    "districts",
    "street_offices",
    "communities",
    "grids",
    "buildings",
    "facilities",
    "departments",
    "workers",
)


async def bump_version(conn: asyncpg.Connection) -> int:
    version: int = await conn.fetchval(
        "UPDATE router.refdata_version SET version = version + 1 RETURNING version"
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, str(version))
    return version


async def current_version(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT version FROM router.refdata_version"))


def _records(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> list[tuple[Any, ...]]:
    return [tuple(r.get(c) for c in columns) for r in rows]


async def load_city(
    conn: asyncpg.Connection, city: City, *, categories: Sequence[Category] | None = None
) -> int:
    """Replace all reference data with a generated city, atomically. Returns the new version."""
    import shapely

    async with conn.transaction():
        await conn.execute(
            "TRUNCATE " + ", ".join(f"router.{t}" for t in REF_TABLES) + ", router.rules"
        )
        tables: list[tuple[str, list[dict[str, Any]], tuple[str, ...]]] = [
            ("districts", city.districts, ("code", "name", "contact")),
            ("street_offices", city.street_offices, ("code", "district", "name", "contact")),
            ("communities", city.communities, ("code", "street_office", "name", "contact")),
            ("buildings", city.buildings, ("code", "grid_id")),
            ("facilities", city.facilities, ("code", "kind", "grid_id", "name")),
            ("departments", city.departments, ("code", "name", "contact")),
            (
                "workers",
                city.workers,
                ("worker_id", "grid_id", "name", "on_duty", "capacity", "contact"),
            ),
        ]
        for table, rows, columns in tables:
            await conn.copy_records_to_table(
                table, schema_name="router", records=_records(rows, columns), columns=columns
            )
        grid_cols = (
            "grid_id",
            "kind",
            "dedicated_type",
            "community",
            "leader_name",
            "leader_contact",
            "parent_grid",
            "geometry",
        )
        await conn.copy_records_to_table(
            "grids",
            schema_name="router",
            columns=grid_cols,
            records=[
                (*[g.get(c) for c in grid_cols[:-1]], shapely.to_wkb(shapely.box(*g["bbox"])))
                for g in city.grids
            ],
        )
        await replace_rules(conn, city.rules, bump=False)
        await import_categories(conn, categories or load_file().categories, bump=False)
        return await bump_version(conn)


async def replace_rules(
    conn: asyncpg.Connection, rules: Sequence[Rule], *, bump: bool = True
) -> int | None:
    async with conn.transaction():
        await conn.execute("DELETE FROM router.rules")
        await conn.executemany(
            "INSERT INTO router.rules (position, rule) VALUES ($1, $2::text::jsonb)",
            [
                (i, r.model_dump_json(by_alias=True, exclude_defaults=True))
                for i, r in enumerate(rules)
            ],
        )
        return await bump_version(conn) if bump else None


async def import_categories(
    conn: asyncpg.Connection, categories: Sequence[Category], *, bump: bool = True
) -> int | None:
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO router.categories (code, definition) VALUES ($1, $2::text::jsonb) "
            "ON CONFLICT (code) DO UPDATE SET definition = EXCLUDED.definition, retired_at = NULL",
            [(c.code, c.model_dump_json()) for c in categories],
        )
        return await bump_version(conn) if bump else None


class ImportRefused(ValueError):
    """A reference-data file with problems (each names its line and column): nothing changed."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = list(problems)


async def catalogue_problems(conn: asyncpg.Connection, catalogue: Catalogue) -> list[str]:
    """What keeps the routers from taking a catalogue: a category whose department the
    reference data does not have (its reports would all wait in triage)."""
    known = {r["code"] for r in await conn.fetch("SELECT code FROM router.departments")}
    return [
        f"category {c.code}: no department {c.department} "
        "(griddispatch refdata import departments …)"
        for c in catalogue.categories
        if c.department not in known
    ]


async def take_catalogue(
    conn: asyncpg.Connection, catalogue: Catalogue, *, retire_others: bool
) -> Taken:
    """`griddispatch catalogue import`: the categories replace those with the same code (a
    retired one comes back), and the routers reload. With `retire_others`, the categories the
    file does not name are retired: still routed (cases in them may come back for rerouting),
    but no longer holding on to their departments. Raises CatalogueRefused as
    `catalogue_problems` says, checked under the reference data's lock."""
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM router.refdata_version FOR UPDATE")  # as replace_table
        problems = await catalogue_problems(conn, catalogue)
        if problems:
            raise CatalogueRefused(problems)
        await import_categories(conn, catalogue.categories, bump=False)
        retired: list[str] = []
        if retire_others:
            retired = [
                r["code"]
                for r in await conn.fetch(
                    "UPDATE router.categories SET retired_at = now() "
                    "WHERE retired_at IS NULL AND NOT code = ANY($1::text[]) RETURNING code",
                    catalogue.codes(),
                )
            ]
        await bump_version(conn)
    return Taken(len(catalogue.categories), sorted(retired))


async def replace_grids(
    conn: asyncpg.Connection, grids: Sequence[tuple[dict[str, Any], bytes]]
) -> int:
    """Replace the grid layer (from a GeoJSON import); other reference data stays. Raises
    ImportRefused for grids of communities the city does not have (the routers could not place
    them on the ladder)."""
    cols = (
        "grid_id",
        "kind",
        "dedicated_type",
        "community",
        "leader_name",
        "leader_contact",
        "parent_grid",
        "geometry",
    )
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM router.refdata_version FOR UPDATE")  # as replace_table
        communities = {r["code"] for r in await conn.fetch("SELECT code FROM router.communities")}
        strays = [
            f"grid {g['grid_id']}: no community {g['community']} "
            "(griddispatch refdata import communities …)"
            for g, _ in grids
            if g["community"] not in communities
        ]
        if strays:
            raise ImportRefused(strays)
        await conn.execute("DELETE FROM router.grids")
        await conn.copy_records_to_table(
            "grids",
            schema_name="router",
            columns=cols,
            records=[(*(g.get(c) for c in cols[:-1]), wkb) for g, wkb in grids],
        )
        return await bump_version(conn)


async def known_now(conn: asyncpg.Connection) -> refimport.Known:
    """The codes each kind of reference data holds now, and what names them."""
    keys = {
        kind: {r["k"] for r in await conn.fetch(f"SELECT {t.key} AS k FROM router.{t.table}")}
        for kind, t in refimport.TABLES.items()
    }
    keys["grids"] = {r["k"] for r in await conn.fetch("SELECT grid_id AS k FROM router.grids")}

    async def named(sql: str, label: str) -> list[tuple[str, str]]:
        return [(f"{label} {r['who']}", r["code"]) for r in await conn.fetch(sql)]

    rules = await load_rules(conn)
    categories = await conn.fetch(
        "SELECT code, definition->>'department' AS department FROM router.categories "
        "WHERE retired_at IS NULL"  # a retired category's cases may go to triage instead
    )
    referrers = {
        "districts": await named(
            "SELECT code AS who, district AS code FROM router.street_offices", "street office"
        ),
        "street-offices": await named(
            "SELECT code AS who, street_office AS code FROM router.communities", "community"
        ),
        "communities": await named(
            "SELECT grid_id AS who, community AS code FROM router.grids", "grid"
        ),
        "departments": [
            *(
                (f"routing rule {i + 1}", r.route.department)
                for i, r in enumerate(rules)
                if r.route.department
            ),
            *((f"category {c['code']}", c["department"]) for c in categories),
        ],
    }
    return refimport.Known(keys, referrers)


async def replace_table(
    conn: asyncpg.Connection, table: refimport.Table, rows: Sequence[Mapping[Any, Any]]
) -> int:
    """Replace one table of reference data with checked rows, atomically; the routers reload
    within seconds. Returns the new version; raises ImportRefused (nothing changed)."""
    async with conn.transaction():
        # one change of reference data at a time: the checks hold until the commit
        await conn.execute("SELECT 1 FROM router.refdata_version FOR UPDATE")
        records, problems = refimport.check(table, rows, await known_now(conn))
        if problems:
            raise ImportRefused(problems)
        await conn.execute(f"DELETE FROM router.{table.table}")
        await conn.copy_records_to_table(
            table.table, schema_name="router", columns=table.column_names, records=records
        )
        return await bump_version(conn)


async def set_on_duty(conn: asyncpg.Connection, worker_ids: Sequence[str], on: bool) -> int:
    """Put workers on or off duty (the day's roster); returns the new version. Raises
    ImportRefused for workers that do not exist."""
    async with conn.transaction():
        found = await conn.fetch(
            "UPDATE router.workers SET on_duty = $2 WHERE worker_id = ANY($1) RETURNING worker_id",
            list(worker_ids),
            on,
        )
        missing = sorted(set(worker_ids) - {r["worker_id"] for r in found})
        if missing:
            raise ImportRefused([f"no worker {w}" for w in missing])
        return await bump_version(conn)


async def load_rules(conn: asyncpg.Connection) -> list[Rule]:
    rows = await conn.fetch("SELECT rule::text AS r FROM router.rules ORDER BY position")
    return [Rule.model_validate_json(r["r"]) for r in rows]


async def load_reference(conn: asyncpg.Connection, *, snap_m: float = 100.0) -> ReferenceData:
    """One consistent snapshot (a repeatable-read transaction), built off the event loop."""
    import shapely

    from services.router.snapshot import build_reference

    async with conn.transaction(isolation="repeatable_read", readonly=True):
        version = await current_version(conn)
        fetched = {
            t: [dict(r) for r in await conn.fetch(f"SELECT * FROM router.{t}")]
            for t in (
                "districts",
                "street_offices",
                "communities",
                "buildings",
                "facilities",
                "departments",
                "workers",
            )
        }
        grid_rows = [
            dict(r) for r in await conn.fetch("SELECT * FROM router.grids ORDER BY grid_id")
        ]
        categories = [
            Category.model_validate_json(r["d"])
            for r in await conn.fetch("SELECT definition::text AS d FROM router.categories")
        ]
        rules = await load_rules(conn)
        emergency = {
            r["area"]: float(r["factor"])
            for r in await conn.fetch("SELECT area, factor FROM router.emergency_areas")
        }

    def build() -> ReferenceData:
        geoms = shapely.from_wkb([g.pop("geometry") for g in grid_rows])
        return build_reference(
            version=version,
            districts=fetched["districts"],
            street_offices=fetched["street_offices"],
            communities=fetched["communities"],
            grids=list(zip(grid_rows, geoms, strict=True)),
            buildings=fetched["buildings"],
            departments=fetched["departments"],
            workers=fetched["workers"],
            categories=categories,
            rules=rules,
            emergency=emergency,
            snap_m=snap_m,
            facilities=fetched["facilities"],
        )

    return await asyncio.to_thread(build)


async def open_counts(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT worker_id, count(*) AS n FROM router.cases WHERE open AND worker_id IS NOT NULL "
        "GROUP BY worker_id"
    )
    return {r["worker_id"]: int(r["n"]) for r in rows}


async def case_facts(
    conn: asyncpg.Connection, case_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT case_id, facts::text AS f FROM router.cases WHERE case_id = ANY($1)", list(case_ids)
    )
    return {r["case_id"]: orjson.loads(r["f"]) for r in rows}


@dataclass(frozen=True)
class HandoverState:
    """What a handover needs to know of a case: whom it is with, whether that worker has
    acknowledged it, whether it was ever transferred, and the routing it would keep."""

    worker_id: str | None
    open: bool
    acknowledged: bool | None
    transferred: bool
    routed: events.CaseRouted | None  # its latest routing (None: unroutable, or unknown)


async def handover_states(
    conn: asyncpg.Connection, case_ids: Sequence[str]
) -> dict[str, HandoverState]:
    rows = await conn.fetch(
        """SELECT c.case_id, c.worker_id, c.open, c.acknowledged,
                  coalesce(jsonb_array_length(c.facts->'excluded'), 0) > 0 AS transferred,
                  (SELECT d.envelope FROM router.decisions d WHERE d.case_id = c.case_id
                   ORDER BY d.decided_at DESC LIMIT 1) AS envelope
           FROM router.cases c WHERE c.case_id = ANY($1)""",
        list(case_ids),
    )
    states = {}
    for r in rows:
        routed = None
        if r["envelope"] is not None:
            _, event = events.decode(r["envelope"])
            routed = event if isinstance(event, events.CaseRouted) else None
        states[r["case_id"]] = HandoverState(
            r["worker_id"], r["open"], r["acknowledged"], r["transferred"], routed
        )
    return states


async def recorded_decisions(
    conn: asyncpg.Connection, source_event_ids: Sequence[Any]
) -> dict[Any, bytes]:
    """The decisions already recorded for these inputs (source event id → envelope)."""
    rows = await conn.fetch(
        "SELECT source_event_id, envelope FROM router.decisions "
        "WHERE source_event_id = ANY($1::uuid[])",
        list(source_event_ids),
    )
    return {r["source_event_id"]: r["envelope"] for r in rows}


async def awaiting_handover(
    conn: asyncpg.Connection, worker_ids: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """(case, worker) for the open cases that workers not on duty now (off duty, or gone from
    the roster) have not acknowledged: what goes to another worker (the router checks each
    again). `worker_ids`: only theirs."""
    rows = await conn.fetch(
        "SELECT c.case_id, c.worker_id FROM router.cases c "
        "WHERE c.open AND c.acknowledged IS FALSE AND c.worker_id IS NOT NULL "
        "AND ($1::text[] IS NULL OR c.worker_id = ANY($1)) AND NOT EXISTS "
        "(SELECT 1 FROM router.workers w WHERE w.worker_id = c.worker_id AND w.on_duty) "
        "ORDER BY c.case_id",
        list(worker_ids) if worker_ids is not None else None,
    )
    return [(r["case_id"], r["worker_id"]) for r in rows]


async def triage_list(conn: asyncpg.Connection, limit: int = 100) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT case_id, facts->>'category' AS category, "
            "facts->>'unroutable_reason' AS reason, updated_at FROM router.cases "
            "WHERE status = 'unroutable' ORDER BY updated_at LIMIT $1",
            limit,
        )
    )
