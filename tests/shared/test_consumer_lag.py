"""The consumer-lag metric: log end minus the group's committed offset, summed per topic."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from shared.kafka import ConsumerLag, committed_offsets, ensure_topics
from shared.localstack import LocalStack
from shared.metrics import REGISTRY


def _lag(group: str, topic: str) -> float | None:
    return REGISTRY.get_sample_value("griddispatch_consumer_lag", {"group": group, "topic": topic})


class _PerPartition:
    """A consumer with only aiokafka's public, one-partition `committed`."""

    def __init__(self, offsets: dict[TopicPartition, int | None]) -> None:
        self.offsets = offsets
        self.asked: list[TopicPartition] = []

    async def committed(self, tp: TopicPartition) -> int | None:
        self.asked.append(tp)
        return self.offsets[tp]


async def test_without_the_coordinator_call_each_partition_is_asked() -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer = _PerPartition({a: 7, b: None})
    assert await committed_offsets(consumer, [a, b]) == {a: 7}
    assert consumer.asked == [a, b]
    assert await committed_offsets(consumer, []) == {}


async def test_lag_is_log_end_minus_committed_in_one_request(stack: LocalStack, topic: str) -> None:
    """Against the pinned aiokafka and a real broker: three partitions, one committed to its
    end, one part way, one never; the committed offsets come in one OffsetFetch request."""
    await ensure_topics(stack.kafka.bootstrap, [topic], partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for partition, count in ((0, 5), (1, 7), (2, 4)):
            for i in range(count):
                await producer.send_and_wait(topic, f"{i}".encode(), partition=partition)
    finally:
        await producer.stop()
    group = f"lag-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(tps)
        seen = 0
        while seen < 16:  # fetched once: the consumer knows each partition's high watermark
            batches = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batches.values())
        await consumer.commit({tps[0]: OffsetAndMetadata(5, ""), tps[1]: OffsetAndMetadata(3, "")})

        requests: list[str] = []
        coordinator: Any = consumer._coordinator
        send = coordinator._send_req

        async def counted(request: Any) -> Any:
            requests.append(type(request).__name__)
            return await send(request)

        coordinator._send_req = counted
        assert await committed_offsets(consumer, tps) == {tps[0]: 5, tps[1]: 3}
        assert [r[: len("OffsetFetch")] for r in requests] == ["OffsetFetch"]  # one request

        broker = SimpleNamespace(subscribers=[SimpleNamespace(consumer=consumer, group_id=group)])
        await ConsumerLag(broker).sample()  # type: ignore[arg-type]
        assert _lag(group, topic) == 0 + (7 - 3) + 4
    finally:
        await consumer.stop()
