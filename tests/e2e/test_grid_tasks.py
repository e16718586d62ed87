"""Grid tasks through the real parts: intake and the router as processes on the real broker
and database with a generated city. An operator issues a task to a street office over HTTP;
every comprehensive grid of it gets one case, routed to its worker, whom the worker can work
like any case; a task for an area without grids is a dead letter that says why."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, time, timedelta
from typing import Any

import asyncpg
import httpx

from services.intake import store as intake_store
from services.intake.auth import Role
from services.router import democity, store
from services.router.tasks import task_case_id
from shared import topics
from shared.citytime import CITY_TIME
from shared.localstack import LocalStack, free_port
from tests.helpers.cli import run_cli
from tests.helpers.kafka import first_on_topic
from tests.helpers.services import migrate_services, running_service

CITY = democity.generate(seed=23, scale="small")
STREET = CITY.street_offices[1]["code"]
COMMUNITIES = {c["code"] for c in CITY.communities if c["street_office"] == STREET}
GRIDS = sorted(
    g["grid_id"]
    for g in CITY.grids
    if g["kind"] == "comprehensive" and g["community"] in COMMUNITIES
)


async def test_a_task_reaches_every_grid_of_its_area_once(stack: LocalStack, tmp_path) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await migrate_services(conn)
        await store.load_city(conn, CITY)
        await store.replace_rules(conn, democity.default_rules())
        operator = (await intake_store.create_key(conn, "ops", Role.OPERATOR, None)).token
        resident_app = (await intake_store.create_key(conn, "app", Role.RESIDENT_APP, None)).token
    finally:
        await conn.close()
    port = free_port()
    env = {
        **stack.env(),
        "GRIDDISPATCH_INTAKE__PORT": str(port),
        "GRIDDISPATCH_ROUTER__PORT": str(free_port()),
        "GRIDDISPATCH_OUTBOX__POLL_INTERVAL_S": "0.2",
    }
    base = f"http://127.0.0.1:{port}"
    ops = {"Authorization": f"Bearer {operator}"}
    task_body = {
        "category": "task.door-to-door",
        "title": "寒潮入户排查",
        "instructions": "逐户确认独居老人供暖正常",
        "area": STREET,
    }
    with contextlib.ExitStack() as services:
        services.enter_context(
            running_service(
                "intake", env, ready_url=f"{base}/health/ready", log=tmp_path / "intake.log"
            )
        )
        services.enter_context(running_service("router", env, log=tmp_path / "router.log"))
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # only operators issue tasks, and only in the catalogue's categories
            r = await client.post(
                "/v1/tasks", json=task_body, headers={"Authorization": f"Bearer {resident_app}"}
            )
            assert r.status_code == 403, r.text
            r = await client.post(
                "/v1/tasks", json={**task_body, "category": "no.such"}, headers=ops
            )
            assert (r.status_code, r.json()["error"], r.json()["errors"][0]["field"]) == (
                422,
                "unknown_category",  # as for a report
                "category",
            ), r.text
            # a deadline of its own must lie ahead
            r = await client.post(
                "/v1/tasks", json={**task_body, "due_by": "2020-01-01T18:00:00+08:00"}, headers=ops
            )
            assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "due_by"), r.text
            # issued twice with one Idempotency-Key: one task
            first = await client.post(
                "/v1/tasks", json=task_body, headers={**ops, "Idempotency-Key": "cold-1"}
            )
            again = await client.post(
                "/v1/tasks", json=task_body, headers={**ops, "Idempotency-Key": "cold-1"}
            )
            assert first.status_code == again.status_code == 202, first.text
            task_id = first.json()["task_id"]
            assert again.json()["task_id"] == task_id

            progress: dict[str, Any] = {}
            for _ in range(300):
                progress = (await client.get(f"/v1/tasks/{task_id}", headers=ops)).json()
                if progress["by_status"].get("routed") == len(GRIDS):
                    break
                await asyncio.sleep(0.1)
            assert progress["by_status"] == {"routed": len(GRIDS)}, progress
            assert progress["cases"] == len(GRIDS) > 1
            listed = (await client.get("/v1/tasks", headers=ops)).json()
            assert [t for t in listed if t["task_id"] == task_id] == [progress]

            cases = (
                await client.get("/v1/cases", params={"task": task_id, "limit": 200}, headers=ops)
            ).json()["items"]
            assert sorted(c["grid_id"] for c in cases) == GRIDS  # one case per grid
            assert {c["case_id"] for c in cases} == {task_case_id(task_id, g) for g in GRIDS}
            # a grid whose worker is on duty (in others the grid leader takes the case)
            case = next(c for c in cases if c["worker_id"])
            assert (case["channel"], case["task_id"], case["department"]) == (
                "task",
                task_id,
                "street-office",
            )
            assert case["description"].startswith("寒潮入户排查")
            assert case["priority"] == "high"
            assert case["resolve_by"]

            # the grid's worker sees and works their own task case, and only theirs
            worker_id = case["worker_id"]
            conn = await asyncpg.connect(stack.postgres.url)
            try:
                worker = (
                    await intake_store.create_key(conn, "worker", Role.WORKER, worker_id)
                ).token
            finally:
                await conn.close()
            mine = (
                await client.get(
                    "/v1/cases",
                    params={"task": task_id},
                    headers={"Authorization": f"Bearer {worker}"},
                )
            ).json()["items"]
            assert [c["case_id"] for c in mine] == [
                c["case_id"] for c in cases if c["worker_id"] == worker_id
            ]
            r = await client.post(
                f"/v1/cases/{case['case_id']}/events",
                json={"action": "acknowledge"},
                headers={"Authorization": f"Bearer {worker}"},
            )
            assert r.status_code == 202, r.text
            # a task's cases are not Open311 service requests
            r = await client.get(f"/open311/v2/requests/{case['case_id']}.json")
            assert r.status_code in (403, 404)

            # an area without grids: nothing is made, and the router's dead letter says why
            nowhere = await client.post(
                "/v1/tasks", json={**task_body, "area": "atlantis"}, headers=ops
            )
            assert nowhere.status_code == 202
            lost = nowhere.json()["task_id"]
            dead = await first_on_topic(
                stack.kafka.bootstrap,
                topics.dlq(topics.CASES_INTAKE),
                lambda rec: rec.key == f"task:{lost}".encode(),
            )
            headers = {k: v.decode() for k, v in dead.headers}
            assert "no comprehensive grid in area atlantis" in headers["x-dlq-error"]
            assert json.loads(dead.value)["payload"]["task_id"] == lost
            assert (await client.get(f"/v1/tasks/{lost}", headers=ops)).json()["cases"] == 0

            # the same from the command line, for one grid
            bad = await asyncio.to_thread(
                run_cli, stack, "tasks", "issue", "--area", "no area!", "--category",
                "task.notice", "--title", "x",
            )  # fmt: skip
            assert bad.returncode == 2
            assert "--area" in bad.stderr
            # by tomorrow 18:00 in the city, typed as the city reads it
            tomorrow = datetime.now(CITY_TIME).date() + timedelta(days=1)
            due_by = datetime.combine(tomorrow, time(18, 0), CITY_TIME)
            issued = await asyncio.to_thread(
                run_cli, stack, "tasks", "issue", "--area", GRIDS[0], "--category",
                "task.notice", "--title", "停水通知到户",
                "--due-by", f"{tomorrow:%Y-%m-%d} 18:00",
            )  # fmt: skip
            assert issued.returncode == 0, issued.stderr
            one = issued.stdout.strip()
            for _ in range(300):
                shown = await asyncio.to_thread(run_cli, stack, "tasks", "show", one)
                if "routed" in shown.stdout:
                    break
                await asyncio.sleep(0.2)
            assert shown.returncode == 0, shown.stderr
            assert "停水通知到户" in shown.stdout
            assert f"due by {tomorrow:%Y-%m-%d} 18:00" in shown.stdout
            [single] = (await client.get("/v1/cases", params={"task": one}, headers=ops)).json()[
                "items"
            ]
            assert single["grid_id"] == GRIDS[0]
            # the task's deadline, not the category's
            assert datetime.fromisoformat(single["resolve_by"]) == due_by
            assert datetime.fromisoformat(single["acknowledge_by"]) <= due_by
            task_view = (await client.get(f"/v1/tasks/{one}", headers=ops)).json()
            assert datetime.fromisoformat(task_view["due_by"]) == due_by
