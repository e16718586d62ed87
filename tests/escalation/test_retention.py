"""Escalation's retention on the real database: the folded lifecycle events' ids, and timers
that fired or were cancelled, go after the dedup period, and only those."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from services.escalation.retention import purges
from services.escalation.settings import MIGRATIONS
from shared.db import create_pool, migrate
from shared.localstack import LocalStack
from shared.retention import Retention
from shared.settings import RetentionSettings
from tests.helpers.services import fresh_database


async def test_folded_event_ids_go_after_the_dedup_period(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "escalation_retention")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "escalation", MIGRATIONS)
        now = datetime.now(UTC)
        ages = {uuid.uuid4(): days for days in (90, 36, 34, 0)}
        await conn.executemany(
            "INSERT INTO escalation.seen_events (event_id, seen_at) VALUES ($1, $2)",
            [(e, now - timedelta(days=d)) for e, d in ages.items()],
        )
        pool = await create_pool(url, "escalation", max_size=2)
        try:
            settings = RetentionSettings(dedup_days=35)
            done = await Retention(pool, "escalation", purges(settings), settings).purge()
        finally:
            await pool.close()
        assert done == {"seen events": 2, "finished timers": 0}
        left = {
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM escalation.seen_events")
        }
        assert left == {e for e, d in ages.items() if d < 35}
    finally:
        await conn.close()


async def test_finished_timers_go_once_their_case_was_idle_for_the_dedup_period(
    stack: LocalStack,
) -> None:
    url = await fresh_database(stack.postgres.url, "escalation_timers_retention")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "escalation", MIGRATIONS)
        now = datetime.now(UTC)
        idle = {"closed-long-ago": 90, "closed-lately": 10}
        await conn.executemany(
            "INSERT INTO escalation.cases (case_id, chain, ack_window_s, resolve_window_s, "
            "phase, updated_at) VALUES ($1, '[]', 3600, 7200, 'done', $2)",
            [(case_id, now - timedelta(days=d)) for case_id, d in idle.items()],
        )
        # (case, state, fired days ago): a pending timer is never touched, whatever its age
        timers = [
            ("closed-long-ago", "fired", 89),
            ("closed-long-ago", "cancelled", None),
            ("closed-long-ago", "pending", 80),
            ("closed-lately", "fired", 40),
            ("closed-lately", "cancelled", None),
        ]
        await conn.executemany(
            "INSERT INTO escalation.timers (case_id, kind, deadline, level, deadline_at, due_at, "
            "state, fired_at) VALUES ($1, 'escalate', 'resolve', 1, $4, $4, $2, $3)",
            [
                (c, state, None if d is None else now - timedelta(days=d), now)
                for c, state, d in timers
            ],
        )
        pool = await create_pool(url, "escalation", max_size=2)
        try:
            settings = RetentionSettings(dedup_days=35, batch_size=1)  # batches of one
            done = await Retention(pool, "escalation", purges(settings), settings).purge()
        finally:
            await pool.close()
        assert done == {"seen events": 0, "finished timers": 2}
        left = await conn.fetch("SELECT case_id, state FROM escalation.timers")
        assert sorted((r["case_id"], r["state"]) for r in left) == [
            ("closed-lately", "cancelled"),
            ("closed-lately", "fired"),
            ("closed-long-ago", "pending"),
        ]
        assert await conn.fetchval("SELECT count(*) FROM escalation.cases") == 2  # clocks stay
    finally:
        await conn.close()
