"""The outbox relay on the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import OUTBOX_MIGRATIONS, migrate
from shared.kafka import ensure_topics, make_producer
from shared.localstack import LocalStack
from shared.outbox import Outbox, OutboxRelay
from shared.settings import PROJECT_ROOT, KafkaSettings
from tests.helpers.kafka import read_topic
from tests.helpers.outbox import fill_outbox, per_case_sequences


@pytest.fixture
async def outbox_schema(db: asyncpg.Connection, schema: str, stack: LocalStack, topic: str) -> str:
    await migrate(db, schema, [OUTBOX_MIGRATIONS])
    await ensure_topics(stack.kafka.bootstrap, [topic], partitions=6)
    return schema


@contextlib.asynccontextmanager
async def running_relay(
    stack: LocalStack,
    schema: str,
    relay_class: type[OutboxRelay] = OutboxRelay,
    poll_interval_s: float = 0.2,
    **kw,
) -> AsyncIterator[OutboxRelay]:
    producer = make_producer(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test")
    await producer.start()
    relay = relay_class(stack.postgres.url, schema, producer, poll_interval_s=poll_interval_s, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await producer.stop()


async def _drained(db: asyncpg.Connection, schema: str, timeout_s: float = 30) -> None:
    for _ in range(int(timeout_s * 10)):
        if await db.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("outbox did not drain")


async def test_relay_publishes_every_row_once_in_per_case_order(
    stack: LocalStack, db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    ids = await fill_outbox(db, outbox_schema, topic, cases=40, per_case=25)
    async with running_relay(stack, outbox_schema, batch_size=150):
        await _drained(db, outbox_schema)
    records = await read_topic(stack.kafka.bootstrap, topic, expected=len(ids))
    got = [json.loads(r.value)["event_id"] for r in records]
    assert sorted(got) == sorted(ids)  # every row, exactly once
    assert per_case_sequences(records) == {f"case-{c}": list(range(25)) for c in range(40)}
    # the Kafka key is the case id, so one case lives on one partition
    partitions: dict[bytes, set[int]] = {}
    for r in records:
        partitions.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())


async def test_rows_written_while_relay_runs_are_woken_by_notify(
    stack: LocalStack, db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    # A long poll interval: only LISTEN/NOTIFY can make this fast.
    async with running_relay(stack, outbox_schema, poll_interval_s=30) as relay:
        for _ in range(50):
            if relay.is_leader:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        ids = await fill_outbox(db, outbox_schema, topic, cases=3, per_case=1)
        await _drained(db, outbox_schema, timeout_s=5)
    records = await read_topic(stack.kafka.bootstrap, topic, expected=len(ids), settle_s=0.2)
    assert len(records) == 3


async def test_a_row_written_while_a_batch_is_in_flight_is_not_left_for_the_poll(
    stack: LocalStack, db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    """Its NOTIFY arrives while the relay is busy; the relay must not forget it when it goes
    back to sleep (it would then wait a whole poll interval, here ten minutes)."""
    written: list[str] = []

    class WriterDuringBatch(OutboxRelay):
        async def after_publish(self, rows: list[asyncpg.Record]) -> None:
            if not written:  # once: a report arrives while the first batch is being published
                conn = await asyncpg.connect(stack.postgres.url)
                try:
                    written.extend(
                        await fill_outbox(conn, outbox_schema, topic, cases=2, per_case=1)
                    )
                finally:
                    await conn.close()

    first = await fill_outbox(db, outbox_schema, topic, cases=3, per_case=1)
    async with running_relay(stack, outbox_schema, WriterDuringBatch, poll_interval_s=600):
        await _drained(db, outbox_schema, timeout_s=60)
    assert len(written) == 2
    records = await read_topic(stack.kafka.bootstrap, topic, expected=5, settle_s=0.2)
    assert sorted(json.loads(r.value)["event_id"] for r in records) == sorted(first + written)


async def test_relay_killed_between_publish_and_delete_republishes_with_same_event_ids(
    stack: LocalStack, db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    ids = await fill_outbox(db, outbox_schema, topic, cases=20, per_case=25)  # 500 rows
    crashed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.helpers.crashing_relay",
            stack.postgres.url,
            outbox_schema,
            stack.kafka.bootstrap,
            "100",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == -9, crashed.stderr
    # The first batch was deleted; the second was published but is still in the outbox.
    assert await db.fetchval(f"SELECT count(*) FROM {outbox_schema}.outbox") == 400

    async with running_relay(stack, outbox_schema, batch_size=100):
        await _drained(db, outbox_schema)

    records = await read_topic(stack.kafka.bootstrap, topic, expected=600)
    assert len(records) == 600  # 500 + the 100 published twice
    by_id: dict[str, set[bytes]] = {}
    for r in records:
        by_id.setdefault(json.loads(r.value)["event_id"], set()).add(r.value)
    assert sorted(by_id) == sorted(ids)
    # a duplicate is the very same message: same event_id, same bytes
    assert all(len(values) == 1 for values in by_id.values())
    assert per_case_sequences(records) == {f"case-{c}": list(range(25)) for c in range(20)}


async def test_only_one_relay_per_schema_is_active(
    stack: LocalStack, db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    async with (
        running_relay(stack, outbox_schema) as first,
        running_relay(stack, outbox_schema) as second,
    ):
        await asyncio.sleep(1.0)
        assert [first.is_leader, second.is_leader].count(True) == 1
        ids = await fill_outbox(db, outbox_schema, topic, cases=5, per_case=10)
        await _drained(db, outbox_schema)
    records = await read_topic(stack.kafka.bootstrap, topic, expected=len(ids))
    assert sorted(json.loads(r.value)["event_id"] for r in records) == sorted(ids)


async def test_outbox_add_outside_a_transaction_is_refused(
    db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    from shared.events import CaseAcknowledged, wrap

    with pytest.raises(RuntimeError, match="inside the caller's transaction"):
        await Outbox(outbox_schema).add(
            db, wrap(CaseAcknowledged(by="x"), case_id="c", producer="t"), topic=topic
        )


async def test_kafka_console_consumer_reads_a_relayed_envelope(
    stack: LocalStack, db: asyncpg.Connection, outbox_schema: str, topic: str
) -> None:
    ids = await fill_outbox(db, outbox_schema, topic, cases=1, per_case=1)
    async with running_relay(stack, outbox_schema):
        await _drained(db, outbox_schema)
    libs = next(stack.kafka.cache.glob("kafka-*/libs"))
    out = subprocess.run(
        [
            "java",
            "-Xmx128m",
            "-cp",
            f"{libs}/*",
            f"-Dlog4j2.configurationFile={PROJECT_ROOT}/deploy/local/kafka/log4j2.properties",
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            "--bootstrap-server",
            stack.kafka.bootstrap,
            "--topic",
            topic,
            "--from-beginning",
            "--max-messages",
            "1",
            "--timeout-ms",
            "20000",
            "--property",
            "print.key=true",
            "--property",
            "key.separator=|",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if "|" in line)
    key, value = line.split("|", 1)
    envelope = json.loads(value)
    assert key == "case-0"
    assert envelope["event_id"] == ids[0]
    assert envelope["event_type"] == "CaseProgressed"
    assert envelope["payload"]["note"] == "0"
