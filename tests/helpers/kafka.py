"""Reading topics back in tests, and records to hand to a handler directly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from shared import topics
from shared.events import Envelope


def record_of(env: Envelope, topic: str, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    """`env` as a consumer would receive it from `topic` (keyed by its case, as published)."""
    value = env.to_json()
    key = env.case_id.encode()
    return ConsumerRecord(topic, 0, offset, 0, 0, key, value, None, len(key), len(value), ())


async def read_topic(
    bootstrap: str, topic: str, *, expected: int, timeout_s: float = 30, settle_s: float = 1.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic` from the beginning: waits until `expected` arrived, then
    `settle_s` longer (to catch duplicates beyond the count), or until `timeout_s`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records.extend(recs)
            if len(records) >= expected and settle_until is None:
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records


async def first_on_topic(
    bootstrap: str,
    topic: str,
    match: Callable[[ConsumerRecord[bytes, bytes]], bool],
    *,
    timeout_s: float = 30,
) -> ConsumerRecord[bytes, bytes]:
    """The first record of `topic`, from its beginning, that `match`es (AssertionError if
    none came within `timeout_s`)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                for r in recs:
                    if match(r):
                        return r
    finally:
        await consumer.stop()
    raise AssertionError(f"nothing on {topic} matched in {timeout_s} s")


async def read_feed(
    bootstrap: str,
    department: str,
    case_ids: set[str],
    until: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 40,
) -> list[dict[str, Any]]:
    """The messages about `case_ids` on a department's feed, from its beginning, until
    `until(messages so far)` holds or `timeout_s` passed. The feed topic may not exist yet
    (the notifier creates it on demand)."""
    consumer = AIOKafkaConsumer(
        topics.department_feed(department),
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    seen: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                seen += [json.loads(r.value) for r in recs if r.key.decode() in case_ids]
            if until(seen):
                break
    finally:
        await consumer.stop()
    return seen


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    """The topic's configuration as the broker reports it (defaults included)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        [resource] = response.resources
        return {entry[0]: entry[1] for entry in resource[4]}
    finally:
        await admin.close()
