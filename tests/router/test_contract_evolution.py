"""Upgrades in any order, on the real broker: the router routes a report that a newer intake
wrote with fields it does not know, and dead-letters an event of a newer schema version
instead of misreading it (replayable once the router is upgraded)."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from services.router import democity
from shared import topics
from shared.localstack import LocalStack
from tests.router.conftest import decisions_for, report
from tests.router.test_dlq_replay import _wait_listed
from tests.router.test_pipeline import _comprehensive


def _as_a_newer_release_writes_it(raw: bytes, **envelope: Any) -> bytes:
    message = orjson.loads(raw)
    message["payload"]["photos_reviewed"] = True
    message["payload"]["location"]["floor"] = 3
    message["region"] = "heilongjiang"
    message.update(envelope)
    return orjson.dumps(message)


async def test_new_fields_are_read_and_new_versions_dead_lettered(
    router_url: str, stack: LocalStack
) -> None:
    lat, lon = democity.point_in(_comprehensive(14), 0.3, 0.6)
    additive = report("roads.pothole", lat=lat, lon=lon)
    breaking = report("roads.pothole", lat=lat, lon=lon)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for env, extra in ((additive, {}), (breaking, {"schema_version": 2})):
            await producer.send_and_wait(
                topics.CASES_INTAKE,
                _as_a_newer_release_writes_it(env.to_json(), **extra),
                key=env.case_id.encode(),
            )
    finally:
        await producer.stop()

    [(raw, routed)] = await decisions_for(stack, additive.case_id)
    assert routed["event_type"] == "CaseRouted"
    assert routed["payload"]["department"] == "roads"
    assert routed["payload"]["grid_id"] == _comprehensive(14)["grid_id"]
    assert b"floor" not in raw  # read, not passed on
    assert b"photos_reviewed" not in raw

    dead = await _wait_listed(stack, lambda r: r["key"] == breaking.case_id)
    assert dead["error_type"] == "DecodeError"
    assert "CaseReported schema_version 2 is newer than this release reads (1)" in dead["error"]
    assert not await decisions_for(stack, breaking.case_id, timeout_s=2)
