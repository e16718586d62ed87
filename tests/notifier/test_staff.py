"""Queuing departments' e-mail and workers' SMS in the delivery log, on the real database:
once per event and subscription, only for what each audience hears, and a broken template
skipped without holding up the rest."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from services.notifier import staff, texts
from services.notifier.settings import MIGRATIONS
from services.notifier.staff import message_subscriptions, queue_for_staff
from services.notifier.subscriptions import SubscriptionIn, add_subscription
from services.notifier.views import department_view
from shared import events
from shared.db import migrate
from shared.events import Envelope, wrap
from shared.ids import case_reference
from tests.notifier.test_service import routed


def _items(*envs: Envelope) -> list[tuple[Envelope, dict[str, Any], dict[str, Any]]]:
    out = []
    for env in envs:
        event = env.event()
        first = envs[0].event()
        assert isinstance(first, events.CaseRouted)
        case = {
            "department": first.department,
            "worker_id": first.worker_id,
            "category": first.category,
            "reported_at": datetime.now(UTC),
        }
        out.append((env, department_view(env, event, case), case))
    return out


async def _subscribe(db: asyncpg.Connection, dept: str, worker: str) -> list[int]:
    return [
        await add_subscription(db, SubscriptionIn.model_validate(body), frozenset())
        for body in (
            {
                "owner_kind": "department",
                "owner": dept,
                "channel": "email",
                "address": "duty@example.org",
                "locale": "en",
            },
            {"owner_kind": "worker", "owner": worker, "channel": "sms", "address": "13912345678"},
        )
    ]


async def _forget(db: asyncpg.Connection, subs: list[int]) -> None:
    """Leave nothing queued for the notifier processes of later tests to send."""
    await db.execute("DELETE FROM notifier.deliveries WHERE subscription_id = ANY($1)", subs)
    await db.execute("DELETE FROM notifier.subscriptions WHERE id = ANY($1)", subs)


async def _queued(db: asyncpg.Connection, subs: list[int]) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT subscription_id, payload FROM notifier.deliveries "
            "WHERE subscription_id = ANY($1) ORDER BY subscription_id",
            subs,
        )
    )


async def test_each_event_is_queued_once_per_subscription_that_hears_it(
    db: asyncpg.Connection,
) -> None:
    await migrate(db, "notifier", MIGRATIONS)
    dept, worker = "q-" + uuid.uuid4().hex[:6], "w-" + uuid.uuid4().hex[:6]
    subs = await _subscribe(db, dept, worker)
    case = routed(dept, worker)
    ack = wrap(events.CaseAcknowledged(by=worker), case_id=case.case_id, producer="t")
    items = _items(case, ack)
    try:
        assert await queue_for_staff(db, items, message_subscriptions()) == 2  # not the ack
        assert await queue_for_staff(db, items, message_subscriptions()) == 2  # a redelivery…
        rows = await _queued(db, subs)
    finally:
        await _forget(db, subs)
    assert [r["subscription_id"] for r in rows] == subs  # …queues nothing twice
    mail, sms = (orjson.loads(r["payload"]) for r in rows)
    assert mail["subject"].startswith("[GridDispatch] New case: ")
    assert sms["subject"] is None
    assert sms["text"].startswith(f"【网格通】新派单{case_reference(case.case_id)}")


async def test_a_broken_template_skips_its_message_only(
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate(db, "notifier", MIGRATIONS)
    dept, worker = "q-" + uuid.uuid4().hex[:6], "w-" + uuid.uuid4().hex[:6]
    subs = await _subscribe(db, dept, worker)
    real = texts.render

    def render(audience: Any, *args: Any) -> texts.Message:
        if audience == "worker":
            raise ValueError("a template edited into an error")
        return real(audience, *args)

    monkeypatch.setattr(staff, "render", render)
    try:
        items = _items(routed(dept, worker))
        assert await queue_for_staff(db, items, message_subscriptions()) == 1
        assert [r["subscription_id"] for r in await _queued(db, subs)] == subs[:1]
    finally:
        await _forget(db, subs)
    assert "the worker template for CaseRouted by sms failed" in caplog.text
    assert "13912345678" not in caplog.text


async def test_a_handover_tells_the_new_worker_and_not_the_departments_desk(
    db: asyncpg.Connection,
) -> None:
    await migrate(db, "notifier", MIGRATIONS)
    dept, worker = "h-" + uuid.uuid4().hex[:6], "w-" + uuid.uuid4().hex[:6]
    subs = await _subscribe(db, dept, worker)  # the desk's e-mail, the new worker's SMS
    first = routed(dept, "w-gone").event()
    moved = first.model_copy(update={"worker_id": worker, "handed_over_from": "w-gone"})
    handover = wrap(moved, case_id=str(uuid.uuid4()), producer="router")
    try:
        assert await queue_for_staff(db, _items(handover), message_subscriptions()) == 1
        rows = await _queued(db, subs)
    finally:
        await _forget(db, subs)
    assert [r["subscription_id"] for r in rows] == [subs[1]]  # the worker's SMS only
