"""Outbox relay throughput against a bare aiokafka producer, and Kafka's cold start.

    .venv/bin/python bench/outbox.py [--rows 100000] [--cases 2000]

Starts its own Kafka and PostgreSQL (free ports, temporary folder), so nothing else on the
machine is touched. Both the relay and the baseline use the same producer options
(`acks=all`, idempotence) and send the same payloads to topics with the same partitions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import asyncpg

from shared.db import OUTBOX_MIGRATIONS, migrate
from shared.events import CaseProgressed, wrap
from shared.kafka import ensure_topics, make_producer
from shared.localstack import LocalStack
from shared.outbox import Outbox, OutboxRelay
from shared.settings import PROJECT_ROOT, KafkaSettings


async def fill(
    url: str, schema: str, topic: str, rows: int, cases: int
) -> list[tuple[bytes, bytes]]:
    conn = await asyncpg.connect(url)
    outbox = Outbox(schema)
    payloads: list[tuple[bytes, bytes]] = []
    try:
        for start in range(0, rows, 5000):
            items = []
            for i in range(start, min(rows, start + 5000)):
                env = wrap(
                    CaseProgressed(by="worker-0042", note="Heating restored in unit 3, floor 5"),
                    case_id=f"case-{i % cases}",
                    producer="bench",
                )
                items.append((env, topic))
                payloads.append((env.case_id.encode(), env.to_json()))
            async with conn.transaction():
                await outbox.add_many(conn, items)
    finally:
        await conn.close()
    return payloads


async def run_relay(stack: LocalStack, schema: str, rows: int) -> float:
    settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap)
    producer = make_producer(settings, "bench-relay")
    await producer.start()
    relay = OutboxRelay(stack.postgres.url, schema, producer, batch_size=2000, poll_interval_s=0.05)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(relay.run(stop))
    while relay.published < rows:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await producer.stop()
    return elapsed


async def run_bare(stack: LocalStack, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap)
    producer = make_producer(settings, "bench-bare")
    await producer.start()
    started = time.perf_counter()
    futures = [await producer.send(topic, value=v, key=k) for k, v in payloads]
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await producer.stop()
    return elapsed


async def bench(stack: LocalStack, rows: int, cases: int) -> None:
    schema, relay_topic, bare_topic = "bench_outbox", "bench.relay", "bench.bare"
    conn = await asyncpg.connect(stack.postgres.url)
    await migrate(conn, schema, [OUTBOX_MIGRATIONS])
    await conn.close()
    await ensure_topics(stack.kafka.bootstrap, [relay_topic, bare_topic], partitions=12)

    # warm-up: connections, metadata, JIT of the broker
    warm = await fill(stack.postgres.url, schema, relay_topic, 2000, cases)
    await run_relay(stack, schema, 2000)
    await run_bare(stack, bare_topic, warm)

    payloads = await fill(stack.postgres.url, schema, relay_topic, rows, cases)
    size = sum(len(v) for _, v in payloads) / len(payloads)
    bare_s = await run_bare(stack, bare_topic, payloads)
    relay_s = await run_relay(stack, schema, rows)
    relay_rate, bare_rate = rows / relay_s, rows / bare_s
    print(f"rows                      {rows:>10,}  ({cases} cases, {size:.0f}-byte envelopes)")
    print(f"outbox relay (acks=all)   {relay_rate:>10,.0f} rows/s   ({relay_s:.2f}s)")
    print(f"bare aiokafka producer    {bare_rate:>10,.0f} rows/s   ({bare_s:.2f}s)")
    print(f"ratio relay / bare        {relay_rate / bare_rate:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--cases", type=int, default=2_000)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="griddispatch-bench-"))
    os.chmod(home, 0o755)
    stack = LocalStack.ephemeral(home, PROJECT_ROOT / ".local" / "cache", partitions=12)
    # Benchmarks keep PostgreSQL durable (fsync on), unlike the tests.
    stack.postgres.settings = {}
    try:
        stack.kafka.start(lambda _: None)  # fetch jars if needed, then measure a cold start
        stack.kafka.stop()
        shutil.rmtree(stack.kafka.home)
        t0 = time.perf_counter()
        timings = stack.up(lambda _: None)
        cold = time.perf_counter() - t0
        print(
            f"kafka cold start          {timings['kafka']:>10.2f} s launch→ready "
            f"({cold:.2f}s incl. storage format, PostgreSQL start and topic creation)"
        )
        asyncio.run(bench(stack, args.rows, args.cases))
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
