"""Loading a city's reference data with the command line, on the real database (one of its
own, so the running services of other tests keep their city): CSV tables in and out with the
day's duty roster, the grid layer (GeoJSON) and the rule table (YAML); a bad file changes
nothing and says what is wrong, line by line; a change bumps the version the routers reload."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
import yaml

from services.router import democity, store
from services.router.decide import CaseFacts, decide
from services.router.settings import MIGRATIONS
from shared import events, topics
from shared.catalogue import load_file
from shared.db import migrate
from shared.localstack import LocalStack
from tests.helpers.cli import run_cli
from tests.helpers.kafka import read_topic
from tests.helpers.services import fresh_database

CITY = democity.generate(seed=31, scale="small")


@pytest.fixture(scope="module")
def city_url(stack: LocalStack) -> str:
    return asyncio.run(_city_database(stack, "refdata_cli"))


def cli(stack: LocalStack, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack, *args, env={"GRIDDISPATCH_DATABASE_URL": url})


def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def version(url: str) -> int:
    return int(fetch(url, "SELECT version FROM router.refdata_version")[0]["version"])


def test_the_duty_roster_in_and_out_as_csv(
    stack: LocalStack, city_url: str, tmp_path: Path
) -> None:
    exported = cli(stack, city_url, "refdata", "export", "workers")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == len(CITY.workers)
    assert set(rows[0]) == {"worker_id", "grid_id", "name", "on_duty", "capacity", "contact"}

    # tomorrow's roster: the first worker off duty, the last one gone, a new one
    rows[0]["on_duty"] = "false"
    gone = rows.pop()
    new = {**rows[1], "worker_id": "w-new-1", "name": "新网格员", "capacity": "", "contact": ""}
    roster = tmp_path / "workers.csv"
    with roster.open("w", encoding="utf-8-sig", newline="") as f:  # as Excel saves it
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, new])
    before = version(city_url)
    done = cli(stack, city_url, "refdata", "import", "workers", str(roster))
    assert done.returncode == 0, done.stderr
    assert version(city_url) == before + 1  # the routers reload on it
    stored = {
        r["worker_id"]: r
        for r in fetch(city_url, "SELECT worker_id, on_duty, capacity FROM router.workers")
    }
    assert len(stored) == len(CITY.workers)
    assert stored[rows[0]["worker_id"]]["on_duty"] is False
    assert gone["worker_id"] not in stored
    assert (stored["w-new-1"]["on_duty"], stored["w-new-1"]["capacity"]) == (True, 20)

    # a file with problems changes nothing, and says where each is
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "worker_id,grid_id,name,on_duty\n"
        f"w-a,{rows[1]['grid_id']},甲,sometimes\n"
        "w-b,no-such-grid,乙,true\n",
        "utf-8",
    )
    refused = cli(stack, city_url, "refdata", "import", "workers", str(bad))
    assert refused.returncode == 2
    assert "line 2, on_duty: 'sometimes' is not true or false" in refused.stderr
    assert "line 3, grid_id: no grid no-such-grid" in refused.stderr
    assert "nothing imported" in refused.stderr
    assert len(fetch(city_url, "SELECT 1 FROM router.workers")) == len(CITY.workers)
    missing = tmp_path / "missing.csv"
    missing.write_text("worker_id,name\nw-c,丙\n", "utf-8")
    lacking = cli(stack, city_url, "refdata", "import", "workers", str(missing))
    assert lacking.returncode == 2
    assert "the header lacks grid_id" in lacking.stderr

    # one worker off for the afternoon, then back
    worker = rows[1]["worker_id"]
    off = cli(stack, city_url, "refdata", "duty", worker, "--off")
    assert off.returncode == 0, off.stderr
    assert (
        fetch(city_url, "SELECT on_duty FROM router.workers WHERE worker_id = $1", worker)[0][
            "on_duty"
        ]
        is False
    )
    assert cli(stack, city_url, "refdata", "duty", worker, "--on").returncode == 0
    nobody = cli(stack, city_url, "refdata", "duty", "w-nobody", "--off")
    assert nobody.returncode == 2
    assert "no worker w-nobody" in nobody.stderr


def test_a_department_still_named_cannot_be_dropped(
    stack: LocalStack, city_url: str, tmp_path: Path
) -> None:
    exported = cli(stack, city_url, "refdata", "export", "departments", str(tmp_path / "d.csv"))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader((tmp_path / "d.csv").open(encoding="utf-8")))
    kept = [r for r in rows if r["code"] != "heating"]
    with (tmp_path / "fewer.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    refused = cli(stack, city_url, "refdata", "import", "departments", str(tmp_path / "fewer.csv"))
    assert refused.returncode == 2
    assert "names department heating, which the file drops" in refused.stderr
    # renamed, all kept: fine
    renamed = [{**r, "name": "市热力集团"} if r["code"] == "heating" else r for r in rows]
    with (tmp_path / "renamed.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(renamed)
    done = cli(stack, city_url, "refdata", "import", "departments", str(tmp_path / "renamed.csv"))
    assert done.returncode == 0, done.stderr
    [heating] = fetch(city_url, "SELECT name FROM router.departments WHERE code = 'heating'")
    assert heating["name"] == "市热力集团"


def test_the_grid_layer_and_the_rules_round_trip(
    stack: LocalStack, city_url: str, tmp_path: Path
) -> None:
    layer = tmp_path / "grids.geojson"
    assert cli(stack, city_url, "grids", "export", str(layer)).returncode == 0
    doc = json.loads(layer.read_text("utf-8"))
    assert len(doc["features"]) == len(CITY.grids)
    before = version(city_url)
    again = cli(stack, city_url, "grids", "import", str(layer))
    assert again.returncode == 0, again.stderr
    assert version(city_url) == before + 1
    checked = cli(stack, city_url, "grids", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # a grid of a community the city does not have: the snapshot could not place it
    doc["features"][0]["properties"]["community"] = "atlantis-c01"
    (tmp_path / "bad.geojson").write_text(json.dumps(doc, ensure_ascii=False), "utf-8")
    refused = cli(stack, city_url, "grids", "import", str(tmp_path / "bad.geojson"))
    assert refused.returncode == 2
    assert "no community atlantis-c01" in refused.stderr
    assert version(city_url) == before + 1

    rules = tmp_path / "rules.yaml"
    assert cli(stack, city_url, "rules", "export", str(rules)).returncode == 0
    table = yaml.safe_load(rules.read_text("utf-8"))
    assert len(table["rules"]) == len(democity.default_rules())
    assert cli(stack, city_url, "rules", "import", str(rules)).returncode == 0
    table["rules"].append(dict(table["rules"][0]))  # the same id twice
    rules.write_text(yaml.safe_dump(table, allow_unicode=True), "utf-8")
    twice = cli(stack, city_url, "rules", "import", str(rules))
    assert twice.returncode == 2
    assert "two rules share an id" in twice.stderr


def test_a_category_imported_once_is_known_to_intake_and_the_router(
    stack: LocalStack, city_url: str, tmp_path: Path
) -> None:
    """`catalogue import` writes every service's copy: a category only intake knew would be
    accepted there and come out of the router unroutable (a grid task in it: refused)."""
    code = "heating.radiator-leak"
    new = {
        "code": code,
        "name": {"zh-CN": "暖气片漏水", "en": "Leaking radiator"},
        "group": "utilities",
        "department": "heating",
        "deadlines": {"acknowledge_hours": 1, "resolve_hours": 8},
        "priority": "high",
    }
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"categories": [new]}, allow_unicode=True), "utf-8")
    before = version(city_url)
    done = cli(stack, city_url, "catalogue", "import", str(path))
    assert done.returncode == 0, done.stderr
    assert "intake: 1 categories" in done.stderr
    assert "router: 1 categories" in done.stderr
    assert "notifier: 1 categories" in done.stderr  # its messages name it
    assert version(city_url) == before + 1  # the routers reload
    [kept] = fetch(
        city_url,
        "SELECT definition->>'department' AS d FROM intake.categories WHERE code = $1",
        code,
    )
    assert kept["d"] == "heating"

    async def routed() -> events.Event:
        conn = await asyncpg.connect(city_url)
        try:
            ref = await store.load_reference(conn)
        finally:
            await conn.close()
        grid = next(g for g in CITY.grids if g["kind"] == "comprehensive")
        lat, lon = democity.point_in(grid, 0.9, 0.9)
        facts = CaseFacts(
            case_id="c",
            category=code,
            description="暖气片漏水",
            location=events.Location(lat=lat, lon=lon),
            reported_at=datetime.now(UTC),
        )
        return decide(facts, ref, open_cases={}).event

    event = asyncio.run(routed())
    assert isinstance(event, events.CaseRouted), event
    assert (event.department, event.priority) == ("heating", events.Priority.HIGH)
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories:\n- code: X\n", "utf-8")
    refused = cli(stack, city_url, "catalogue", "import", str(bad))
    assert refused.returncode == 2


def test_a_city_retires_categories_and_then_the_departments_only_they_named(
    stack: LocalStack, tmp_path: Path
) -> None:
    """A city's own catalogue replaces the packaged one (`--retire-others`); a category naming
    a department the city lacks is refused before any service changes."""
    url = asyncio.run(_city_database(stack, "catalogue_retire"))
    seed = load_file()
    [tax_category] = [c for c in seed.categories if c.department == "tax"]
    first = cli(stack, url, "catalogue", "import")  # the packaged file, into every service
    assert first.returncode == 0, first.stderr

    def write(name: str, categories: list[dict[str, object]]) -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"categories": categories}, allow_unicode=True), "utf-8")
        return str(path)

    ours = [c.model_dump(mode="json") for c in seed.categories if c.code != tax_category.code]
    stray = {**ours[0], "code": "roads.snow", "department": "snow-clearing"}
    refused = cli(stack, url, "catalogue", "import", write("stray.yaml", [*ours, stray]))
    assert refused.returncode == 2
    assert "router: category roads.snow: no department snow-clearing" in refused.stderr
    assert "no service changed" in refused.stderr
    assert not fetch(url, "SELECT 1 FROM intake.categories WHERE code = 'roads.snow'")

    before = version(url)
    done = cli(stack, url, "catalogue", "import", write("ours.yaml", ours), "--retire-others")
    assert done.returncode == 0, done.stderr
    assert f"intake: {len(ours)} categories from" in done.stderr
    assert f"router: {len(ours)} categories from" in done.stderr
    assert "1 retired" in done.stderr
    assert version(url) == before + 1
    assert fetch(url, "SELECT code FROM intake.categories WHERE NOT active") == [
        (tax_category.code,)
    ]
    assert fetch(url, "SELECT code FROM router.categories WHERE retired_at IS NOT NULL") == [
        (tax_category.code,)
    ]

    # the tax office, named by nothing still offered, can now leave the reference data
    exported = cli(stack, url, "refdata", "export", "departments", str(tmp_path / "d.csv"))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader((tmp_path / "d.csv").open(encoding="utf-8")))
    with (tmp_path / "no-tax.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["code"] != "tax")
    dropped = cli(stack, url, "refdata", "import", "departments", str(tmp_path / "no-tax.csv"))
    assert dropped.returncode == 0, dropped.stderr
    # and the packaged file, which still names it, is refused from now on
    again = cli(stack, url, "catalogue", "import")
    assert again.returncode == 2
    assert f"category {tax_category.code}: no department tax" in again.stderr


async def _city_database(stack: LocalStack, name: str) -> str:
    url = await fresh_database(stack.postgres.url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "router", MIGRATIONS)
        await store.load_city(conn, CITY)
        await store.replace_rules(conn, democity.default_rules())
    finally:
        await conn.close()
    return url


def test_a_roster_that_leaves_a_worker_off_hands_over_what_they_have_not_acknowledged(
    stack: LocalStack, tmp_path: Path
) -> None:
    url = asyncio.run(_city_database(stack, "roster_handover"))
    worker = CITY.workers[0]["worker_id"]
    waiting, handled = (f"roster-{uuid.uuid4()}" for _ in range(2))

    async def cases() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.executemany(
                "INSERT INTO router.cases (case_id, facts, status, department, worker_id, "
                "acknowledged) VALUES ($1, '{}', 'routed', 'roads', $2, $3)",
                [(waiting, worker, False), (handled, worker, True)],
            )
        finally:
            await conn.close()

    asyncio.run(cases())
    exported = cli(stack, url, "refdata", "export", "workers")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    for row in rows:
        if row["worker_id"] == worker:
            row["on_duty"] = "false"
    roster = tmp_path / "roster.csv"
    with roster.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    done = cli(stack, url, "refdata", "import", "workers", str(roster))
    assert done.returncode == 0, done.stderr
    assert "1 unacknowledged case(s) of workers now off duty or gone" in done.stderr
    requests = [
        json.loads(r.value)
        for r in asyncio.run(read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1))
        if r.key in (waiting.encode(), handled.encode())
    ]
    assert [(e["case_id"], e["payload"]["hand_over_from"]) for e in requests] == [(waiting, worker)]
