"""A lifecycle event that reaches the notifier before the resident's contact (two consumers, no
order between them) is kept, and sent once the contact arrives — in the resident's language."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import asyncpg
from aiokafka import ConsumerRecord

from services.notifier.app import MIGRATIONS
from services.notifier.resident_delivery import queue_for_residents, remember_contacts
from shared import events, topics
from shared.db import migrate
from shared.events import wrap
from tests.notifier.test_resident_messages import report

NO_QUIET = (time(7), time(7))


def _record(env: events.Envelope) -> ConsumerRecord[bytes, bytes]:
    value = env.to_json()
    return ConsumerRecord(topics.CASES_INTAKE, 0, 0, 0, 0, None, value, None, 0, len(value), ())


async def test_a_message_kept_for_a_contact_still_on_its_way_is_sent_in_its_language(
    db: asyncpg.Connection,
) -> None:
    await migrate(db, "notifier", MIGRATIONS)
    english = report("anna@example.org", None, consent=True, language="en")
    chinese = report("wang@example.org", None, consent=True)
    case = {
        "category": "heating.outage",
        "department": "heating",
        "resolve_by": datetime.now(UTC) + timedelta(hours=24),
        "priority": "normal",
    }
    resolved = [
        (env, event, case)
        for env, event in (
            (wrap(ev, case_id=r.case_id, producer="intake"), ev)
            for r in (english, chinese)
            for ev in [events.CaseResolved(by="w-1", note="valve replaced")]
        )
    ]
    # the lifecycle events first: nobody to tell yet, so nothing is queued
    assert await queue_for_residents(db, resolved, quiet=NO_QUIET, now=datetime.now(UTC)) == 0
    await remember_contacts(db, [_record(english), _record(chinese)], quiet=NO_QUIET)

    bodies = {
        r["case_id"]: r["body"]
        for r in await db.fetch(
            "SELECT case_id, body FROM notifier.resident_messages WHERE case_id = ANY($1)",
            [english.case_id, chinese.case_id],
        )
    }
    assert "has been resolved" in bodies[english.case_id]
    assert "valve replaced" in bodies[english.case_id]
    assert "已处理完毕" in bodies[chinese.case_id]
