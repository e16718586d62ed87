"""The router's command groups: `demo`, `grids`, `rules`, `route`, `triage`."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import track

# geometry (shapely, numpy; democity and topology use them) is imported by the commands that
# handle it: every `griddispatch` command loads this module
from services.router import refimport, store
from services.router.rules import Rule
from services.router.settings import MIGRATIONS
from shared import events
from shared.db import run_in_schema
from shared.settings import get_settings

console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

demo_app = typer.Typer(help="Generated demo data.", no_args_is_help=True)
grids_app = typer.Typer(
    help="The grid map (GeoJSON in and out, topology check).", no_args_is_help=True
)
rules_app = typer.Typer(help="The routing rule table (YAML in and out).", no_args_is_help=True)
route_app = typer.Typer(help="Ask the router.", no_args_is_help=True)
triage_app = typer.Typer(help="Cases the router could not place.", no_args_is_help=True)
refdata_app = typer.Typer(
    help="The city's areas, buildings, departments and grid workers (CSV in and out; grids "
    "and rules have their own commands).",
    no_args_is_help=True,
)

GRID_FIELDS = (
    "grid_id",
    "kind",
    "dedicated_type",
    "community",
    "leader_name",
    "leader_contact",
    "parent_grid",
)


def _db(fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    return run_in_schema("router", MIGRATIONS, fn)


@demo_app.command("city")
def demo_city(
    seed: int = typer.Option(7, help="same seed, same city"),
    scale: str = typer.Option("small", help="small (207 grids) or city (20,430 grids)"),
    if_empty: bool = typer.Option(False, "--if-empty", help="only when no grids are loaded"),
) -> None:
    """Replace the reference data with a generated city modelled on Qiqihar."""
    from services.router import democity

    if scale not in ("small", "city"):
        raise typer.BadParameter("scale is small or city")
    if if_empty:

        async def count(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM router.grids"))

        existing = _db(count)
        if existing:
            console.print(f"reference data present ({existing:,} grids): keeping it")
            return
    with console.status(f"generating a {scale} city …"):
        city = democity.generate(seed=seed, scale=scale)  # type: ignore[arg-type]
    version = _db(lambda c: store.load_city(c, city))
    dedicated = sum(g["kind"] == "dedicated" for g in city.grids)
    console.print(
        f"[green]✓[/green] loaded {len(city.grids):,} grids ({dedicated:,} dedicated), "
        f"{len(city.workers):,} workers, {len(city.buildings):,} buildings, "
        f"{len(city.departments)} departments, {len(city.rules)} rules — version {version}"
    )


def _feature_problem(i: int, feature: Any) -> tuple[dict[str, Any], bytes] | str:
    import shapely

    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return f"feature {i}: not a GeoJSON Feature"
    props = feature.get("properties") or {}
    gid = props.get("grid_id")
    label = f"feature {i} ({gid})" if gid else f"feature {i}"
    for key in ("grid_id", "kind", "community", "leader_name"):
        if not props.get(key):
            return f"{label}: property {key!r} is missing"
    if props["kind"] not in ("comprehensive", "dedicated"):
        return f"{label}: kind must be comprehensive or dedicated, not {props['kind']!r}"
    if props["kind"] == "dedicated" and not props.get("dedicated_type"):
        return f"{label}: a dedicated grid needs dedicated_type"
    try:
        geom = shapely.from_geojson(json.dumps(feature.get("geometry")))
    except Exception as exc:
        return f"{label}: geometry unreadable: {exc}"
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        return f"{label}: geometry must be a Polygon or MultiPolygon, not {geom.geom_type}"
    if not shapely.is_valid(geom):
        return f"{label}: invalid geometry: {shapely.is_valid_reason(geom)}"
    x0, y0, x1, y1 = geom.bounds
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        return f"{label}: coordinates are not WGS84 longitude/latitude"
    return {k: props.get(k) for k in GRID_FIELDS}, shapely.to_wkb(geom)


@grids_app.command("import")
def grids_import(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Replace the grid layer with a GeoJSON FeatureCollection (properties: grid_id, kind,
    dedicated_type, community, leader_name, leader_contact, parent_grid)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        console.print(f"[red]{path}: not JSON: {exc}[/red]")
        raise typer.Exit(2) from exc
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        console.print(f"[red]{path}: not a GeoJSON FeatureCollection[/red]")
        raise typer.Exit(2)
    rows, problems, seen = [], [], set()
    for i, f in track(list(enumerate(features)), description="checking grids", console=console):
        result = _feature_problem(i, f)
        if isinstance(result, str):
            problems.append(result)
        elif result[0]["grid_id"] in seen:
            problems.append(f"feature {i} ({result[0]['grid_id']}): grid_id used twice")
        else:
            seen.add(result[0]["grid_id"])
            rows.append(result)
    if problems:
        _refuse(problems)
    try:
        version = _db(lambda c: store.replace_grids(c, rows))
    except store.ImportRefused as exc:
        _refuse(exc.problems)
    console.print(f"[green]✓[/green] imported {len(rows):,} grids — version {version}")


def _refuse(problems: Sequence[str]) -> NoReturn:
    for problem in problems[:50]:
        console.print(f"[red]✗[/red] {problem}")
    console.print(f"[red]{len(problems)} problem(s): nothing imported[/red]")
    raise typer.Exit(2)


@grids_app.command("export")
def grids_export(path: Path) -> None:
    """Write the grid layer as a GeoJSON FeatureCollection."""
    import shapely

    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(await conn.fetch("SELECT * FROM router.grids ORDER BY grid_id"))

    rows = _db(fetch)
    features = []
    for r in track(rows, description="exporting grids", console=console):
        geom = shapely.from_wkb(r["geometry"])
        features.append(
            {
                "type": "Feature",
                "properties": {k: r[k] for k in GRID_FIELDS},
                "geometry": json.loads(shapely.to_geojson(geom)),
            }
        )
    path.write_text(
        json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False), "utf-8"
    )
    console.print(f"[green]✓[/green] wrote {len(features):,} grids to {path}")


@grids_app.command("check")
def grids_check() -> None:
    """Topology report: overlaps and gaps among comprehensive grids, and dedicated grids that
    fall outside every comprehensive grid. Exits 1 when anything is wrong."""
    import shapely

    from services.router import topology

    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(await conn.fetch("SELECT grid_id, kind, geometry FROM router.grids"))

    rows = _db(fetch)
    with console.status(f"checking {len(rows):,} grids …"):
        report = topology.check(
            [(r["grid_id"], r["kind"], shapely.from_wkb(r["geometry"])) for r in rows]
        )
    for line in report.lines():
        console.print(line)
    if not report.ok:
        raise typer.Exit(1)


@rules_app.command("export")
def rules_export(path: Path | None = typer.Argument(None)) -> None:
    """Print (or write) the rule table as YAML."""
    rules = _db(store.load_rules)
    text = yaml.safe_dump(
        {"rules": [r.model_dump(mode="json", by_alias=True, exclude_defaults=True) for r in rules]},
        allow_unicode=True,
        sort_keys=False,
    )
    if path is None:
        print(text, end="")
    else:
        path.write_text(text, "utf-8")
        console.print(f"[green]✓[/green] wrote {len(rules)} rules to {path}")


@rules_app.command("import")
def rules_import(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Replace the rule table; routers pick it up within seconds, without a restart."""
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
        raw = doc["rules"] if isinstance(doc, dict) else None
        if not isinstance(raw, list):
            raise ValueError("the file needs a top-level `rules:` list")
        rules = []
        for i, r in enumerate(raw):
            try:
                rules.append(Rule.model_validate(r))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                rid = r.get("id") if isinstance(r, dict) else None
                raise ValueError(f"rule {i} ({rid}): {where}: {first['msg']}") from exc
        ids = [r.id for r in rules]
        if len(set(ids)) != len(ids):
            raise ValueError("two rules share an id")
    except (OSError, ValueError, yaml.YAMLError) as exc:
        console.print(f"[red]{path}: {exc}[/red]")
        raise typer.Exit(2) from exc
    version = _db(lambda c: store.replace_rules(c, rules))
    console.print(f"[green]✓[/green] imported {len(rules)} rules — version {version}")


def _table(kind: str) -> refimport.Table:
    table = refimport.TABLES.get(kind)
    if table is None:
        raise typer.BadParameter(f"one of: {', '.join(refimport.TABLES)}", param_hint="KIND")
    return table


@refdata_app.command("import")
def refdata_import(
    kind: str = typer.Argument(..., help=", ".join(refimport.TABLES)),
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV with a header row"),
    keep_cases: bool = typer.Option(
        False, help="workers: leave the unacknowledged cases of those now off duty with them"
    ),
) -> None:
    """Replace one kind of reference data with a CSV file (UTF-8, a header row naming the
    columns; `refdata export` writes one to start from). The file is checked as a whole and
    changes nothing if anything is wrong; routers pick it up within seconds. A roster
    (`workers`) hands over the unacknowledged cases of workers it leaves off duty or out, as
    `refdata duty … --off` does, unless --keep-cases."""
    table = _table(kind)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:  # Excel writes a BOM
            reader = csv.DictReader(f)
            missing = [
                c.name
                for c in table.columns
                if c.required and c.name not in (reader.fieldnames or [])
            ]
            if missing:
                raise ValueError(f"the header lacks {', '.join(missing)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        console.print(f"[red]{path}: {exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        version = _db(lambda c: store.replace_table(c, table, rows))
    except store.ImportRefused as exc:
        _refuse(exc.problems)
    console.print(f"[green]✓[/green] imported {len(rows):,} {kind} — version {version}")
    if kind == "workers" and not keep_cases:
        # the roster's absentees hand over what they have not acknowledged, as `duty --off`
        waiting = _db(store.awaiting_handover)
        _request_handovers(waiting)
        if waiting:
            console.print(
                f"[green]✓[/green] {len(waiting)} unacknowledged case(s) of workers now off duty "
                "or gone to hand over"
            )


@refdata_app.command("export")
def refdata_export(
    kind: str = typer.Argument(..., help=", ".join(refimport.TABLES)),
    path: Path | None = typer.Argument(None, help="default: standard output"),
) -> None:
    """Write one kind of reference data as CSV, in the format `refdata import` reads."""
    table = _table(kind)

    async def fetch(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return list(await conn.fetch(f"SELECT * FROM router.{table.table} ORDER BY {table.key}"))

    rows = refimport.as_rows(table, [dict(r) for r in _db(fetch)])
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=table.column_names, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if path is None:
        sys.stdout.write(out.getvalue())
    else:
        path.write_text(out.getvalue(), "utf-8")
        console.print(f"[green]✓[/green] wrote {len(rows):,} {kind} to {path}")


@refdata_app.command("duty")
def refdata_duty(
    worker_ids: list[str] = typer.Argument(..., help="worker ids"),
    on: bool = typer.Option(..., "--on/--off", help="on duty, or off (leave, sick, shift end)"),
    keep_cases: bool = typer.Option(
        False, help="with --off: leave their unacknowledged cases with them"
    ),
) -> None:
    """Put grid workers on or off duty; new cases of their grids go to whoever is on duty
    (else the grid leader), within seconds. Going off duty also hands over the open cases
    they have not acknowledged yet, each to another worker of its grid (the router's choice,
    as for a new case; deadlines unchanged), unless --keep-cases."""
    try:
        version = _db(lambda c: store.set_on_duty(c, worker_ids, on))
    except store.ImportRefused as exc:
        for problem in exc.problems:
            console.print(f"[red]✗[/red] {problem}")
        raise typer.Exit(2) from None
    state = "on" if on else "off"
    console.print(f"[green]✓[/green] {len(worker_ids)} worker(s) {state} duty — version {version}")
    if not on and not keep_cases:
        waiting = _db(lambda c: store.awaiting_handover(c, worker_ids))
        _request_handovers(waiting)
        console.print(
            f"[green]✓[/green] {len(waiting)} unacknowledged case(s) to hand over"
            + (" (the router checks each again and moves those still waiting)" if waiting else "")
        )


def _request_handovers(cases: Sequence[tuple[str, str]]) -> None:
    """One `RerouteRequested` with `hand_over_from` per (case, worker), for the routers: the
    request is durable in Kafka once this returns, and a repeat is harmless (a case already
    moved stays where it is)."""
    _request_reroutes(
        [
            (
                case_id,
                events.RerouteRequested(
                    reason=f"{worker} went off duty", requested_by="operator", hand_over_from=worker
                ),
            )
            for case_id, worker in cases
        ]
    )


def _request_reroutes(requests: Sequence[tuple[str, events.RerouteRequested]]) -> list[str]:
    """Publish (case id, `RerouteRequested`) pairs on `cases.intake` for the routers; returns
    their event ids once the broker has them all."""
    if not requests:
        return []
    from shared import topics
    from shared.events import wrap
    from shared.kafka import make_producer

    envelopes = [wrap(ev, case_id=case_id, producer="router-cli") for case_id, ev in requests]

    async def send() -> None:
        producer = make_producer(get_settings().kafka, "router-cli")
        await producer.start()
        try:
            sent = [
                await producer.send(topics.CASES_INTAKE, env.to_json(), key=env.case_id.encode())
                for env in envelopes
            ]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(send())
    return [str(env.event_id) for env in envelopes]


@route_app.callback(invoke_without_command=True)
def route(
    category: str = typer.Option(..., help="service code, e.g. heating.outage"),
    lat: float | None = typer.Option(None),
    lon: float | None = typer.Option(None),
    building: str | None = typer.Option(None, help="building code"),
    description: str = typer.Option(""),
    explain: bool = typer.Option(True, "--explain/--no-explain"),
    facility: str | None = typer.Option(None, help="facility code (a street light's number, …)"),
) -> None:
    """Route a hypothetical case against the current reference data and say why."""

    async def run(conn: asyncpg.Connection) -> Any:
        ref = await store.load_reference(conn)
        from services.router.app import explain_case  # the service's code: loaded when used
        from services.router.dispatch import RouterState

        state = RouterState(ref, await store.open_counts(conn))
        return explain_case(
            state, category, lat, lon, building, description, facility_code=facility
        )

    out = _db(run)
    print(
        json.dumps(
            out.decision if not explain else out.model_dump(mode="json"),
            ensure_ascii=False,
            indent=2,
        )
    )


@triage_app.command("list")
def triage_list() -> None:
    for r in _db(store.triage_list):
        print(f"{r['case_id']}  {r['category']:28} {r['updated_at']:%Y-%m-%d %H:%M}  {r['reason']}")


@triage_app.command("route")
def triage_route(
    case_id: str,
    grid: str | None = typer.Option(None, help="grid id"),
    department: str | None = typer.Option(None, help="department code"),
    reason: str = typer.Option("manual triage"),
) -> None:
    """Route an unroutable case by hand (published as a RerouteRequested)."""
    if grid is None and department is None:
        raise typer.BadParameter("give --grid, --department or both")
    [event_id] = _request_reroutes(
        [
            (
                case_id,
                events.RerouteRequested(
                    reason=reason, requested_by="operator", grid_id=grid, department=department
                ),
            )
        ]
    )
    console.print(f"[green]✓[/green] reroute requested ({event_id})")


@demo_app.command("reports")
def demo_reports(
    api_key: str = typer.Option(..., envvar="GRIDDISPATCH_DEMO_API_KEY", help="a resident_app key"),
    intake_url: str = typer.Option("http://127.0.0.1:8080"),
    every: float = typer.Option(5.0, help="seconds between reports"),
    seed: int = typer.Option(7),
    count: int = typer.Option(0, help="stop after this many (0: until interrupted)"),
) -> None:
    """A trickle of realistic reports from residents of the demo city, over intake's HTTP API."""
    import random
    import time

    import httpx

    from services.router import democity

    rng = random.Random(seed)
    city = democity.generate(seed=seed, scale="small")
    samples = [
        ("heating.outage", "暖气不热，屋里只有十几度", {"whole_building": "yes"}),
        ("streetlight.out", "小区门口路灯不亮", {}),
        ("roads.pothole", "路面有大坑，电动车容易摔倒", {}),
        ("sanitation.garbage", "垃圾两天没人清运", {}),
        ("noise.neighbourhood", "楼上深夜装修噪音", {}),
        ("dispute.neighbour", "邻居占用楼道堆放杂物", {}),
        ("water.outage", "整栋楼停水", {}),
        ("civil-affairs.elderly-care", "独居老人需要上门帮助", {}),
    ]
    sent = 0
    with httpx.Client(
        base_url=intake_url, timeout=10, headers={"Authorization": f"Bearer {api_key}"}
    ) as client:
        while count == 0 or sent < count:
            category, text, answers = rng.choice(samples)
            grid = rng.choice(city.grids)
            lat, lon = democity.point_in(grid, rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95))
            report: dict[str, object] = {
                "category": category,
                "description": text,
                "attributes": answers,
                "location": {"lat": lat, "lon": lon},
                "channel": rng.choice(["app", "wechat", "hotline"]),
            }
            if sent % 3 == 0:  # a resident who wants to be told (made-up number and address)
                report["reporter"] = {
                    "name": "居民",
                    "phone": f"1390000{rng.randrange(10_000):04d}",
                    "email": f"resident{sent}@example.org",
                    "consent_to_notify": True,
                }
            try:
                r = client.post("/v1/cases", json=report)
                console.print(
                    f"reported {category:28} → {r.status_code} {r.json().get('case_id', '')}"
                )
            except httpx.HTTPError as exc:
                console.print(f"[yellow]intake not reachable yet: {exc}[/yellow]")
            sent += 1
            time.sleep(every)
