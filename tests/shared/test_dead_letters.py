"""Poison messages go to the DLQ and the consumer goes on; transient failures are retried."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.events import CaseAcknowledged, decode, wrap
from shared.kafka import DeadLetters, Records, durable_subscriber, ensure_topics, make_broker
from shared.localstack import LocalStack
from shared.settings import KafkaSettings
from shared.topics import dlq
from tests.helpers.kafka import read_topic


async def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=b"case-1")
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        total = 0
        for p in parts:
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def test_poison_message_is_dead_lettered_and_the_next_one_processed(
    stack: LocalStack, topic: str
) -> None:
    await ensure_topics(stack.kafka.bootstrap, [topic, dlq(topic)], partitions=1)
    broker = make_broker(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test")
    dead = DeadLetters(broker, "test-consumer")
    processed: list[str] = []
    done = asyncio.Event()
    group = "g-" + uuid.uuid4().hex[:8]

    @durable_subscriber(broker, topic, group_id=group)
    async def handle(records: Records) -> None:
        [record] = records
        async with dead.guard(record):
            env, _ = decode(record.value)
            processed.append(env.case_id)
            done.set()

    good = wrap(CaseAcknowledged(by="w-1"), case_id="case-1", producer="test")
    await _send(stack.kafka.bootstrap, topic, [b"{not an envelope", good.to_json()])
    async with broker:
        await broker.start()
        await asyncio.wait_for(done.wait(), 30)
        await asyncio.sleep(0.5)
    assert processed == ["case-1"]

    [poison] = await read_topic(stack.kafka.bootstrap, dlq(topic), expected=1)
    headers = {k: v.decode() for k, v in poison.headers}
    assert poison.value == b"{not an envelope"
    assert poison.key == b"case-1"
    assert headers["x-dlq-error-type"] == "DecodeError"
    assert "Invalid JSON" in headers["x-dlq-error"]
    assert headers["x-dlq-topic"] == topic
    assert headers["x-dlq-offset"] == "0"
    assert headers["x-dlq-consumer"] == "test-consumer"
    # both messages are committed: nothing is redelivered to the group
    assert await _committed(stack.kafka.bootstrap, group, topic) == 2


async def test_a_transient_failure_is_retried_not_dead_lettered(
    stack: LocalStack, topic: str
) -> None:
    await ensure_topics(stack.kafka.bootstrap, [topic, dlq(topic)], partitions=1)
    broker = make_broker(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test")
    dead = DeadLetters(broker, "test-consumer")
    attempts: list[int] = []
    times: list[float] = []
    done = asyncio.Event()

    @durable_subscriber(broker, topic, group_id="g-" + uuid.uuid4().hex[:8], retry_pause_s=0.1)
    async def handle(records: Records) -> None:
        [record] = records
        async with dead.guard(record):
            attempts.append(record.offset)
            times.append(time.monotonic())
            if len(attempts) < 3:
                raise ConnectionError("database went away")
            done.set()

    good = wrap(CaseAcknowledged(by="w-1"), case_id="case-1", producer="test")
    await _send(stack.kafka.bootstrap, topic, [good.to_json()])
    async with broker:
        await broker.start()
        await asyncio.wait_for(done.wait(), 30)
    assert attempts == [0, 0, 0]
    # each retry after the subscriber's pause, not in a hot loop
    assert all(later - earlier >= 0.1 for earlier, later in itertools.pairwise(times))
    assert await read_topic(stack.kafka.bootstrap, dlq(topic), expected=1, timeout_s=2) == []
