"""Quiet consumers fetch each record as it comes; busy ones gather `fetch_min_bytes`."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.kafka import FetchTuner, Records, durable_subscriber, ensure_topics, make_broker
from shared.localstack import LocalStack
from shared.settings import KafkaSettings

BUSY = KafkaSettings(fetch_min_bytes=65_536, fetch_busy_per_s=100)


@dataclass
class _Fetcher:
    _fetch_min_bytes: int


@dataclass
class _Consumer:
    """What the tuner reads of an aiokafka consumer: its partitions' high watermarks."""

    highs: dict[TopicPartition, int | None]
    _fetcher: _Fetcher = field(default_factory=lambda: _Fetcher(65_536))

    def assignment(self) -> set[TopicPartition]:
        return set(self.highs)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highs[tp]


def test_the_minimum_follows_the_arrival_rate_with_hysteresis() -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = _Consumer({a: 0, b: None})
    tuner = FetchTuner(make_broker(BUSY, "test"), BUSY)
    assert tuner.tune(consumer, now=10.0) == 1  # no rate yet: quiet
    consumer.highs = {a: 60, b: 60}  # 120 records in a second
    assert tuner.tune(consumer, now=11.0) == 65_536
    consumer.highs = {a: 100, b: 80}  # 60/s: under busy, over half of it — stays busy
    assert tuner.tune(consumer, now=12.0) == 65_536
    consumer.highs = {a: 120, b: 100}  # 40/s
    assert tuner.tune(consumer, now=13.0) == 1
    consumer.highs = {a: 150, b: 110}  # 40/s → 80/s is no reason to gather again
    assert tuner.tune(consumer, now=13.5) == 1
    assert consumer._fetcher._fetch_min_bytes == 1


def test_a_consumer_without_the_attribute_is_left_alone() -> None:
    tuner = FetchTuner(make_broker(BUSY, "test"), BUSY)
    assert tuner.tune(object(), now=1.0) is None


async def test_a_quiet_consumer_gets_a_lone_record_before_the_fetch_wait(
    stack: LocalStack, topic: str
) -> None:
    """Against the pinned aiokafka and a real broker: with a 1 MB minimum and a 10 s wait the
    broker would hold the fetch for 10 s; tuned quiet, the record comes at once."""
    await ensure_topics(stack.kafka.bootstrap, [topic], partitions=1)
    settings = KafkaSettings(
        bootstrap_servers=stack.kafka.bootstrap, fetch_min_bytes=1_000_000, fetch_max_wait_ms=10_000
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka.bootstrap,
        enable_auto_commit=False,
        fetch_min_bytes=settings.fetch_min_bytes,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        assert FetchTuner(make_broker(settings, "test"), settings).tune(consumer, now=1.0) == 1
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])  # the first fetch goes out now, with the tuned minimum
        await consumer.seek_to_beginning(tp)
        await producer.send_and_wait(topic, b"lone report")
        record = await asyncio.wait_for(consumer.getone(), 5)
        assert record.value == b"lone report"
    finally:
        await producer.stop()
        await consumer.stop()


async def test_the_tuner_reaches_the_consumers_of_a_brokers_subscribers(
    stack: LocalStack, topic: str
) -> None:
    await ensure_topics(stack.kafka.bootstrap, [topic], partitions=1)
    settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap, fetch_min_bytes=50_000)
    broker = make_broker(settings, "test")

    @durable_subscriber(broker, topic, group_id="g-" + uuid.uuid4().hex[:8], batch=True)
    async def handle(records: Records) -> None:
        return None

    async with broker:
        await broker.start()
        [sub] = broker.subscribers
        fetcher = sub.consumer._fetcher  # type: ignore[attr-defined]
        assert fetcher._fetch_min_bytes == 50_000  # as configured, until the tuner looks
        await FetchTuner(broker, settings).sample()
        assert fetcher._fetch_min_bytes == 1
