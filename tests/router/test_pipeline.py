"""The router as a process on the real broker and database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from services.router import democity, store
from services.router.rules import Rule
from shared import events, topics
from shared.events import wrap
from shared.ids import derived_event_id
from shared.localstack import LocalStack
from tests.helpers.cli import run_cli
from tests.helpers.kafka import read_topic
from tests.router.conftest import ADMIN_TOKEN, CITY, decisions_for, publish, report

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _comprehensive(n: int = 0) -> dict[str, Any]:
    return [g for g in CITY.grids if g["kind"] == "comprehensive"][n]


async def test_a_reported_case_is_routed_to_grid_department_and_worker(
    router_url: str, stack: LocalStack
) -> None:
    grid = _comprehensive(3)
    lat, lon = democity.point_in(grid, 0.9, 0.9)
    env = report("roads.pothole", lat=lat, lon=lon)
    await publish(stack, env)
    [(_, out)] = await decisions_for(stack, env.case_id)
    assert out["event_type"] == "CaseRouted"
    assert out["event_id"] == str(derived_event_id(env.event_id, "routed"))
    p = out["payload"]
    assert p["grid_id"] == grid["grid_id"]
    assert p["department"] == "roads"
    workers = {
        w["worker_id"] for w in CITY.workers if w["grid_id"] == grid["grid_id"] and w["on_duty"]
    }
    assert p["worker_id"] in workers or (not workers and p["worker_id"] is None)
    assert p["escalation_chain"][-1]["role"] == "city"


async def test_a_report_naming_a_facility_goes_to_the_facility_s_grid(
    router_url: str, stack: LocalStack
) -> None:
    """Facilities come from the database like the rest of the reference data."""
    station = next(f for f in CITY.facilities if f["kind"] == "heating_substation")
    env = report("heating.outage", facility_code=station["code"])
    await publish(stack, env)
    [(_, out)] = await decisions_for(stack, env.case_id)
    assert out["event_type"] == "CaseRouted", out
    assert (out["payload"]["grid_id"], out["payload"]["department"]) == (
        station["grid_id"],
        "heating",
    )


async def test_a_redelivered_report_yields_the_very_same_decision(
    router_url: str, stack: LocalStack
) -> None:
    lat, lon = democity.point_in(_comprehensive(4), 0.9, 0.9)
    env = report("streetlight.out", lat=lat, lon=lon)
    await publish(stack, env)
    await decisions_for(stack, env.case_id)
    await publish(stack, env)  # the same message again, as after a crash before commit
    outs = await decisions_for(stack, env.case_id, count=2)
    assert len(outs) == 2
    assert outs[0][0] == outs[1][0]  # same bytes, same event id


async def test_unroutable_cases_reach_triage_and_are_routed_by_hand(
    router_url: str, stack: LocalStack
) -> None:
    env = report("roads.pothole", address="龙沙区某小区门口")
    await publish(stack, env)
    [(_, out)] = await decisions_for(stack, env.case_id)
    assert out["event_type"] == "CaseUnroutable"
    assert "address only" in out["payload"]["reason"]
    async with httpx.AsyncClient(base_url=router_url) as client:
        assert (await client.get("/v1/triage")).status_code == 403
        listed = (await client.get("/v1/triage", headers=ADMIN)).json()
        assert env.case_id in {c["case_id"] for c in listed}
        grid = _comprehensive(7)
        r = await client.post(
            f"/v1/triage/{env.case_id}",
            headers=ADMIN,
            json={"grid_id": grid["grid_id"], "department": "roads"},
        )
        assert r.status_code == 202
    outs = await decisions_for(stack, env.case_id, count=2)
    routed = outs[-1][1]
    assert routed["event_type"] == "CaseRouted"
    assert routed["payload"]["grid_id"] == grid["grid_id"]
    async with httpx.AsyncClient(base_url=router_url) as client:
        listed = (await client.get("/v1/triage", headers=ADMIN)).json()
        assert env.case_id not in {c["case_id"] for c in listed}


async def test_a_transfer_goes_to_the_next_candidate_department(
    router_url: str, stack: LocalStack
) -> None:
    hospital = next(g for g in CITY.grids if g["dedicated_type"] == "hospital")
    lat, lon = democity.point_in(hospital)
    env = report("sanitation.garbage", lat=lat, lon=lon)
    await publish(stack, env)
    [(_, first)] = await decisions_for(stack, env.case_id)
    assert first["payload"]["department"] == "health"  # the hospital-premises rule
    declined = wrap(
        events.RerouteRequested(
            reason="not ours", requested_by="health", exclude_departments=("health",)
        ),
        case_id=env.case_id,
        producer="intake",
    )
    await publish(stack, declined)
    outs = await decisions_for(stack, env.case_id, count=2)
    assert outs[-1][1]["payload"]["department"] == "sanitation"  # the catalogue's default
    again = wrap(
        events.RerouteRequested(
            reason="not ours either", requested_by="sanitation", exclude_departments=("sanitation",)
        ),
        case_id=env.case_id,
        producer="intake",
    )
    await publish(stack, again)
    outs = await decisions_for(stack, env.case_id, count=3)
    assert outs[-1][1]["event_type"] == "CaseUnroutable"  # nobody left: manual triage


async def test_a_rule_change_applies_without_a_restart(router_url: str, stack: LocalStack) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        new_rule = Rule.model_validate(
            {
                "id": "potholes-to-housing",
                "match": {"category": "roads.pothole"},
                "route": {"department": "housing"},
            }
        )
        await store.replace_rules(conn, [new_rule, *democity.default_rules()])
        lat, lon = democity.point_in(_comprehensive(9), 0.9, 0.9)
        department = None
        for _ in range(40):  # the router reloads within seconds
            env = report("roads.pothole", lat=lat, lon=lon)
            await publish(stack, env)
            [(_, out)] = await decisions_for(stack, env.case_id)
            department = out["payload"]["department"]
            if department == "housing":
                break
            await asyncio.sleep(0.25)
        assert department == "housing"
        assert out["payload"]["rule_id"] == "potholes-to-housing"
    finally:
        await store.replace_rules(conn, democity.default_rules())
        await conn.close()


async def test_poison_messages_go_to_the_dead_letter_topic(
    router_url: str, stack: LocalStack
) -> None:
    lat, lon = democity.point_in(_comprehensive(11), 0.9, 0.9)
    after = report("roads.pothole", lat=lat, lon=lon)
    await publish(stack, raw=b'{"event_type": "CaseReported", "broken": ')
    await publish(stack, after)
    assert await decisions_for(stack, after.case_id)  # the consumer went on
    dlq = await read_topic(stack.kafka.bootstrap, topics.dlq(topics.CASES_INTAKE), expected=1)
    mine = [r for r in dlq if r.value.startswith(b'{"event_type": "CaseReported", "broken"')]
    assert mine
    headers = dict(mine[0].headers)
    assert headers["x-dlq-consumer"] == b"router"
    assert headers["x-dlq-error-type"] == b"DecodeError"


async def test_explain_over_http(router_url: str) -> None:
    grid = next(g for g in CITY.grids if g["dedicated_type"] == "school")
    lat, lon = democity.point_in(grid)
    async with httpx.AsyncClient(base_url=router_url) as client:
        r = await client.get(
            "/v1/explain",
            headers=ADMIN,
            params={"category": "safety.fire-hazard", "lat": lat, "lon": lon},
        )
        assert r.status_code == 200
        body = r.json()
        assert body["outcome"] == "routed"
        assert body["decision"]["department"] == "education"
        assert any("school" in line or "dedicated" in line for line in body["trail"])
        assert "rule school-safety: matches" in body["trail"]
        light = next(f for f in CITY.facilities if f["kind"] == "street_light")
        r = await client.get(
            "/v1/explain",
            headers=ADMIN,
            params={"category": "streetlight.out", "facility_code": light["code"]},
        )
        assert r.status_code == 200, r.text
        assert f"grid {light['grid_id']}: facility {light['code']}" in r.json()["trail"]
        metrics = (await client.get("/metrics/")).text
        assert "griddispatch_cases_routed_total" in metrics
        assert "griddispatch_router_grids_loaded" in metrics
    _ = json


async def test_a_worker_going_off_duty_hands_over_what_they_have_not_acknowledged(
    router_url: str, stack: LocalStack
) -> None:
    """`refdata duty W --off`: W's unacknowledged case goes to the grid's other staff (here
    the grid leader: W was the grid's only worker on duty) with the same department, priority
    and deadlines; the case W acknowledged stays with W."""
    grid = _comprehensive(20)
    [worker] = [
        w["worker_id"] for w in CITY.workers if w["grid_id"] == grid["grid_id"] and w["on_duty"]
    ]
    waiting, handled = (
        report("roads.pothole", lat=lat, lon=lon)
        for lat, lon in (democity.point_in(grid, 0.2, 0.2), democity.point_in(grid, 0.8, 0.8))
    )
    await publish(stack, waiting, handled)
    [(_, first)] = await decisions_for(stack, waiting.case_id)
    [(_, other)] = await decisions_for(stack, handled.case_id)
    assert first["payload"]["worker_id"] == other["payload"]["worker_id"] == worker
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        ack = wrap(events.CaseAcknowledged(by=worker), case_id=handled.case_id, producer="intake")
        await producer.send_and_wait(
            topics.CASES_LIFECYCLE, ack.to_json(), key=handled.case_id.encode()
        )
    finally:
        await producer.stop()
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        for _ in range(100):  # the router's lifecycle consumer folds the acknowledgement
            if await conn.fetchval(
                "SELECT acknowledged FROM router.cases WHERE case_id = $1", handled.case_id
            ):
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the acknowledgement never reached the router")
    finally:
        await conn.close()

    try:
        off = run_cli(stack, "refdata", "duty", worker, "--off")
        assert off.returncode == 0, off.stderr
        assert "unacknowledged case(s) to hand over" in off.stderr  # (others' cases too)
        outs = await decisions_for(stack, waiting.case_id, count=2)
        assert len(outs) == 2, outs
        moved = outs[-1][1]
        assert moved["event_type"] == "CaseRouted"
        p, before = moved["payload"], first["payload"]
        assert p["handed_over_from"] == worker
        assert p["worker_id"] is None  # nobody else on duty: the grid leader takes it
        assert p["escalation_chain"][0]["role"] == "grid_leader"
        for same in ("grid_id", "department", "priority", "deadlines", "reported_at"):
            assert p[same] == before[same], same
        assert len(await decisions_for(stack, handled.case_id, count=2, timeout_s=3)) == 1
        # the request delivered again (a router that crashed after recording the handover,
        # before publishing it): the same decision goes out again, not a refusal
        [request] = [
            r.value
            for r in await read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1)
            if r.key == waiting.case_id.encode() and b"hand_over_from" in r.value
        ]
        await publish(stack, raw=request)
        outs = await decisions_for(stack, waiting.case_id, count=3)
        assert len(outs) == 3
        assert outs[2][0] == outs[1][0]  # byte for byte, the same event id
    finally:
        assert run_cli(stack, "refdata", "duty", worker, "--on").returncode == 0
