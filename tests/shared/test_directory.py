"""The department directory: what the router publishes and what the other services read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared import topics
from shared.directory import DepartmentDirectory, DepartmentEntry, DirectoryPublisher, changes
from shared.kafka import create_contract_topics, ensure_topics, make_producer
from shared.localstack import LocalStack
from shared.settings import KafkaSettings


def test_changes_name_new_renamed_and_removed_departments() -> None:
    published = {"roads": "市政道路", "water": "供水公司", "gone": "旧部门"}
    current = {"roads": "市政道路", "water": "市供水公司", "heating": "市供热公司"}
    out = dict(changes(published, current))
    assert set(out) == {"water", "heating", "gone"}  # roads is as published
    assert out["gone"] is None  # a tombstone
    assert DepartmentEntry.model_validate_json(out["water"] or b"").name == "市供水公司"
    assert changes(current, current) == []


def test_a_tombstone_forgets_and_a_bad_record_is_skipped() -> None:
    directory = DepartmentDirectory("unused:9092")
    directory.apply(b"roads", DepartmentEntry(code="roads", name="市政道路").to_json())
    directory.apply(b"water", b"not json")
    directory.apply(None, b"{}")
    assert directory.names == {"roads": "市政道路"}
    assert directory.name("roads") == "市政道路"
    assert directory.name(None) is None
    directory.apply(b"roads", None)
    assert directory.name("roads") is None


def test_readers_ignore_fields_they_do_not_know() -> None:
    later = orjson.dumps({"code": "roads", "name": "市政道路", "kind": "bureau"})
    assert DepartmentEntry.model_validate_json(later).name == "市政道路"


@contextlib.asynccontextmanager
async def following(directory: DepartmentDirectory) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(directory.run(stop))
    try:
        await asyncio.wait_for(directory.caught_up.wait(), 30)
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_publisher_and_readers_agree_through_a_real_broker(
    stack: LocalStack, topic: str
) -> None:
    await ensure_topics(
        stack.kafka.bootstrap, [topic], partitions=1, configs=topics.DIRECTORY_CONFIG
    )
    producer = make_producer(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test")
    await producer.start()
    current = {"roads": "市政道路", "water": "供水公司"}
    try:
        own = DepartmentDirectory(stack.kafka.bootstrap, topic=topic)
        reader = DepartmentDirectory(stack.kafka.bootstrap, topic=topic)
        publisher = DirectoryPublisher(producer, own, lambda: current, interval_s=60)
        async with following(own) as stop, following(reader):
            running = asyncio.create_task(publisher.run(stop))
            await eventually(lambda: reader.names == current)
            # a rename and a removal reach readers when the publisher is woken (a reload)
            current = {"roads": "市政道路管理处"}
            publisher.wake.set()
            await eventually(lambda: reader.names == current)
            stop.set()
            await asyncio.wait_for(running, 10)

        # A restarted router reads the directory first and publishes nothing new.
        again = DepartmentDirectory(stack.kafka.bootstrap, topic=topic)
        async with following(again):
            assert again.names == current
            assert await DirectoryPublisher(producer, again, lambda: current).publish() == 0
    finally:
        await producer.stop()

    # What is on the topic: values, then the rename, then water's tombstone, keyed by code.
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka.bootstrap, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=5000)
        records = [(r.key, r.value) for r in batch.get(tp, [])]
    finally:
        await consumer.stop()
    assert (b"water", None) in records
    assert len(records) == 4  # roads, water, the rename, the tombstone: no repeats


async def test_a_reader_waits_for_a_topic_that_does_not_exist_yet(
    stack: LocalStack, topic: str
) -> None:
    directory = DepartmentDirectory(stack.kafka.bootstrap, topic=topic)
    stop = asyncio.Event()
    task = asyncio.create_task(directory.run(stop))
    try:
        await asyncio.sleep(1.5)
        assert not directory.caught_up.is_set()
        await ensure_topics(stack.kafka.bootstrap, [topic], partitions=1)
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
        await producer.start()
        try:
            entry = DepartmentEntry(code="gas", name="燃气公司")
            await producer.send_and_wait(topic, entry.to_json(), key=b"gas")
        finally:
            await producer.stop()
        await eventually(lambda: directory.name("gas") == "燃气公司", timeout_s=30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_contract_creates_the_directory_compacted(stack: LocalStack) -> None:
    await create_contract_topics(stack.kafka.bootstrap, partitions=6)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topics.DEPARTMENTS])
        [config] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topics.DEPARTMENTS)]
        )
    finally:
        await admin.close()
    assert len(described["partitions"]) == 1
    values = {c[0]: c[1] for c in config.resources[0][4]}
    assert values["cleanup.policy"] == "compact"
