"""A lifecycle event that reaches the notifier before the resident's contact (two consumers, no
order between them) is kept, and sent once the contact arrives — in the resident's language."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg

from services.notifier.resident_delivery import queue_for_residents, remember_contacts
from services.notifier.settings import MIGRATIONS
from shared import events, topics
from shared.db import migrate
from shared.events import wrap
from tests.helpers.kafka import record_of
from tests.notifier.test_resident_messages import report

NO_QUIET = (time(7), time(7))


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
    await remember_contacts(
        db,
        [record_of(english, topics.CASES_INTAKE), record_of(chinese, topics.CASES_INTAKE)],
        quiet=NO_QUIET,
    )

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


async def test_a_report_without_a_consenting_contact_leaves_nothing_waiting(
    db: asyncpg.Connection,
) -> None:
    """Nobody to tell: events that arrived before the report are let go once it is read, and
    later events are not kept at all; no personal data is stored without consent."""
    await migrate(db, "notifier", MIGRATIONS)
    early = report("li@example.org", "13800000000", consent=False)
    late = report("zhao@example.org", None, consent=False)
    case = {"category": "heating.outage", "department": "heating", "priority": "normal"}

    def resolved(r: events.Envelope) -> tuple[events.Envelope, events.Event, dict[str, Any]]:
        ev = events.CaseResolved(by="w-1", note="ok")
        return wrap(ev, case_id=r.case_id, producer="intake"), ev, case

    async def kept() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM notifier.resident_backlog WHERE case_id = ANY($1)",
                [early.case_id, late.case_id],
            )
        )

    now = datetime.now(UTC)
    await queue_for_residents(db, [resolved(early)], quiet=NO_QUIET, now=now)
    assert await kept() == 1  # its report not read yet: it might carry a contact
    await remember_contacts(
        db,
        [record_of(early, topics.CASES_INTAKE), record_of(late, topics.CASES_INTAKE)],
        quiet=NO_QUIET,
    )
    assert await kept() == 0
    assert await queue_for_residents(db, [resolved(late)], quiet=NO_QUIET, now=now) == 0
    assert await kept() == 0
    stored = await db.fetch(
        "SELECT email, phone FROM notifier.residents WHERE case_id = ANY($1)",
        [early.case_id, late.case_id],
    )
    assert [tuple(r) for r in stored] == [(None, None), (None, None)]
    assert not await db.fetchval(
        "SELECT count(*) FROM notifier.resident_messages WHERE case_id = ANY($1)",
        [early.case_id, late.case_id],
    )
