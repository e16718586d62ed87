"""The feed writer tells departments about each event of a routed case, whether the case was
routed in the same batch or in an earlier one, on the real broker and database."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.notifier.feeds import FeedWriter
from services.notifier.settings import MIGRATIONS
from services.notifier.subscriptions import disable_subscription
from shared import events, topics
from shared.db import create_pool, migrate
from shared.events import Envelope, wrap
from shared.ids import case_reference
from shared.localstack import LocalStack
from shared.metrics import REGISTRY
from tests.notifier.test_service import routed


def _records(*envs: Envelope) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for i, env in enumerate(envs):
        value = env.to_json()
        key = env.case_id.encode()
        out.append(
            ConsumerRecord(
                topics.CASES_LIFECYCLE, 0, i, 0, 0, key, value, None, len(key), len(value), ()
            )
        )
    return out


def _ack(case_id: str) -> Envelope:
    return wrap(events.CaseAcknowledged(by="w-1"), case_id=case_id, producer="intake")


@pytest.fixture
async def writer(stack: LocalStack) -> AsyncIterator[FeedWriter]:
    """A feed writer on the test stack, with its own pool and producer."""
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await migrate(conn, "notifier", MIGRATIONS)
    finally:
        await conn.close()
    pool = await create_pool(stack.postgres.url, "notifier", max_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        yield FeedWriter(pool, producer, stack.kafka.bootstrap, 1, None)
    finally:
        await producer.stop()
        await pool.close()


async def test_events_of_cases_routed_in_this_batch_or_before_reach_the_feed(
    writer: FeedWriter,
) -> None:
    dept = "roads-" + uuid.uuid4().hex[:6]
    earlier, now, never = routed(dept), routed(dept), routed(dept)
    assert await writer.handle(_records(earlier)) == 1
    # an event of a case routed in an earlier batch, the routing of a new case and its
    # acknowledgement, and an event of a case never routed (nobody to tell)
    batch = _records(_ack(earlier.case_id), now, _ack(now.case_id), _ack(never.case_id))
    assert await writer.handle(batch) == 3
    async with writer.pool.acquire() as c:
        told = await c.fetch(
            "SELECT case_id FROM notifier.cases WHERE department = $1 ORDER BY case_id", dept
        )
    assert [r["case_id"] for r in told] == sorted([earlier.case_id, now.case_id])


async def test_a_webhook_that_chose_its_events_gets_only_those(writer: FeedWriter) -> None:
    """A ticketing system wants every event; a duty desk's pager only escalations."""
    dept = "water-" + uuid.uuid4().hex[:6]
    ids: list[int] = []
    async with writer.pool.acquire() as c:
        for name, types in (("tickets", None), ("pager", ["CaseEscalated"])):
            ids.append(
                await c.fetchval(
                    "INSERT INTO notifier.subscriptions (owner_kind, owner, channel, url, "
                    "secrets, event_types) VALUES ('department', $1, 'webhook', $2, "
                    "ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'], $3) RETURNING id",
                    dept,
                    f"https://{name}.example.org/hook",
                    types,
                )
            )
    tickets, pager = ids
    case = routed(dept)
    ack = _ack(case.case_id)
    escalated = wrap(
        events.CaseEscalated(
            deadline="acknowledge",
            due_at=datetime.now(UTC),
            level=1,
            to=events.EscalationStep(level=1, role="grid_leader", name="李", contact=None),
        ),
        case_id=case.case_id,
        producer="escalation",
    )
    await writer.handle(_records(case, ack, escalated))
    names = {case.event_id: "CaseRouted", ack.event_id: "CaseAcknowledged"}
    names[escalated.event_id] = "CaseEscalated"
    async with writer.pool.acquire() as c:
        rows = await c.fetch(
            "SELECT subscription_id, event_id FROM notifier.deliveries "
            "WHERE subscription_id = ANY($1)",
            [tickets, pager],
        )
    got = {(r["subscription_id"], names[r["event_id"]]) for r in rows}
    assert got == {
        (tickets, "CaseRouted"),
        (tickets, "CaseAcknowledged"),
        (tickets, "CaseEscalated"),
        (pager, "CaseEscalated"),
    }


def _latency_samples(department: str, channel: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "griddispatch_dispatch_latency_seconds_count",
            {"department": department, "channel": channel},
        )
        or 0.0
    )


async def test_dispatch_latency_times_the_routing_only(writer: FeedWriter) -> None:
    """Report → department told, once per case: an acknowledgement, an escalation or a
    handover hours after the report is not a dispatch, and would fill the top bucket."""
    dept = "gas-" + uuid.uuid4().hex[:6]
    async with writer.pool.acquire() as c:
        await c.execute(
            "INSERT INTO notifier.subscriptions (owner_kind, owner, channel, url, secrets) "
            "VALUES ('department', $1, 'webhook', 'https://tickets.example/hook', $2)",
            dept,
            ["whsec_" + "A" * 32],
        )
    case = routed(dept)
    escalated = wrap(
        events.CaseEscalated(
            deadline="resolve",
            due_at=datetime.now(UTC),
            level=1,
            to=events.EscalationStep(level=1, role="grid_leader", name="李四", contact="138"),
        ),
        case_id=case.case_id,
        producer="escalation",
    )
    routing = case.event()
    assert isinstance(routing, events.CaseRouted)
    handover = wrap(
        routing.model_copy(update={"worker_id": "w-2", "handed_over_from": "w-1"}),
        case_id=case.case_id,
        producer="router",
    )
    assert await writer.handle(_records(case, _ack(case.case_id), escalated, handover)) == 4
    assert _latency_samples(dept, "feed") == 1
    async with writer.pool.acquire() as c:
        timed = await c.fetch(
            "SELECT event_id FROM notifier.deliveries WHERE department = $1 "
            "AND reported_at IS NOT NULL",
            dept,
        )
    # the webhook sender times the deliveries that carry a start: the routing's only
    assert [r["event_id"] for r in timed] == [case.event_id]


def _escalated_to(case_id: str, role: str, name: str, contact: str) -> Envelope:
    return wrap(
        events.CaseEscalated(
            deadline="acknowledge",
            due_at=datetime.now(UTC),
            level=1,
            to=events.EscalationStep(level=1, role=role, name=name, contact=contact),
        ),
        case_id=case_id,
        producer="escalation",
    )


async def test_whoever_an_escalation_reached_is_told_at_the_case_s_contact(
    writer: FeedWriter,
) -> None:
    dept = "sanitation-" + uuid.uuid4().hex[:6]
    leader = f"138{uuid.uuid4().int % 10**8:08d}"  # this test's own: the table is shared
    case = routed(dept)
    first = _escalated_to(case.case_id, "grid_leader", "李网格长", f"+86 {leader[:3]}-{leader[3:]}")
    reminder = _escalated_to(case.case_id, "grid_leader", "李网格长", leader)
    hotline = _escalated_to(case.case_id, "city", "城市运行管理中心", "12345")
    assert await writer.handle(_records(case, first, hotline)) == 3
    await writer.handle(_records(first, reminder))  # the first again: a redelivery

    async def told() -> list[asyncpg.Record]:
        async with writer.pool.acquire() as c:
            return list(
                await c.fetch(
                    "SELECT s.id, s.owner, s.channel, s.address, s.active, d.event_id, d.payload,"
                    " d.reported_at FROM notifier.subscriptions s JOIN notifier.deliveries d"
                    " ON d.subscription_id = s.id WHERE s.owner_kind = 'ladder'"
                    " AND d.department = $1 ORDER BY d.created_at",
                    dept,
                )
            )

    rows = await told()
    # one subscription for the person, one message per escalation, none for the hotline
    assert {(r["owner"], r["channel"], r["address"]) for r in rows} == {
        ("grid_leader:李网格长", "sms", leader)
    }
    assert sorted(r["event_id"] for r in rows) == sorted([first.event_id, reminder.event_id])
    assert all(r["reported_at"] is None for r in rows)  # not a dispatch: not timed
    text = json.loads(rows[0]["payload"])["text"]
    assert case_reference(case.case_id) in text
    assert "上报至您" in text
    assert leader not in text
    # an operator switches the number off: the next escalation writes to it no more
    async with writer.pool.acquire() as c:
        await disable_subscription(c, rows[0]["id"])
    again = _escalated_to(case.case_id, "grid_leader", "李网格长", leader)
    assert await writer.handle(_records(again)) == 1
    assert len(await told()) == 2
    # a city that writes to its offices in English (GRIDDISPATCH_NOTIFIER__LADDER_LOCALE)
    writer.ladder_locale = "en"
    office = f"office-{uuid.uuid4().hex[:6]}@longsha.example.org"
    await writer.handle(_records(_escalated_to(case.case_id, "community", "Longsha", office)))
    [english] = [r for r in await told() if r["address"] == office]
    assert json.loads(english["payload"])["subject"].startswith("[GridDispatch] Case escalated")
