"""A router process on the test stack, with the small generated city loaded."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.router import democity, store
from services.router.settings import MIGRATIONS
from shared import events, topics
from shared.db import migrate
from shared.events import Envelope, wrap
from shared.localstack import LocalStack, free_port
from tests.helpers.services import running_service

ADMIN_TOKEN = "test-operator-" + uuid.uuid4().hex
CITY = democity.generate(seed=5, scale="small")


# Package scope: a router left running would route the reports later tests publish to
# cases.intake (a second CaseRouted, a second message to a resident).
@pytest.fixture(scope="package")
def router_url(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    async def load() -> None:
        conn = await asyncpg.connect(stack.postgres.url)
        try:
            await migrate(conn, "router", MIGRATIONS)
            await store.load_city(conn, CITY)
        finally:
            await conn.close()

    asyncio.run(load())
    port = free_port()
    env = {
        **stack.env(),
        "GRIDDISPATCH_ROUTER__PORT": str(port),
        "GRIDDISPATCH_ROUTER__ADMIN_TOKEN": ADMIN_TOKEN,
        "GRIDDISPATCH_ROUTER__RELOAD_POLL_S": "0.5",
    }
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("router") / "router.log"
    with running_service("router", env, ready_url=f"{url}/health/ready", log=log):
        yield url


def report(
    category: str,
    *,
    lat: float | None = None,
    lon: float | None = None,
    address: str | None = None,
    description: str = "问题",
    care_groups: tuple[str, ...] = (),
    facility_code: str | None = None,
) -> Envelope:
    return wrap(
        events.CaseReported(
            category=category,
            description=description,
            location=events.Location(
                lat=lat, lon=lon, address=address, facility_code=facility_code
            ),
            channel=events.Channel.APP,
            reported_at=datetime.now(UTC),
            sensitivity=events.Sensitivity(care_groups=care_groups),
        ),
        case_id=str(uuid.uuid4()),
        producer="test",
    )


async def publish(stack: LocalStack, *envs: Envelope, raw: bytes | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for env in envs:
            await producer.send_and_wait(
                topics.CASES_INTAKE, env.to_json(), key=env.case_id.encode()
            )
        if raw is not None:
            await producer.send_and_wait(topics.CASES_INTAKE, raw, key=b"poison")
    finally:
        await producer.stop()


async def decisions_for(
    stack: LocalStack, case_id: str, *, count: int = 1, timeout_s: float = 30
) -> list[tuple[bytes, dict[str, Any]]]:
    """Messages on cases.lifecycle for `case_id` written by the router (raw bytes, parsed)."""
    consumer = AIOKafkaConsumer(
        topics.CASES_LIFECYCLE,
        bootstrap_servers=stack.kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[tuple[bytes, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(found) < count:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                for r in recs:
                    if r.key == case_id.encode():
                        env = json.loads(r.value)
                        if env["producer"] == "router":
                            found.append((r.value, env))
    finally:
        await consumer.stop()
    return found
