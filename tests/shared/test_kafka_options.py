"""What every durable subscriber is given, without a broker running."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared.kafka import BATCH_TIMEOUT_MS, durable_subscriber, make_broker, undecoded
from shared.localstack import LocalStack
from shared.settings import KafkaSettings


def _options(monkeypatch: pytest.MonkeyPatch, settings: KafkaSettings, **kw: Any) -> dict[str, Any]:
    broker = make_broker(settings, "test")
    seen: dict[str, Any] = {}

    def subscriber(*_: Any, **options: Any) -> Any:
        seen.update(options)
        return lambda handler: handler

    monkeypatch.setattr(broker, "subscriber", subscriber)
    durable_subscriber(broker, "a-topic", group_id="g", **kw)
    return seen


def test_subscribers_use_their_brokers_fetch_options_and_read_raw_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = _options(
        monkeypatch, KafkaSettings(fetch_max_wait_ms=250, fetch_min_bytes=4096), batch=True
    )
    assert seen["fetch_max_wait_ms"] == 250
    assert seen["fetch_min_bytes"] == 4096
    assert seen["batch_timeout_ms"] == BATCH_TIMEOUT_MS
    assert seen["decoder"] is undecoded
    assert seen["auto_offset_reset"] == "earliest"
    default = _options(monkeypatch, KafkaSettings())
    assert default["fetch_max_wait_ms"] == KafkaSettings().fetch_max_wait_ms
    assert default["fetch_min_bytes"] == KafkaSettings().fetch_min_bytes
    assert "batch_timeout_ms" not in default  # single-message subscribers have no batch loop


async def test_decoding_a_batch_without_a_dead_letter_topic_raises() -> None:
    from aiokafka import ConsumerRecord

    from shared.events import CaseAcknowledged, DecodeError, wrap
    from shared.kafka import decode_records

    good = wrap(CaseAcknowledged(by="w"), case_id="c", producer="p")

    def record(value: bytes) -> ConsumerRecord:
        return ConsumerRecord("t", 0, 0, 0, 0, b"c", value, None, 0, len(value), ())

    assert [env for env, _ in await decode_records([record(good.to_json())], None)] == [good]
    with pytest.raises(DecodeError):
        await decode_records([record(good.to_json()), record(b"not json")], None)


async def test_new_topics_have_leaders_and_impossible_ones_are_refused_loudly(
    stack: LocalStack,
) -> None:
    import uuid

    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from shared.kafka import ensure_topics

    name = f"test.leaders.{uuid.uuid4().hex[:8]}"
    assert await ensure_topics(stack.kafka.bootstrap, [name], partitions=6) == [name]
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap)
    await admin.start()
    try:
        (topic,) = await admin.describe_topics([name])
        assert len(topic["partitions"]) == 6
        assert all(p["leader"] >= 0 for p in topic["partitions"])
    finally:
        await admin.close()
    assert await ensure_topics(stack.kafka.bootstrap, [name], partitions=6) == []
    with pytest.raises(KafkaError, match="replication"):  # one broker here
        await ensure_topics(
            stack.kafka.bootstrap, [name + ".x"], partitions=1, replication_factor=3
        )


async def test_the_first_writes_to_new_topics_are_not_refused(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    """The notifier creates a department's feed topic and writes to it at once. Before
    ensure_topics waited for the leaders to serve, ~8 of 12 such first writes met
    NotLeaderForPartition (retried by aiokafka, with a WARNING each)."""
    import asyncio
    import uuid

    from shared.kafka import ensure_topics, make_producer

    producer = make_producer(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "t")
    await producer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            for _ in range(3):
                name = f"dept.test-{uuid.uuid4().hex[:8]}"
                await ensure_topics(stack.kafka.bootstrap, [name], partitions=12)
                await asyncio.gather(
                    *(producer.send_and_wait(name, b"x", partition=p) for p in range(12))
                )
    finally:
        await producer.stop()
    assert not [r for r in caplog.records if "NotLeader" in r.getMessage()]


def test_the_broker_logger_drops_only_faststreams_topic_creation_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_broker(KafkaSettings(), "quiet")
    make_broker(KafkaSettings(), "quiet")  # a second broker adds no second filter
    logger = logging.getLogger("griddispatch.quiet.broker")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Auto create topics is disabled. Make sure the topics exist.")
        logger.warning("Topic cases.intake not found in cluster metadata")
    assert [r.getMessage() for r in caplog.records] == [
        "Topic cases.intake not found in cluster metadata"
    ]
