"""Escalation's retention on the real database: the folded lifecycle events' ids go after the
dedup period, and only those."""

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
        assert done == {"seen events": 2}
        left = {
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM escalation.seen_events")
        }
        assert left == {e for e, d in ages.items() if d < 35}
    finally:
        await conn.close()
