"""A batch subscriber takes a record as soon as it comes, also after a quiet moment.

FastStream's batch loop slept out its whole poll timeout after every empty poll, so a record
arriving then waited for the nap to end; `shared.kafka.poll_batch` only polls."""

from __future__ import annotations

import asyncio
import time
import uuid

from shared.kafka import Records, durable_subscriber, ensure_topics, make_broker
from shared.localstack import LocalStack
from shared.settings import KafkaSettings

POLL_MS = 2_000  # long, so that the nap (were there one) would be plain to see


async def test_a_record_after_an_empty_poll_is_taken_at_once(stack: LocalStack, topic: str) -> None:
    await ensure_topics(stack.kafka.bootstrap, [topic], partitions=1)
    settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap, fetch_min_bytes=1)
    broker = make_broker(settings, "test")
    taken: dict[bytes, float] = {}
    arrived = asyncio.Event()

    @durable_subscriber(
        broker, topic, group_id="g-" + uuid.uuid4().hex[:8], batch=True, batch_timeout_ms=POLL_MS
    )
    async def handle(records: Records) -> None:
        for record in records:
            taken[record.value] = time.monotonic()
        arrived.set()

    async with broker:
        await broker.start()
        await broker.publish(b"first", topic=topic)
        await asyncio.wait_for(arrived.wait(), 60)  # the group is joined and polling
        # The next poll starts right after the handler and comes back empty after POLL_MS;
        # FastStream would then nap for POLL_MS more. Publish in the middle of that nap.
        await asyncio.sleep(POLL_MS / 1000 * 1.3)
        arrived.clear()
        published = time.monotonic()
        await broker.publish(b"second", topic=topic)
        await asyncio.wait_for(arrived.wait(), 30)
    waited = taken[b"second"] - published
    # taken within the poll that was waiting, well before the nap would have ended
    assert waited < POLL_MS / 1000 * 0.5, f"the record waited {waited:.2f}s"
