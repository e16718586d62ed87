"""Intake keeps its promises when things go wrong: Kafka down, clients retrying too fast,
lifecycle events delivered twice."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import httpx

from services.intake.app import create_app
from services.intake.settings import IntakeSettings
from shared import topics
from shared.localstack import LocalStack
from shared.settings import Settings
from tests.helpers.kafka import read_topic
from tests.intake.conftest import (
    Keys,
    auth,
    publish_lifecycle,
    report_body,
    reported_and_routed,
    routed_event,
)


async def _outbox_rows(stack: LocalStack) -> int:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM intake.outbox"))
    finally:
        await conn.close()


async def test_reports_accepted_while_kafka_is_down_are_published_exactly_once(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    for _ in range(100):  # start from a drained outbox
        if await _outbox_rows(stack) == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.to_thread(stack.kafka.stop)
    try:
        ids = []
        for i in range(20):
            r = await client.post(
                "/v1/cases",
                json=report_body(
                    category="water.outage",
                    attributes={},
                    location={"lat": 47.2 + i * 0.001, "lon": 123.6},
                ),
                headers=auth(keys.resident_app),
            )
            assert r.status_code == 202, r.text  # accepted while the broker is away
            ids.append(r.json()["case_id"])
        assert await _outbox_rows(stack) >= 20
    finally:
        await asyncio.to_thread(stack.kafka.start, lambda _: None)

    for _ in range(900):  # the backlog drains once Kafka is back
        if await _outbox_rows(stack) == 0:
            break
        await asyncio.sleep(0.1)
    assert await _outbox_rows(stack) == 0
    records = await read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1, settle_s=3)
    published = [json.loads(r.value)["case_id"] for r in records]
    assert all(published.count(cid) == 1 for cid in ids), [published.count(c) for c in ids]


async def test_rate_limits_answer_429_with_retry_after(stack: LocalStack, keys: Keys) -> None:
    app = create_app(
        Settings(database_url=stack.postgres.url),
        IntakeSettings(rate_limit_per_key="3/minute", rate_limit_per_address="5/minute"),
        background=False,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as c,
    ):
        codes = []
        for _ in range(4):
            r = await c.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
            codes.append(r.status_code)
        assert codes == [202, 202, 202, 429]
        assert int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"] == "rate_limited"
        # the address limit catches a client that rotates keys
        other = await c.get("/v1/cases", headers=auth(keys.operator))
        assert other.status_code == 200
        last = await c.get("/v1/cases", headers=auth(keys.operator))
        assert last.status_code == 429


async def test_a_lifecycle_event_delivered_twice_is_applied_once(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    case = await reported_and_routed(client, stack, keys, department="heating")
    cid = case["case_id"]
    again = routed_event(cid, "water")
    await publish_lifecycle(stack, again, again)  # a redelivery
    for _ in range(100):
        view = (await client.get(f"/v1/cases/{cid}", headers=auth(keys.operator))).json()
        if view["department"] == "water":
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    view = (await client.get(f"/v1/cases/{cid}", headers=auth(keys.operator))).json()
    ids = [e["event_id"] for e in view["timeline"]]
    assert ids.count(str(again.event_id)) == 1
    assert [e["event_type"] for e in view["timeline"]] == [
        "CaseReported",
        "CaseRouted",
        "CaseRouted",
    ]
