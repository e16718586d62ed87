"""A city-wide grid task through the router, at city scale (17,242 comprehensive grids).

    .venv/bin/python bench/grid_task.py [--area city] [--kinds comprehensive]

Prints how long the router takes to turn one `GridTaskIssued` into a routed case per grid —
decide, record in PostgreSQL, publish to `cases.lifecycle` and have the broker acknowledge
every one (`Dispatcher.handle`, as the service runs it) — and, as the baseline in the same
run, the same router routing as many ordinary reports at random points of the city, handed
over in the service's batches of 500. Then the task delivered again (it republishes the
recorded decisions).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from aiokafka import ConsumerRecord

from bench._tools import bench_stack
from bench.router import _reports
from services.router import democity, store
from services.router.dispatch import Dispatcher, RouterState
from services.router.settings import MIGRATIONS
from services.router.tasks import grids_in_area
from shared import events, topics
from shared.db import create_pool, migrate
from shared.events import wrap
from shared.kafka import make_producer
from shared.localstack import LocalStack
from shared.service import settle_heap
from shared.settings import KafkaSettings


def _record(offset: int, key: bytes, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topics.CASES_INTAKE, 0, offset, 0, 0, key, value, None, len(key), len(value), ()
    )


async def run(stack: LocalStack, city: democity.City, area: str, kinds: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    await migrate(conn, "router", MIGRATIONS)
    await store.load_city(conn, city)
    ref = await store.load_reference(conn)
    await conn.close()
    grids = len(grids_in_area(ref, area, kinds))
    task = wrap(
        events.GridTaskIssued(
            task_id=str(uuid.uuid4()),
            category="task.door-to-door",
            title="寒潮入户排查",
            instructions="逐户确认独居老人供暖正常",
            area=area,
            grid_kinds=kinds,
            issued_by="bench",
            issued_at=datetime.now(UTC),
        ),
        case_id="task:bench",
        producer="bench",
    )
    reports = [_record(i, k, v) for i, (k, v) in enumerate(_reports(city, grids))]
    pool = await create_pool(stack.postgres.url, "router", max_size=4)
    producer = make_producer(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "bench")
    await producer.start()
    settle_heap()
    try:
        baseline = Dispatcher(pool, producer, RouterState(ref), None)
        started = time.perf_counter()
        routed = 0
        for at in range(0, len(reports), 500):
            routed += await baseline.handle(reports[at : at + 500])
        reports_s = time.perf_counter() - started

        dispatcher = Dispatcher(pool, producer, RouterState(ref), None)
        record = _record(0, task.case_id.encode(), task.to_json())
        started = time.perf_counter()
        made = await dispatcher.handle([record])
        task_s = time.perf_counter() - started
        started = time.perf_counter()
        again = await dispatcher.handle([record])
        again_s = time.perf_counter() - started
    finally:
        await producer.stop()
        await pool.close()
    task_rate, report_rate = made / task_s, routed / reports_s
    print(f"grid task to {area} ({' and '.join(kinds)} grids): {grids:,} grids")
    print(f"task → routed cases       {made:>7,} in {task_s:6.2f} s  {task_rate:>7,.0f} /s")
    print(f"baseline: as many reports {routed:>7,} in {reports_s:6.2f} s  {report_rate:>7,.0f} /s")
    print(f"ratio task / reports      {task_rate / report_rate:>7.2f}")
    print(f"the task delivered again  {again:>7,} in {again_s:6.2f} s (republished as recorded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--area", default="city")
    parser.add_argument("--kinds", nargs="+", default=["comprehensive"])
    args = parser.parse_args()
    city = democity.generate(seed=1, scale="city")
    with bench_stack() as stack:
        asyncio.run(run(stack, city, args.area, tuple(args.kinds)))


if __name__ == "__main__":
    main()
