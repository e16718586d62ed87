"""An intake server (a separate process) on the test stack, and API keys for each role."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.intake import store
from services.intake.auth import Role
from shared import events, topics
from shared.directory import DepartmentEntry
from shared.events import wrap
from shared.localstack import LocalStack, free_port
from tests.helpers.kafka import read_topic
from tests.helpers.services import running_service


@pytest.fixture(scope="session")
def intake_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {
        **stack.env(),
        "GRIDDISPATCH_INTAKE__PORT": str(port),
        "GRIDDISPATCH_INTAKE__RATE_LIMIT_PER_KEY": "100000/second",
        "GRIDDISPATCH_INTAKE__RATE_LIMIT_PER_ADDRESS": "100000/second",
        "GRIDDISPATCH_INTAKE__CATALOGUE_REFRESH_S": "1",
        "GRIDDISPATCH_OUTBOX__POLL_INTERVAL_S": "0.5",
    }
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("intake") / "intake.log"
    with running_service("intake", env, ready_url=f"{url}/health/ready", log=log):
        yield url


@dataclass(frozen=True)
class Keys:
    resident_app: str
    operator: str
    heating: str  # department "heating"
    water: str  # department "water"
    worker: str  # worker "w-1"


@pytest.fixture(scope="session")
def keys(stack: LocalStack, intake_url: str) -> Keys:
    async def make() -> Keys:
        conn = await asyncpg.connect(stack.postgres.url)
        try:
            made = {}
            for label, role, scope in [
                ("resident_app", Role.RESIDENT_APP, None),
                ("operator", Role.OPERATOR, None),
                ("heating", Role.DEPARTMENT, "heating"),
                ("water", Role.DEPARTMENT, "water"),
                ("worker", Role.WORKER, "w-1"),
            ]:
                made[label] = (await store.create_key(conn, f"test {label}", role, scope)).token
            return Keys(**made)
        finally:
            await conn.close()

    return asyncio.run(make())


@pytest.fixture
async def client(intake_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=intake_url, timeout=30) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def report_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "category": "heating.outage",
        "description": "暖气不热，室温只有12度",
        "location": {"lat": 47.3543, "lon": 123.9182},
        "channel": "app",
        "reporter": {"name": "王阿姨", "phone": "13912345678", "consent_to_notify": True},
        "attributes": {"whole_building": "yes"},
    }
    body.update(overrides)
    return body


async def publish_lifecycle(stack: LocalStack, *envelopes: events.Envelope) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for env in envelopes:
            await producer.send_and_wait(
                topics.CASES_LIFECYCLE, env.to_json(), key=env.case_id.encode()
            )
    finally:
        await producer.stop()


async def publish_department(stack: LocalStack, code: str, name: str) -> None:
    """An entry of the department directory, as the router publishes it."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        entry = DepartmentEntry(code=code, name=name)
        await producer.send_and_wait(topics.DEPARTMENTS, entry.to_json(), key=code.encode())
    finally:
        await producer.stop()


def routed_event(
    case_id: str,
    department: str,
    worker: str | None = "w-1",
    grid: str = "g-0001",
    task_id: str | None = None,
    resolve_in: timedelta = timedelta(hours=12),
) -> events.Envelope:
    now = datetime.now(UTC)
    return wrap(
        events.CaseRouted(
            category="heating.outage",
            grid_id=grid,
            district="longsha",
            department=department,
            worker_id=worker,
            priority=events.Priority.HIGH,
            deadlines=events.Deadlines(
                acknowledge_by=now + min(timedelta(hours=1), resolve_in),
                resolve_by=now + resolve_in,
                warn_before_s=900,
            ),
            escalation_chain=(
                events.EscalationStep(level=0, role="worker", name="张网格员", contact="139"),
            ),
            reported_at=now,
            task_id=task_id,
        ),
        case_id=case_id,
        producer="router",
    )


async def wait_for(
    client: httpx.AsyncClient, case_id: str, key: str, predicate, timeout_s: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await client.get(f"/v1/cases/{case_id}", headers=auth(key))
        if r.status_code == 200:
            last = r.json()
            if predicate(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"case {case_id} never matched; last seen: {json.dumps(last)[:500]}")


async def reported_and_routed(
    client: httpx.AsyncClient,
    stack: LocalStack,
    keys: Keys,
    department: str = "heating",
    **overrides: object,
) -> dict[str, Any]:
    r = await client.post(
        "/v1/cases", json=report_body(**overrides), headers=auth(keys.resident_app)
    )
    assert r.status_code == 202, r.text
    accepted: dict[str, Any] = r.json()
    await publish_lifecycle(stack, routed_event(accepted["case_id"], department))
    await wait_for(client, accepted["case_id"], keys.operator, lambda c: c["status"] == "routed")
    return accepted


def refusal(r: httpx.Response) -> tuple[int, str, list[str]]:
    """An error answer as (status, error code, the fields it names)."""
    body = r.json()
    return r.status_code, body["error"], [e["field"] for e in body.get("errors", [])]


async def published(stack: LocalStack, event_type: str, *case_ids: str) -> list[dict[str, Any]]:
    """The envelopes of `event_type` on `cases.lifecycle` for these cases, as published."""
    keys = {case_id.encode() for case_id in case_ids}
    records = await read_topic(
        stack.kafka.bootstrap, topics.CASES_LIFECYCLE, expected=1, settle_s=2
    )
    found = [json.loads(r.value) for r in records if r.key in keys]
    return [e for e in found if e["event_type"] == event_type]
