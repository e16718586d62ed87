"""A durable subscriber's handler gets the records as they came, on the event loop's thread."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import anyio.to_thread
import pytest
from aiokafka import ConsumerRecord

from shared.kafka import Records, durable_subscriber, ensure_topics, make_broker
from shared.localstack import LocalStack
from shared.settings import KafkaSettings


@pytest.mark.parametrize("batch", [True, False])
async def test_the_handler_gets_the_raw_records_without_a_worker_thread(
    stack: LocalStack, topic: str, monkeypatch: pytest.MonkeyPatch, batch: bool
) -> None:
    """FastStream resolved a `KafkaMessage` parameter from its context in anyio's worker
    threads, one hop per call; the handlers take the decoded records instead."""
    await ensure_topics(stack.kafka.bootstrap, [topic], partitions=1)
    hops: list[Any] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    broker = make_broker(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test")
    got: list[ConsumerRecord[Any, Any]] = []
    done = asyncio.Event()

    @durable_subscriber(broker, topic, group_id="g-" + uuid.uuid4().hex[:8], batch=batch)
    async def handle(records: Records) -> None:
        assert isinstance(records, tuple)
        got.extend(records)
        if len(got) == 3:
            done.set()

    async with broker:
        await broker.start()
        for value in (b"a", b"b", b"c"):
            await broker.publish(value, topic=topic, key=b"k")
        await asyncio.wait_for(done.wait(), 60)
    assert all(isinstance(r, ConsumerRecord) for r in got)
    assert [(r.value, r.key, r.topic) for r in got] == [(v, b"k", topic) for v in b"a b c".split()]
    assert hops == []
