"""The notifier's retention on the real broker and database: it learns from the lifecycle when
each case closed (and reopened); a resident's contact is erased the personal-data period after
the closing, and their sent messages after it; delivered entries of the delivery log go after
the dedup period, while pending and dead ones stay. A resident who asked to be erased is told
nothing more, and the department hears of it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from services.notifier.feeds import FeedWriter
from services.notifier.resident_delivery import remember_contacts
from services.notifier.retention import purges
from services.notifier.settings import MIGRATIONS
from shared import events
from shared.db import create_pool, migrate
from shared.events import Envelope, wrap
from shared.localstack import LocalStack
from shared.retention import Retention
from shared.settings import RetentionSettings
from tests.helpers.kafka import read_feed
from tests.helpers.services import fresh_database
from tests.notifier.test_feed_writer import _records
from tests.notifier.test_service import routed

NOW = datetime.now(UTC)


def _report(case_id: str) -> Envelope:
    return wrap(
        events.CaseReported(
            category="heating.outage",
            description="暖气不热",
            location=events.Location(lat=47.35, lon=123.92),
            channel=events.Channel.APP,
            reported_at=NOW,
            reporter=events.Contact(
                name="王阿姨", phone="13912345678", email="wang@example.org", consent_to_notify=True
            ),
        ),
        case_id=case_id,
        producer="intake",
    )


def _closed(case_id: str, days_ago: int) -> Envelope:
    return wrap(
        events.CaseClosed(by="op-1"),
        case_id=case_id,
        producer="intake",
        occurred_at=NOW - timedelta(days=days_ago),
    )


async def test_contacts_messages_and_deliveries_are_kept_only_as_long_as_needed(
    stack: LocalStack,
) -> None:
    url = await fresh_database(stack.postgres.url, "notifier_retention")
    conn = await asyncpg.connect(url)
    await migrate(conn, "notifier", MIGRATIONS)
    dept = "heating-" + uuid.uuid4().hex[:6]
    await conn.execute(
        "INSERT INTO notifier.subscriptions (owner_kind, owner, channel, url, secrets) "
        "VALUES ('department', $1, 'webhook', 'https://hooks.example.org/x', "
        "ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'])",
        dept,
    )
    pool = await create_pool(url, "notifier", max_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        writer = FeedWriter(pool, producer, stack.kafka.bootstrap, 1, None)
        old, lately, reopened = routed(dept), routed(dept), routed(dept)
        cases = [e.case_id for e in (old, lately, reopened)]
        await writer.handle(_records(old, lately, reopened))
        await remember_contacts(conn, _records(*(_report(c) for c in cases)))
        await writer.handle(
            _records(
                _closed(old.case_id, 200),
                _closed(lately.case_id, 10),
                _closed(reopened.case_id, 200),
                wrap(
                    events.CaseReopened(by="resident", reason="又坏了"),
                    case_id=reopened.case_id,
                    producer="intake",
                ),
            )
        )
        closed_at = dict(
            await conn.fetch(
                "SELECT case_id, closed_at FROM notifier.cases WHERE case_id = ANY($1)", cases
            )
        )
        assert abs(closed_at[old.case_id] - (NOW - timedelta(days=200))) < timedelta(seconds=1)
        assert closed_at[reopened.case_id] is None

        # time passes: the old case's messages went out long ago, its webhooks were delivered
        await conn.execute(
            "UPDATE notifier.resident_messages SET state = 'sent', "
            "send_after = now() - interval '200 days' WHERE case_id = $1",
            old.case_id,
        )
        await conn.execute(  # due long ago, still pending (a gateway down for months)
            "UPDATE notifier.resident_messages SET send_after = now() - interval '200 days' "
            "WHERE case_id = $1",
            reopened.case_id,
        )
        await conn.execute(
            "UPDATE notifier.deliveries d SET state = x.state, "
            "created_at = now() - x.age * interval '1 day' "
            "FROM (VALUES ($1, 'delivered', 40), ($2, 'delivered', 10), ($3, 'dead', 40)) "
            "AS x(case_id, state, age) "
            "WHERE d.event_id IN (SELECT event_id FROM unnest($4::uuid[], $5::text[]) "
            "AS e(event_id, case_id) WHERE e.case_id = x.case_id)",
            old.case_id,
            lately.case_id,
            reopened.case_id,
            [old.event_id, lately.event_id, reopened.event_id],
            cases,
        )
        sent = await conn.fetchval(
            "SELECT count(*) FROM notifier.resident_messages WHERE case_id = $1", old.case_id
        )
        assert sent >= 1

        settings = RetentionSettings(personal_data_days=180, dedup_days=35, batch_size=1)
        done = await Retention(pool, "notifier", purges(settings), settings).purge()

        assert done == {"resident contacts": 1, "resident messages": sent, "delivery log": 1}
        residents = {
            r["case_id"]: (r["email"], r["phone"])
            for r in await conn.fetch("SELECT * FROM notifier.residents")
        }
        assert residents[old.case_id] == (None, None)  # the row stays: nobody to tell
        for kept in (lately.case_id, reopened.case_id):
            assert residents[kept] == ("wang@example.org", "13912345678")
        left = await conn.fetch(
            "SELECT case_id, state FROM notifier.resident_messages WHERE case_id = ANY($1)",
            [old.case_id, reopened.case_id],
        )
        assert {r["case_id"] for r in left} == {reopened.case_id}
        assert {r["state"] for r in left} == {"pending"}
        deliveries = await conn.fetch(
            "SELECT event_id, state FROM notifier.deliveries WHERE event_id = ANY($1)",
            [old.event_id, lately.event_id, reopened.event_id],
        )
        assert {r["event_id"]: r["state"] for r in deliveries} == {
            lately.event_id: "delivered",
            reopened.event_id: "dead",
        }
    finally:
        await producer.stop()
        await pool.close()
        await conn.close()


async def test_a_resident_who_asked_to_be_erased_is_told_nothing_more(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "notifier_erasure")
    conn = await asyncpg.connect(url)
    await migrate(conn, "notifier", MIGRATIONS)
    pool = await create_pool(url, "notifier", max_size=2)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        writer = FeedWriter(pool, producer, stack.kafka.bootstrap, 1, None)
        dept = "heating-" + uuid.uuid4().hex[:6]
        asked, other, unseen = routed(dept), routed(dept), routed(dept)
        await writer.handle(_records(asked, other))
        await remember_contacts(conn, _records(_report(asked.case_id), _report(other.case_id)))
        pending = await conn.fetchval(
            "SELECT count(*) FROM notifier.resident_messages WHERE case_id = $1", asked.case_id
        )
        assert pending >= 1  # "your case went to …", waiting to be sent

        def erased(case_id: str) -> Envelope:
            return wrap(
                events.PersonalDataErased(by="op-1", reason="12345热线申请"),
                case_id=case_id,
                producer="intake",
            )

        # the erasure, then an event that would tell the resident, in one batch; and the
        # erasure of a case whose contact has not been read yet (that consumer lags)
        await writer.handle(
            _records(
                erased(asked.case_id),
                _closed(asked.case_id, 0),
                _closed(other.case_id, 0),
                erased(unseen.case_id),
            )
        )
        await remember_contacts(conn, _records(_report(unseen.case_id)))

        residents = {
            r["case_id"]: (r["email"], r["phone"])
            for r in await conn.fetch("SELECT * FROM notifier.residents")
        }
        assert residents[asked.case_id] == (None, None)
        assert residents[unseen.case_id] == (None, None)  # the late contact was not taken
        assert residents[other.case_id] == ("wang@example.org", "13912345678")
        messages = {
            r["case_id"] for r in await conn.fetch("SELECT case_id FROM notifier.resident_messages")
        }
        assert asked.case_id not in messages
        assert unseen.case_id not in messages
        assert other.case_id in messages
        # the department hears of it, to delete its copies; not why (the request may name them)
        feed = await read_feed(
            stack.kafka.bootstrap,
            dept,
            {asked.case_id},
            lambda seen: any(m["event_type"] == "PersonalDataErased" for m in seen),
        )
        [told] = [m for m in feed if m["event_type"] == "PersonalDataErased"]
        assert told["details"] == {}
        assert "申请" not in orjson.dumps(told).decode()
    finally:
        await producer.stop()
        await pool.close()
        await conn.close()
