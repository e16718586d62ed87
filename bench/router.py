"""The router at city scale (20,430 grids, 21,237 workers).

    .venv/bin/python bench/router.py [--cases 50000] [--processes N]

Prints: single grid lookup p50/p99, batch lookups/s, one full decision, the process RSS with the
city loaded, and routed cases/s through the real broker and database (consume `cases.intake`,
decide, record, publish to `cases.lifecycle`, commit) against a bare aiokafka consume→produce
passthrough of the same messages, in the same run (with our producers' options; and, for
reference, with aiokafka's own pure-Python partitioner); then how fast the open-case counts fold
every routed case's resolution and closing. With `--processes N` both the router and
the passthrough also run as N processes sharing the 12 partitions (as N router replicas of one
consumer group do; partitions assigned up front so that no rebalance falls into the timing).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from bench._tools import bench_stack, cpu_seconds
from services.router import democity, snapshot, store
from services.router.decide import CaseFacts, decide
from services.router.dispatch import Dispatcher, RouterState, fold_lifecycle
from services.router.settings import MIGRATIONS
from shared import events, topics
from shared.db import create_pool, migrate
from shared.events import wrap
from shared.kafka import ensure_topics, fetch_options, make_producer, producer_options
from shared.localstack import LocalStack
from shared.service import settle_heap
from shared.settings import KafkaSettings

CATEGORIES = [
    "roads.pothole",
    "streetlight.out",
    "heating.outage",
    "sanitation.garbage",
    "water.outage",
    "noise.neighbourhood",
    "dispute.neighbour",
]


def lookups(city: democity.City) -> None:
    rss_before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    ref = snapshot.from_city(city)
    build_s = time.perf_counter() - t0
    rss = psutil.Process().memory_info().rss
    rng = random.Random(42)
    points = [
        (rng.uniform(democity.SOUTH, democity.NORTH), rng.uniform(democity.WEST, democity.EAST))
        for _ in range(100_000)
    ]
    locate = ref.index.locate
    for lat, lon in points[:5000]:  # warm-up
        locate(lat, lon)
    samples = []
    clock = time.perf_counter_ns
    for lat, lon in points:
        t = clock()
        locate(lat, lon)
        samples.append(clock() - t)
    samples.sort()
    t0 = time.perf_counter()
    for lat, lon in points:
        locate(lat, lon)
    batch_rate = len(points) / (time.perf_counter() - t0)
    cases = [
        CaseFacts(
            "c",
            rng.choice(CATEGORIES),
            "问题",
            events.Location(lat=lat, lon=lon),
            datetime(2026, 1, 10, tzinfo=UTC),
        )
        for lat, lon in points[:20_000]
    ]
    t0 = time.perf_counter()
    for c in cases:
        decide(c, ref, open_cases={}, explain=False)
    decide_us = (time.perf_counter() - t0) / len(cases) * 1e6
    workers = ref.stats()["workers"]
    print(f"city: {len(ref.grids):,} grids, {workers:,} workers; index built in {build_s:.2f}s")
    print(
        f"single lookup            p50 {samples[len(samples) // 2] / 1000:6.1f} µs   "
        f"p99 {samples[int(len(samples) * 0.99)] / 1000:6.1f} µs   "
        f"(mean {statistics.fmean(samples) / 1000:.1f} µs)"
    )
    print(f"batch lookups            {batch_rate:>10,.0f} /s")
    print(f"full decision            {decide_us:8.1f} µs   (grid, rules, worker, chain, event)")
    snap_mb = (rss - rss_before) / 2**20
    print(f"process RSS, city loaded {rss / 2**20:8.0f} MB   ({snap_mb:.0f} MB for the snapshot)")


def _reports(city: democity.City, n: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of `n` reports at random points, keyed by case id as intake keys them."""
    rng = random.Random(9)
    out = []
    for _ in range(n):
        lat = rng.uniform(democity.SOUTH, democity.NORTH)
        lon = rng.uniform(democity.WEST, democity.EAST)
        env = wrap(
            events.CaseReported(
                category=rng.choice(CATEGORIES),
                description="问题描述",
                location=events.Location(lat=lat, lon=lon),
                channel=events.Channel.APP,
                reported_at=datetime.now(UTC),
            ),
            case_id=str(uuid.uuid4()),
            producer="bench",
        )
        out.append((env.case_id.encode(), env.to_json()))
    return out


async def _fill(stack: LocalStack, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka.bootstrap, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    futures = [await producer.send(topics.CASES_INTAKE, v, key=k) for k, v in messages]
    await asyncio.gather(*futures)
    await producer.stop()


async def _consume_loop(stack: LocalStack, group: str, n: int, handle) -> float:
    consumer = AIOKafkaConsumer(
        topics.CASES_INTAKE,
        bootstrap_servers=stack.kafka.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=500,
        **fetch_options(KafkaSettings()),  # as the services' subscribers (shared/kafka.py)
    )
    await consumer.start()
    done = 0
    batches = 0
    started = None
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            records = [r for recs in batch.values() for r in recs]
            if not records:
                continue
            if started is None:
                started = time.perf_counter()
            await handle(records)
            await consumer.commit()
            done += len(records)
            batches += 1
    finally:
        await consumer.stop()
    elapsed = time.perf_counter() - (started or time.perf_counter())
    per = done / max(batches, 1)
    print(f"  {group}: {done:,} messages in {batches:,} batches ({per:.0f} per batch)")
    return elapsed


async def _passthrough(stack: LocalStack, group: str, n: int, producer: AIOKafkaProducer) -> float:
    """The bare baseline: consume the reports and produce each one unchanged with `producer`;
    returns the seconds it took."""
    await producer.start()

    async def passthrough(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        futures = [await producer.send("bench.passthrough", r.value, key=r.key) for r in records]
        await asyncio.gather(*futures)

    try:
        before = cpu_seconds({})
        seconds = await _consume_loop(stack, group, n, passthrough)
        print_cpu(group, before, seconds)
        return seconds
    finally:
        await producer.stop()


async def through_broker(stack: LocalStack, city: democity.City, n: int) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    await migrate(conn, "router", MIGRATIONS)
    await store.load_city(conn, city)
    ref = await store.load_reference(conn)
    await conn.close()
    await ensure_topics(stack.kafka.bootstrap, ["bench.passthrough"], partitions=12)
    await _fill(stack, _reports(city, n))
    settings = KafkaSettings(bootstrap_servers=stack.kafka.bootstrap)
    settle_heap()  # as a service does once started (both phases run after it)

    bare_s = await _passthrough(stack, "bench-bare", n, make_producer(settings, "bench-bare"))
    # For reference: the same passthrough with aiokafka's own partitioner (pure-Python
    # murmur2), as a producer built with aiokafka's defaults has it. The ratio is taken
    # against the faster passthrough above, which shares our producers' options.
    stock = dict(producer_options(settings, "bench-stock"))
    del stock["partitioner"]
    stock_s = await _passthrough(stack, "bench-stock", n, AIOKafkaProducer(**stock))

    pool = await create_pool(stack.postgres.url, "router", max_size=4)
    producer = make_producer(settings, "bench-router")
    await producer.start()
    dispatcher = Dispatcher(pool, producer, RouterState(ref), None)
    before = cpu_seconds({})
    router_s = await _consume_loop(stack, "bench-router", n, dispatcher.handle)
    print_cpu("router", before, router_s)
    await producer.stop()
    fold_s, folded = await _fold_resolutions(pool, dispatcher.state)
    await pool.close()
    print(f"cases through the broker {n:,} (12 partitions, batches of ≤500)")
    print(f"router (decide+record+publish) {n / router_s:>8,.0f} cases/s")
    print(f"bare consume→produce           {n / bare_s:>8,.0f} msgs/s")
    print(f"ratio router / bare            {bare_s / router_s:>8.2f}")
    print(
        f"  (bare with aiokafka's own pure-Python partitioner {n / stock_s:,.0f} msgs/s; "
        f"ratio against it {stock_s / router_s:.2f})"
    )
    print(
        f"open-case counts: {folded:,} lifecycle events (resolved, closed) folded at "
        f"{folded / fold_s:,.0f} /s"
    )


async def _fold_resolutions(pool: asyncpg.Pool, state: RouterState) -> tuple[float, int]:
    """Every routed case resolved and closed, folded into the open-case counts in batches of
    1,000 (as the router's lifecycle subscriber takes them). Returns (seconds, events)."""
    async with pool.acquire() as conn:
        case_ids = [r["case_id"] for r in await conn.fetch("SELECT case_id FROM router.cases")]
        records = []
        for case_id in case_ids:
            for event in (events.CaseResolved(by="w", note="修好了"), events.CaseClosed(by="op")):
                value = wrap(event, case_id=case_id, producer="bench").to_json()
                records.append(
                    ConsumerRecord(
                        topics.CASES_LIFECYCLE, 0, 0, 0, 0, None, value, None, 0, len(value), ()
                    )
                )
        started = time.perf_counter()
        for i in range(0, len(records), 1000):
            await fold_lifecycle(conn, state, records[i : i + 1000])
        return time.perf_counter() - started, len(records)


async def _replica(
    bootstrap: str, dsn: str, kind: str, partitions: list[int], ready: Any, go: Any, out: Any
) -> None:
    """One process of the N: its share of the partitions, consumed to their end."""
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    producer = make_producer(settings, f"bench-{kind}")
    await producer.start()
    pool = None
    handle: Callable[[Sequence[Any]], Awaitable[object]]
    if kind == "router":
        pool = await create_pool(dsn, "router", max_size=4)
        async with pool.acquire() as conn:
            ref = await store.load_reference(conn)
        dispatcher = Dispatcher(pool, producer, RouterState(ref), None)
        handle = dispatcher.handle
    else:

        async def passthrough(records: Sequence[Any]) -> None:
            futures = [
                await producer.send("bench.passthrough", r.value, key=r.key) for r in records
            ]
            await asyncio.gather(*futures)

        handle = passthrough
    settle_heap()  # as a service does once started

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-{kind}-replicas",
        enable_auto_commit=False,
        max_poll_records=500,
        **fetch_options(KafkaSettings()),
    )
    await consumer.start()
    tps = [TopicPartition(topics.CASES_INTAKE, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    ends = await consumer.end_offsets(tps)
    ready.set()
    while not go.is_set():
        await asyncio.sleep(0.01)
    started = time.time()
    done = 0
    while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
        batch = await consumer.getmany(timeout_ms=500, max_records=500)
        records = [r for recs in batch.values() for r in recs]
        if records:
            await handle(records)
            await consumer.commit()
            done += len(records)
    out.put((started, time.time(), done))
    await consumer.stop()
    await producer.stop()
    if pool is not None:
        await pool.close()


def print_cpu(
    label: str, before: dict[str, float], seconds: float, owner: dict[int, str] | None = None
) -> None:
    """Where the two cores went during a phase: CPU seconds per part, as a share of the
    phase's wall time (200% = both cores)."""
    used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(owner or {}).items()}
    print(
        f"  CPU during {label}: "
        + ", ".join(
            f"{k} {v / seconds:.0%}" for k, v in sorted(used.items(), key=lambda x: -x[1]) if v > 0
        )
    )


def _replica_main(*args: Any) -> None:
    asyncio.run(_replica(*args))


def in_processes(stack: LocalStack, kind: str, n_procs: int) -> tuple[int, float]:
    """(messages, seconds) for `kind` ("router" or "bare") in `n_procs` processes."""
    if kind == "router":  # decide afresh, as the single process did: no stored decisions

        async def forget() -> None:
            conn = await asyncpg.connect(stack.postgres.url)
            await conn.execute("TRUNCATE router.decisions, router.cases")
            await conn.close()

        asyncio.run(forget())
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    readies, procs = [], []
    for i in range(n_procs):
        ready = ctx.Event()
        parts = [p for p in range(12) if p % n_procs == i]
        proc = ctx.Process(
            target=_replica_main,
            args=(stack.kafka.bootstrap, stack.postgres.url, kind, parts, ready, go, out),
        )
        proc.start()
        readies.append(ready)
        procs.append(proc)
    for ready in readies:
        ready.wait(300)
    go.set()
    before = cpu_seconds({p.pid: kind for p in procs if p.pid is not None})
    results = [out.get(timeout=900) for _ in procs]
    used = max(r[1] for r in results) - min(r[0] for r in results)
    print_cpu(f"{kind} ×{n_procs}", before, used, {p.pid: kind for p in procs if p.pid})
    for proc in procs:
        proc.join(60)
    done = sum(r[2] for r in results)
    return done, max(r[1] for r in results) - min(r[0] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=1, help="also run N replicas of each")
    args = parser.parse_args()
    city = democity.generate(seed=1, scale="city")
    lookups(city)
    with bench_stack() as stack:
        asyncio.run(through_broker(stack, city, args.cases))
        if args.processes > 1:
            n, router_s = in_processes(stack, "router", args.processes)
            m, bare_s = in_processes(stack, "bare", args.processes)
            print(f"in {args.processes} processes each ({n:,} cases, {m:,} messages):")
            print(f"router (decide+record+publish) {n / router_s:>8,.0f} cases/s")
            print(f"bare consume→produce           {m / bare_s:>8,.0f} msgs/s")
            print(f"ratio router / bare            {(n / router_s) / (m / bare_s):>8.2f}")


if __name__ == "__main__":
    main()
