"""Escalation folding lifecycle events into case clocks and timers.

    .venv/bin/python bench/escalation_fold.py [--cases 20000] [--batch 500]

`bench/escalation.py` measures firing; this measures the other half of escalation's work,
the one that grows with the city's traffic: every routed case arms a clock and its timers,
every acknowledgement, resolution and closing moves them (`timers.fold_batch`, one
transaction and a handful of statements per batch, as the service's consumer calls it). For
`--cases` cases it folds their routing, then their acknowledgement, resolution and closing
(four events a case) in batches of `--batch`, on the real PostgreSQL (fsync on), and prints
events/s per kind. The baseline, in the same run, is the least any consumer of these events
does: recording the batch's event ids to recognise a redelivery (one `INSERT … ON CONFLICT`
per batch into a table like `seen_events`); the ratio says what the clocks cost over that.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from bench._tools import bench_stack
from services.escalation import timers
from services.escalation.settings import MIGRATIONS
from shared import events
from shared.db import migrate
from shared.events import Envelope, wrap
from shared.localstack import LocalStack

CHAIN = tuple(
    events.EscalationStep(level=i, role=role, name=f"{role}-name", contact=None)
    for i, role in enumerate(
        ["worker", "grid_leader", "community", "street_office", "district", "city"]
    )
)


def _events(n: int, at: datetime) -> dict[str, list[tuple[Envelope, events.Event]]]:
    kinds: dict[str, list[tuple[Envelope, events.Event]]] = {
        "routed": [],
        "acknowledged": [],
        "resolved": [],
        "closed": [],
    }
    for i in range(n):
        case_id = str(uuid.uuid4())
        routed = events.CaseRouted(
            category="roads.pothole",
            grid_id=f"longsha-g{i % 2464:05d}",
            district="longsha",
            street_office="longsha-s01",
            department="roads",
            worker_id=f"w-{i % 2464:06d}",
            priority=events.Priority.NORMAL,
            deadlines=events.Deadlines(
                acknowledge_by=at + timedelta(hours=1),
                resolve_by=at + timedelta(hours=24),
                warn_before_s=900,
                working_time=i % 4 == 0,  # a quarter count working time only
            ),
            escalation_chain=CHAIN,
            reported_at=at,
        )
        steps: list[tuple[str, events.Event]] = [
            ("routed", routed),
            ("acknowledged", events.CaseAcknowledged(by="w")),
            ("resolved", events.CaseResolved(by="w", note="修好了", closes_at=None)),
            ("closed", events.CaseClosed(by="op")),
        ]
        for kind, event in steps:
            env = wrap(event, case_id=case_id, producer="bench", occurred_at=at)
            kinds[kind].append((env, event))
    return kinds


async def _fold(
    conn: asyncpg.Connection, items: Sequence[tuple[Envelope, events.Event]], batch: int
) -> float:
    cfg = timers.Settings()
    started = time.perf_counter()
    for at in range(0, len(items), batch):
        await timers.fold_batch(conn, items[at : at + batch], datetime.now(UTC), cfg)
    return time.perf_counter() - started


async def _dedupe_only(
    conn: asyncpg.Connection, items: Sequence[tuple[Envelope, events.Event]], batch: int
) -> float:
    started = time.perf_counter()
    for at in range(0, len(items), batch):
        ids = [env.event_id for env, _ in items[at : at + batch]]
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO bench_seen (event_id) SELECT unnest($1::uuid[]) "
                "ON CONFLICT DO NOTHING",
                ids,
            )
    return time.perf_counter() - started


async def run(stack: LocalStack, n: int, batch: int) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await migrate(conn, "escalation", MIGRATIONS)
        await conn.execute(
            "CREATE TABLE bench_seen (event_id uuid PRIMARY KEY, "
            "seen_at timestamptz NOT NULL DEFAULT now())"
        )
        kinds = _events(n, datetime.now(UTC) - timedelta(minutes=5))
        print(f"{n:,} cases, four events each, batches of {batch}; PostgreSQL fsync on")
        print(f"{'events':<14} {'fold':>12} {'dedupe only':>14} {'ratio':>6}")
        total_fold = total_bare = 0.0
        for kind, items in kinds.items():
            fold_s = await _fold(conn, items, batch)
            bare_s = await _dedupe_only(conn, items, batch)
            total_fold += fold_s
            total_bare += bare_s
            print(
                f"{kind:<14} {len(items) / fold_s:>9,.0f} /s {len(items) / bare_s:>11,.0f} /s "
                f"{bare_s / fold_s:>6.2f}"
            )
        every = 4 * n
        print(
            f"{'all':<14} {every / total_fold:>9,.0f} /s {every / total_bare:>11,.0f} /s "
            f"{total_bare / total_fold:>6.2f}"
        )
        timers_left = await conn.fetchval(
            "SELECT count(*) FROM escalation.timers WHERE state = 'pending'"
        )
        print(f"pending timers at the end: {timers_left} (every case closed: none expected)")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with bench_stack(partitions=1) as stack:
        asyncio.run(run(stack, args.cases, args.batch))


if __name__ == "__main__":
    main()
