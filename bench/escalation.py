"""Escalation timers at scale.

    .venv/bin/python bench/escalation.py [--pending 1000000]

With `--pending` timers waiting in PostgreSQL (durable, fsync on), prints:
1. escalations fired (claimed, written to the outbox, next rung armed) and published to Kafka
   per second, for `--burst` timers (200,000) due at once, by `--processes` scheduler replicas;
2. firing lateness p50/p99 when 1,000 timers per second fall due for 10 s;
3. the cost of one claim-and-fire batch (500 timers) with 10,000 pending against `--pending`
   pending, and their ratio (the claim must not slow down as the backlog grows).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from datetime import UTC, datetime
from multiprocessing.sharedctypes import Synchronized

import asyncpg

from bench._tools import bench_stack
from services.escalation import timers
from services.escalation.app import Scheduler
from services.escalation.deadlines import LadderPolicy
from services.escalation.settings import MIGRATIONS
from shared.db import migrate
from shared.kafka import make_producer
from shared.localstack import LocalStack
from shared.outbox import OutboxRelay
from shared.settings import KafkaSettings

CHAIN = (
    '[{"level":0,"role":"worker","name":"w","contact":null},'
    '{"level":1,"role":"grid_leader","name":"g","contact":null},'
    '{"level":2,"role":"city","name":"c","contact":null}]'
)
CFG = timers.Settings(ladder=LadderPolicy(step_s=86_400, max_repeats=0))


async def seed(conn: asyncpg.Connection, prefix: str, n: int, due_sql: str, level: int = 1) -> None:
    """`n` cases with one pending escalation timer each, due at `due_sql` (SQL over i), at
    `level` of a three-step chain (1: firing arms the next rung; 2: the top, nothing next)."""
    await conn.execute(
        f"""INSERT INTO escalation.cases (case_id, department, district, grid_id, chain,
                ack_window_s, resolve_window_s, phase, due_at, resolve_due_at)
            SELECT '{prefix}' || i, 'roads', 'longsha', 'g', '{CHAIN}'::jsonb, 3600, 86400,
                   'acknowledge', now(), now() + interval '1 day'
            FROM generate_series(1, {n}) AS i"""
    )
    await conn.execute(
        f"""INSERT INTO escalation.timers (case_id, kind, deadline, level, deadline_at, due_at)
            SELECT '{prefix}' || i, 'escalate', 'acknowledge', {level}, {due_sql}, {due_sql}
            FROM generate_series(1, {n}) AS i"""
    )
    # vacuumed now, so autovacuum does not run during a measurement
    await conn.execute("VACUUM (ANALYZE) escalation.timers, escalation.cases")


async def claim_cost(conn: asyncpg.Connection, prefix: str, rounds: int = 40) -> float:
    """Median seconds to claim and fire one batch of 500 due timers."""
    await seed(conn, prefix, 500 * rounds, "now() - interval '1 minute'")
    costs = []
    for _ in range(rounds):
        t = time.perf_counter()
        fired = await timers.fire_due(conn, datetime.now(UTC), CFG, batch=500)
        costs.append(time.perf_counter() - t)
        assert len(fired) == 500
    await conn.execute("DELETE FROM escalation.outbox")
    return statistics.median(costs)


def scheduler_process(url: str, fired: Synchronized[int], stop_flag: Synchronized[int]) -> None:
    """A scheduler replica in a process of its own, as a deployment runs them."""

    async def go() -> None:
        scheduler = Scheduler(url, CFG, batch=1000, max_sleep_s=0.05)
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        while not stop_flag.value:
            fired.value = scheduler.fired
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(go())


async def run(stack: LocalStack, pending: int, schedulers: int, processes: int, burst: int) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    await migrate(conn, "escalation", MIGRATIONS)

    # 3. claim cost, small backlog first
    await seed(conn, "far-small-", 10_000, "now() + interval '30 days'")
    small = await claim_cost(conn, "c1-")
    await conn.execute("TRUNCATE escalation.timers, escalation.cases")
    t = time.perf_counter()
    await seed(conn, "far-", pending, "now() + interval '30 days' + i * interval '1 second'")
    print(f"seeded {pending:,} pending timers in {time.perf_counter() - t:.0f}s")
    large = await claim_cost(conn, "c2-")

    # 1. throughput: `burst` due at once, fired by the schedulers and published by the relay
    n = burst
    await seed(conn, "burst-", n, "now() - interval '1 second'")
    producer = make_producer(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "bench")
    await producer.start()
    relay = OutboxRelay(stack.postgres.url, "escalation", producer, poll_interval_s=0.05)
    replicas = [
        Scheduler(stack.postgres.url, CFG, batch=1000, max_sleep_s=0.05) for _ in range(schedulers)
    ]
    ctx = mp.get_context("spawn")
    stop_flag = ctx.Value("i", 0)
    counters = [ctx.Value("i", 0) for _ in range(processes - 1)]
    others = [
        ctx.Process(target=scheduler_process, args=(stack.postgres.url, c, stop_flag))
        for c in counters
    ]
    for p in others:
        p.start()
    await asyncio.sleep(2 if others else 0)  # let the other processes import and connect
    stop = asyncio.Event()
    t = time.perf_counter()
    tasks = [asyncio.create_task(s.run(stop)) for s in replicas]
    tasks.append(asyncio.create_task(relay.run(stop)))
    fired_s = None

    def fired() -> int:
        return sum(s.fired for s in replicas) + sum(int(c.value) for c in counters)

    while relay.published < n:
        if fired_s is None and fired() >= n:
            fired_s = time.perf_counter() - t
        await asyncio.sleep(0.01)
    published_s = time.perf_counter() - t
    fired_s = fired_s or published_s

    # 2. lateness: 1,000 timers a second fall due for 10 seconds
    await conn.execute("DELETE FROM escalation.timers WHERE state = 'fired'")
    await seed(
        conn,
        "steady-",
        10_000,
        "now() + interval '2 seconds' + (i / 1000.0) * interval '1 second'",
        level=2,  # the top rung: the timer stays fired, with its lateness readable
    )
    while fired() < n + 10_000:
        await asyncio.sleep(0.1)
    stop.set()
    stop_flag.value = 1
    await asyncio.gather(*tasks)
    for p in others:
        p.join(30)
    await producer.stop()
    late = await conn.fetch(
        "SELECT extract(epoch FROM fired_at - due_at) AS s FROM escalation.timers "
        "WHERE case_id LIKE 'steady-%' AND state = 'fired' ORDER BY s"
    )
    lat = [float(r["s"]) for r in late]
    await conn.close()
    print(
        f"schedulers: {schedulers} in the benchmark's process, {processes - 1} in processes "
        "of their own (replicas sharing the work with SKIP LOCKED)"
    )
    print(f"fired (claim, outbox, next rung)    {n / fired_s:>9,.0f} /s  ({n:,} due at once)")
    print(f"fired and published to Kafka        {n / published_s:>9,.0f} /s")
    print(
        f"lateness at 1,000 due/s             p50 {lat[len(lat) // 2] * 1000:6.0f} ms   "
        f"p99 {lat[int(len(lat) * 0.99)] * 1000:6.0f} ms   max {lat[-1] * 1000:6.0f} ms"
    )
    print(f"claim+fire 500, 10,000 pending      {small * 1000:9.1f} ms")
    print(f"claim+fire 500, {pending:,} pending  {large * 1000:9.1f} ms")
    print(f"ratio (10k cost / {pending // 1000:,}k cost)     {small / large:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--schedulers", type=int, default=1, help="in the benchmark's process")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="scheduler processes in all (the first is this one)",
    )
    parser.add_argument("--burst", type=int, default=200_000, help="timers due at once")
    args = parser.parse_args()
    with bench_stack() as stack:
        asyncio.run(run(stack, args.pending, args.schedulers, args.processes, args.burst))


if __name__ == "__main__":
    main()
