"""How long the monthly assessment takes on a year and more of a city's cases.

    .venv/bin/python bench/performance_report.py [--cases 100000]

Fills intake's tables (the real PostgreSQL, fsync on) with `--cases` cases reported over the
last 400 days — Qiqihar handled some 80,000 services in 2021 — each with the timeline a case
gets (routed, acknowledged, escalated now and then, resolved, closed, sometimes rated and
reopened: ~6 events a case), then times `store.performance_records` + `performance.assess`
as `GET /v1/performance` runs them: a month by department, a month by worker, one
department's month, and a whole year. The baseline, in the same run, reads the same period's
case rows alone (no timeline, no arithmetic): the ratio says what the timeline costs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from bench._tools import bench_stack
from services.intake import performance, store
from services.intake.settings import MIGRATIONS
from shared.citytime import CITY_TIME
from shared.db import migrate
from shared.localstack import LocalStack

DEPARTMENTS = [f"dept-{i:02d}" for i in range(26)]
DISTRICTS = ["longsha", "jianhua", "tiefeng", "angangxi", "fularji", "nianzishan", "meilisi"]


def _city(n: int, seed: int = 7) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    cases: list[tuple[Any, ...]] = []
    timeline: list[tuple[Any, ...]] = []
    for i in range(n):
        case_id = str(uuid.UUID(int=rng.getrandbits(128)))
        at = now - timedelta(days=400 * rng.random())
        worker = f"w-{rng.randrange(21237):06d}"
        status, rating = "routed", None
        steps: list[tuple[str, timedelta, dict[str, Any]]] = []
        event = _appender(steps)
        event("CaseRouted", timedelta(seconds=1), {"department": "x"})
        if rng.random() < 0.1:
            event("CaseEscalated", timedelta(hours=1), {"deadline": "acknowledge", "level": 1})
        if rng.random() < 0.93:
            status = "acknowledged"
            event("CaseAcknowledged", timedelta(minutes=rng.expovariate(1 / 30)), {"by": "w"})
            if rng.random() < 0.1:
                event("CaseEscalated", timedelta(hours=25), {"deadline": "resolve", "level": 1})
            if rng.random() < 0.85:
                status = "resolved"
                event("CaseResolved", timedelta(hours=rng.expovariate(1 / 12)), {"by": "w"})
                if rng.random() < 0.9:
                    status = "closed"
                    automatic = rng.random() < 0.5
                    event("CaseClosed", timedelta(hours=80), {"automatic": automatic})
                    if rng.random() < 0.3:
                        rating = rng.choice([1, 3, 4, 5, 5, 5])
                        event("CaseRated", timedelta(hours=81), {"rating": rating})
                    if rng.random() < 0.03:
                        event("CaseReopened", timedelta(hours=90), {"reason": "again"})
        timeline.extend(
            (uuid.uuid4(), case_id, kind, at + after, "bench", orjson.dumps(payload).decode())
            for kind, after, payload in steps
        )
        cases.append(
            (
                case_id,
                f"t-{i}",
                status,
                f"cat.{rng.randrange(60)}",
                "暖气不热",
                "app",
                rng.choice(DEPARTMENTS),
                rng.choice(DISTRICTS),
                f"g-{rng.randrange(17242):05d}",
                worker,
                rating,
                at,
                at,
            )
        )
    return cases, timeline


def _appender(
    steps: list[tuple[str, timedelta, dict[str, Any]]],
) -> Callable[[str, timedelta, dict[str, Any]], None]:
    def event(kind: str, after: timedelta, payload: dict[str, Any]) -> None:
        steps.append((kind, after, payload))

    return event


async def _timed(fn: Callable[[], Awaitable[int]], rounds: int = 5) -> tuple[float, int]:
    """Median seconds of `rounds` runs (after one warm-up), and what the last run returned."""
    result = await fn()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


async def run(stack: LocalStack, n: int) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await migrate(conn, "intake", MIGRATIONS)
        cases, timeline = _city(n)
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "cases",
            schema_name="intake",
            columns=(
                "case_id",
                "tracking_token",
                "status",
                "category",
                "description",
                "channel",
                "department",
                "district",
                "grid_id",
                "worker_id",
                "rating",
                "reported_at",
                "updated_at",
            ),
            records=cases,
        )
        await conn.copy_records_to_table(
            "case_events",
            schema_name="intake",
            columns=("event_id", "case_id", "event_type", "occurred_at", "producer", "payload"),
            records=timeline,
        )
        await conn.execute("ANALYZE intake.cases; ANALYZE intake.case_events")
        print(
            f"{len(cases):,} cases and {len(timeline):,} timeline events loaded in "
            f"{time.perf_counter() - started:.1f} s"
        )
        today = datetime.now(CITY_TIME).date()
        last_month = performance.month(f"{(today.replace(day=1) - timedelta(days=1)):%Y-%m}")
        year = (today - timedelta(days=365), today)

        def report(
            period: tuple[date, date], by: performance.GroupBy, department: str | None = None
        ) -> Callable[[], Awaitable[int]]:
            start, end = performance.period(*period)

            async def go() -> int:
                records = await store.performance_records(
                    conn, start, end, by, department=department
                )
                performance.assess(records)
                return len(records)

            return go

        def bare(period: tuple[date, date]) -> Callable[[], Awaitable[int]]:
            start, end = performance.period(*period)

            async def go() -> int:
                rows = await conn.fetch(
                    "SELECT department, reported_at, status, rating FROM intake.cases "
                    "WHERE reported_at >= $1 AND reported_at < $2 AND channel <> 'task'",
                    start,
                    end,
                )
                return len(rows)

            return go

        print(f"{'report':<40} {'cases':>8} {'median':>10} {'bare read':>10} {'ratio':>6}")
        for label, period, by, dept in [
            ("a month, by department", last_month, performance.GroupBy.DEPARTMENT, None),
            ("a month, by worker", last_month, performance.GroupBy.WORKER, None),
            ("one department's month", last_month, performance.GroupBy.CATEGORY, DEPARTMENTS[3]),
            ("a year, by department", year, performance.GroupBy.DEPARTMENT, None),
        ]:
            seconds, count = await _timed(report(period, by, dept))
            baseline, _ = await _timed(bare(period))
            print(
                f"{label:<40} {count:>8,} {seconds * 1000:>8.0f} ms {baseline * 1000:>7.0f} ms "
                f"{baseline / seconds:>6.2f}"
            )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    args = parser.parse_args()
    with bench_stack(partitions=1) as stack:
        asyncio.run(run(stack, args.cases))


if __name__ == "__main__":
    main()
