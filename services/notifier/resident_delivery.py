"""Telling residents: contacts from `cases.intake` (with consent), messages queued from
lifecycle events, and a sender that respects quiet hours and retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import ConsumerRecord
from prometheus_client import Counter

from services.notifier.channels import Channel
from services.notifier.residents import quiet_until
from services.notifier.texts import (
    Message,
    category_name,
    local_time,
    render,
    tells_resident,
)
from shared import events
from shared.aio import until_set
from shared.db import with_own_pool
from shared.events import DecodeError, Envelope, decode
from shared.ids import case_reference
from shared.metrics import REGISTRY

log = logging.getLogger(__name__)
RETRIES_S = (60.0, 300.0, 1800.0)
SENT = Counter(
    "griddispatch_resident_messages_total",
    "Messages to residents",
    ["channel", "result"],
    registry=REGISTRY,
)


async def remember_contacts(
    conn: asyncpg.Connection,
    records: Sequence[ConsumerRecord[Any, Any]],
    *,
    quiet: tuple[time, time] = (time(22), time(7)),
) -> None:
    """Keep the contact of residents who consented, from their CaseReported, and queue the
    messages whose lifecycle event arrived before it (two consumers, no order between them).

    A report without a consenting contact is kept too, with no contact at all: then the
    lifecycle events of its case are known to have nobody to tell, and are not kept waiting
    for a contact that will never come."""
    rows: list[tuple[str, str | None, str | None, str]] = []
    for record in records:
        try:
            env, event = decode(record.value)
        except DecodeError:
            continue  # the router dead-letters what is malformed on cases.intake
        if isinstance(event, events.CaseReported):
            c = event.reporter
            if c is not None and c.consent_to_notify and (c.email or c.phone):
                rows.append((env.case_id, c.email, c.phone, c.language))
            else:  # no personal data without consent
                rows.append((env.case_id, None, None, "zh-CN"))
    if not rows:
        return
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO notifier.residents (case_id, email, phone, locale) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
            "ON CONFLICT (case_id) DO NOTHING",
            *[list(col) for col in zip(*rows, strict=True)],
        )
        waiting = await conn.fetch(
            "DELETE FROM notifier.resident_backlog WHERE case_id = ANY($1) "
            "RETURNING event_id, case_id, body, context::text, urgent",
            [r[0] for r in rows],
        )
        now = datetime.now(UTC)
        people = {
            r["case_id"]: r
            for r in await conn.fetch(
                "SELECT * FROM notifier.residents WHERE case_id = ANY($1) "
                "AND (email IS NOT NULL OR phone IS NOT NULL)",
                [w["case_id"] for w in waiting],
            )
        }
        await _insert_messages(
            conn,
            [
                m
                for w in waiting
                if w["case_id"] in people  # else nobody to tell: the kept rows just go
                for m in _messages(
                    str(w["event_id"]),
                    w["case_id"],
                    _in_language(w, people[w["case_id"]]),
                    w["urgent"],
                    people[w["case_id"]],
                    quiet=quiet,
                    now=now,
                )
            ],
        )
        await conn.execute(
            "DELETE FROM notifier.resident_backlog WHERE created_at < now() - interval '1 day'"
        )


async def forget_residents(conn: asyncpg.Connection, case_ids: Sequence[str]) -> None:
    """The residents of these cases asked for their personal data to be erased: their contact
    goes (the row stays, empty, so a contact read later from `cases.intake` is not taken
    again: `remember_contacts` keeps the first row) and so does every message to them,
    pending ones too."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO notifier.residents (case_id) SELECT unnest($1::text[]) "
            "ON CONFLICT (case_id) DO UPDATE SET email = NULL, phone = NULL",
            list(case_ids),
        )
        await conn.execute(
            "DELETE FROM notifier.resident_messages WHERE case_id = ANY($1)", list(case_ids)
        )
        await conn.execute(
            "DELETE FROM notifier.resident_backlog WHERE case_id = ANY($1)", list(case_ids)
        )


# A department's name by its code (the department directory), None when not known
DepartmentName = Callable[[str | None], str | None]


def no_names(code: str | None) -> str | None:
    return None


async def queue_for_residents(
    conn: asyncpg.Connection,
    items: Sequence[tuple[Envelope, events.Event, dict[str, Any]]],
    *,
    quiet: tuple[time, time],
    now: datetime,
    department_name: DepartmentName = no_names,
) -> int:
    """Queue the residents' messages for a batch of (event, its case) — accepted, resolved,
    closed for them — with three statements whatever the batch's size; returns how many."""
    items = [i for i in items if tells_resident(i[1])]
    if not items:
        return 0
    people = {
        r["case_id"]: r
        for r in await conn.fetch(
            "SELECT * FROM notifier.residents WHERE case_id = ANY($1)",
            list({env.case_id for env, _, _ in items}),
        )
    }
    messages: list[_Row] = []
    backlog: list[tuple[Any, str, str, bool]] = []
    for env, event, case in items:
        person = people.get(env.case_id)
        urgent = case.get("priority") == "urgent"
        if person is None:
            # The contact may still be on its way (another consumer): keep what to say, to be
            # said in the resident's language once it is known.
            context = orjson.dumps(_context(env, event, case, department_name)).decode()
            backlog.append((env.event_id, env.case_id, context, urgent))
        elif person["email"] or person["phone"]:
            said = _texts(_context(env, event, case, department_name), person)
            messages += _messages(
                str(env.event_id), env.case_id, said, urgent, person, quiet=quiet, now=now
            )
    if backlog:
        await conn.execute(
            "INSERT INTO notifier.resident_backlog (event_id, case_id, context, urgent) "
            "SELECT e, c, x::jsonb, u FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bool[])"
            " AS b(e, c, x, u) "
            "ON CONFLICT DO NOTHING",
            *[list(col) for col in zip(*backlog, strict=True)],
        )
    await _insert_messages(conn, messages)
    return len(messages)


def _context(
    env: Envelope, event: events.Event, case: dict[str, Any], department_name: DepartmentName
) -> dict[str, Any]:
    """What a resident's message says, in no language yet (JSON: it may be kept)."""
    resolve_by = case.get("resolve_by")
    department = case.get("department")
    return {
        "event_type": env.event_type,
        "category": case.get("category"),
        "department": department,
        # its name as the directory says now; the code if the directory does not know it
        "department_name": department_name(department) or department,
        "resolve_by": resolve_by.isoformat() if resolve_by else None,
        "note": getattr(event, "note", "") or "",
        "reference": case_reference(env.case_id),
        # a resolution: when it closes unless the resident verifies or reopens it first
        "closes_at": closes_at.isoformat() if (closes_at := _closes_at(event)) else None,
        # a merge: the case that carries the work from now on
        "into_reference": case_reference(event.into)
        if isinstance(event, events.CaseMerged)
        else None,
    }


def _closes_at(event: events.Event) -> datetime | None:
    return event.closes_at if isinstance(event, events.CaseResolved) else None


def _texts(context: dict[str, Any], person: asyncpg.Record) -> dict[str, Message]:
    """The message for each channel the resident gave, in their language."""
    locale = person["locale"]
    values = {
        "category_name": category_name(context["category"], locale),
        # contexts kept before names were known have the code only
        "department_name": context.get("department_name") or context["department"],
        "resolve_by": local_time(context["resolve_by"]),
        "note": context["note"],
        "closes_at": local_time(context.get("closes_at")),  # "" when it does not close itself
        # (contexts kept before references were case-id suffixes: as kept)
        "reference": context.get("reference") or context["short_id"],
        "into_reference": context.get("into_reference") or "",
    }
    return {
        channel: render("resident", context["event_type"], channel, locale, values)
        for channel in _addresses(person)
    }


def _addresses(person: asyncpg.Record) -> dict[str, str]:
    """The resident's address for each channel they gave one for."""
    given = {"email": person["email"], "sms": person["phone"]}
    return {channel: address for channel, address in given.items() if address}


def _in_language(kept: asyncpg.Record, person: asyncpg.Record) -> dict[str, Message]:
    """A kept message, in the resident's language (rows kept before contexts were: as kept)."""
    if kept["context"] is None:
        return {"email": Message(str(kept["body"])), "sms": Message(str(kept["body"]))}
    return _texts(orjson.loads(kept["context"]), person)


# (event id, case id, channel, address, text, subject, send after)
_Row = tuple[str, str, str, str, str, str | None, datetime]


def _messages(
    event_id: str,
    case_id: str,
    said: dict[str, Message],
    urgent: bool,
    person: asyncpg.Record,
    *,
    quiet: tuple[time, time],
    now: datetime,
) -> list[_Row]:
    send_after = quiet_until(now, urgent=urgent, start=quiet[0], end=quiet[1]) or now
    return [
        (event_id, case_id, ch, addr, said[ch].text, said[ch].subject, send_after)
        for ch, addr in _addresses(person).items()
        if ch in said
    ]


async def _insert_messages(conn: asyncpg.Connection, rows: list[_Row]) -> None:
    if rows:
        await conn.execute(
            "INSERT INTO notifier.resident_messages (id, case_id, channel, address, body, "
            "subject, send_after) SELECT md5(m.event_id || '/' || m.channel)::uuid, m.case_id, "
            "m.channel, m.address, m.body, m.subject, m.send_after FROM unnest($1::text[], "
            "$2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[]) "
            "AS m(event_id, case_id, channel, address, body, subject, send_after) "
            "ON CONFLICT DO NOTHING",
            *[list(col) for col in zip(*rows, strict=True)],
        )


class ResidentSender:
    def __init__(
        self, dsn: str, channels: dict[str, Channel], *, batch: int = 50, lease_s: float = 60.0
    ) -> None:
        self.dsn = dsn
        self.channels = channels
        self.batch = batch
        self.lease_s = lease_s  # a message not sent or failed by then is taken again

    async def run(self, stop: asyncio.Event) -> None:
        async def sending(pool: asyncpg.Pool) -> None:
            while not stop.is_set():
                if await self.work_once(pool) == 0:
                    await until_set(stop, at_most_s=0.5)

        try:
            await with_own_pool(self.dsn, "notifier", stop, sending, what="resident sender")
        finally:
            for channel in self.channels.values():
                await channel.close()

    async def work_once(self, pool: asyncpg.Pool) -> int:
        now = datetime.now(UTC)
        rows = await pool.fetch(
            """UPDATE notifier.resident_messages m SET lease_until = $2 + make_interval(secs => $3)
               FROM (SELECT id FROM notifier.resident_messages
                     WHERE state = 'pending' AND send_after <= $2
                       AND (lease_until IS NULL OR lease_until < $2)
                     ORDER BY send_after LIMIT $1 FOR UPDATE SKIP LOCKED) due
               WHERE m.id = due.id
               RETURNING m.id, m.channel, m.address, m.body, m.subject, m.attempts""",
            self.batch,
            now,
            self.lease_s,
        )
        await asyncio.gather(*(self._send(pool, r) for r in rows))
        return len(rows)

    async def _send(self, pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        channel = self.channels.get(row["channel"])
        try:
            if channel is None:
                raise RuntimeError(f"no {row['channel']} channel is configured")
            await channel.send(
                row["address"], Message(row["body"], row["subject"]), delivery_id=str(row["id"])
            )
        except Exception as exc:
            attempts = row["attempts"] + 1
            dead = attempts > len(RETRIES_S)
            SENT.labels(row["channel"], "dead" if dead else "retry").inc()
            # the error names the channel and exception type only: no address in logs
            log.warning("resident %s message failed (%s)", row["channel"], type(exc).__name__)
            await pool.execute(
                "UPDATE notifier.resident_messages SET attempts = $2, lease_until = NULL, "
                "state = $3, send_after = $4, last_error = $5 WHERE id = $1",
                row["id"],
                attempts,
                "dead" if dead else "pending",
                datetime.now(UTC) + timedelta(seconds=RETRIES_S[min(attempts, len(RETRIES_S)) - 1]),
                type(exc).__name__,
            )
            return
        SENT.labels(row["channel"], "sent").inc()
        await pool.execute(
            "UPDATE notifier.resident_messages SET state = 'sent', attempts = attempts + 1, "
            "lease_until = NULL, sent_at = now() WHERE id = $1",
            row["id"],
        )
