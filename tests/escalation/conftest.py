from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest

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


@pytest.fixture
async def esc_db(stack: LocalStack) -> AsyncIterator[asyncpg.Connection]:
    """The escalation schema, emptied, on the test database."""
    conn = await asyncpg.connect(stack.postgres.url)
    await migrate(conn, "escalation", MIGRATIONS)
    await conn.execute(
        "TRUNCATE escalation.cases, escalation.timers, escalation.seen_events, "
        "escalation.emergency_areas, escalation.emergency_log, escalation.outbox, "
        "escalation.early_events"
    )
    try:
        yield conn
    finally:
        await conn.close()


def routed(
    case_id: str | None = None,
    *,
    at: datetime,
    ack_s: float,
    resolve_s: float,
    warn_s: int = 0,
    district: str = "longsha",
    working: bool = False,
) -> Envelope:
    return wrap(
        events.CaseRouted(
            category="roads.pothole",
            grid_id="longsha-g00001",
            district=district,
            street_office="longsha-s01",
            department="roads",
            worker_id="w-1",
            priority=events.Priority.NORMAL,
            deadlines=events.Deadlines(
                acknowledge_by=at + timedelta(seconds=ack_s),
                resolve_by=at + timedelta(seconds=resolve_s),
                warn_before_s=warn_s,
                working_time=working,
            ),
            escalation_chain=CHAIN,
            reported_at=at,
        ),
        case_id=case_id or str(uuid.uuid4()),
        producer="router",
        occurred_at=at,
    )


def step(event: events.Event, case_id: str, at: datetime) -> Envelope:
    return wrap(event, case_id=case_id, producer="intake", occurred_at=at)
