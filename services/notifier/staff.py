"""Telling departments by e-mail and grid workers by SMS.

Their messages go through the delivery log, as webhooks do: one row per (event, subscription),
so a message is queued once however often its event is read, retried on the webhook schedule
with the same delivery id, dead-lettered when the schedule is spent, and replayed by an
operator (`griddispatch deliveries …`). `queue_for_staff` writes the rows in the feed writer's
transaction; `MessageSender` works them through the channels (SMTP, the SMS gateway).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from services.notifier import ladder, webhooks
from services.notifier.channels import Channel
from services.notifier.delivery import (
    DEAD,
    DELIVERIES,
    DISPATCH_LATENCY,
    LEASE_SQL,
    finish,
    retry_later,
)
from services.notifier.texts import Message, NoTemplate, render, staff_context, tells_staff
from services.notifier.views import dispatch_started
from shared import events
from shared.aio import Refreshed, until_set
from shared.db import with_own_pool
from shared.events import Envelope

log = logging.getLogger(__name__)
MESSAGE_CHANNELS = ("email", "sms")
# Notified (in the feed writer's transaction, so at its commit) when messages are queued: the
# message sender's wake-up. The delivery log's own trigger wakes the webhook sender.
MESSAGES_QUEUED = "notifier_messages"
# How long the e-mail and SMS subscriptions read from the database are used before they are
# read again: a new or disabled subscription takes effect within this.
SUBSCRIPTIONS_TTL_S = 5.0

Owner = tuple[str, str]  # (owner kind, owner)


BySubscriber = dict[Owner, list[asyncpg.Record]]


async def _read_message_subscriptions(conn: asyncpg.Connection) -> BySubscriber:
    rows = await conn.fetch(
        "SELECT id, owner_kind, owner, channel, locale, event_types FROM notifier.subscriptions "
        # the ladder's (one per grid leader and office, in time) are found by their address
        "WHERE active AND channel <> 'webhook' AND owner_kind <> 'ladder'"
    )
    by_owner: BySubscriber = collections.defaultdict(list)
    for sub in rows:
        by_owner[(sub["owner_kind"], sub["owner"])].append(sub)
    return dict(by_owner)


def message_subscriptions(every_s: float = SUBSCRIPTIONS_TTL_S) -> Refreshed[BySubscriber]:
    """The active e-mail and SMS subscriptions by owner, read again every few seconds: one
    query per interval, not one per batch of the busiest consumer."""
    return Refreshed(_read_message_subscriptions, every_s, {})


async def queue_for_staff(
    conn: asyncpg.Connection,
    items: Sequence[tuple[Envelope, dict[str, Any], dict[str, Any]]],
    subscriptions: Refreshed[BySubscriber],
) -> int:
    """Queue the messages of a batch of (event, its department view, its case) for the e-mail
    and SMS subscriptions of the case's department and grid worker; returns how many."""
    items = [i for i in items if tells_staff(i[1])]
    if not items:
        return 0
    by_owner = await subscriptions.get(conn)
    if not by_owner:
        return 0
    rows: list[tuple[Any, int, bytes, str, datetime | None]] = []
    for env, view, case in items:
        contexts: dict[str, dict[str, Any]] = {}  # one per language, not per subscription
        for sub in (
            *by_owner.get(("department", case["department"]), ()),
            *by_owner.get(("worker", case["worker_id"] or ""), ()),
        ):
            if sub["event_types"] is not None and env.event_type not in sub["event_types"]:
                continue  # the subscription chose other events
            if not tells_staff(view, sub["owner_kind"]):
                continue  # not for this audience (a handover is not news for the desk)
            locale = sub["locale"]
            if locale not in contexts:
                contexts[locale] = staff_context(view, locale)
            try:
                message = render(
                    sub["owner_kind"], env.event_type, sub["channel"], locale, contexts[locale]
                )
            except NoTemplate:
                continue  # nothing to say to this audience on this channel
            except Exception:
                # A template edited into an error must not hold up the feeds and webhooks of
                # the batch: this message is skipped, loudly (names only, no addresses).
                DELIVERIES.labels(sub["channel"], "template_error").inc()
                log.exception(
                    "the %s template for %s by %s failed",
                    sub["owner_kind"],
                    env.event_type,
                    sub["channel"],
                )
                continue
            payload = orjson.dumps({"subject": message.subject, "text": message.text})
            rows.append(
                (
                    env.event_id,
                    sub["id"],
                    payload,
                    case["department"],
                    dispatch_started(view, case),
                )
            )
    return await _queue(conn, rows)


async def _queue(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, int, bytes, str, datetime | None]]
) -> int:
    """Messages into the delivery log, once per (event, subscription), and the sender woken."""
    if rows:
        await conn.execute(
            """INSERT INTO notifier.deliveries (id, event_id, subscription_id, payload,
                   department, reported_at)
               SELECT md5(x.event_id::text || '/' || x.sub_id)::uuid, x.event_id, x.sub_id,
                   x.payload, x.department, x.reported_at
               FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::text[],
                   $5::timestamptz[]) AS x(event_id, sub_id, payload, department, reported_at)
               ON CONFLICT (event_id, subscription_id) DO NOTHING""",
            *[list(col) for col in zip(*rows, strict=True)],
        )
        await conn.execute(f"NOTIFY {MESSAGES_QUEUED}")
    return len(rows)


# The ladder's subscriptions, made on a contact's first escalation; one switched off by an
# operator stays off (and is not written to).
_LADDER_SUBSCRIPTIONS_SQL = """
INSERT INTO notifier.subscriptions (owner_kind, owner, channel, address, locale)
SELECT 'ladder', x.owner, x.channel, x.address, $4
FROM unnest($1::text[], $2::text[], $3::text[]) AS x(owner, channel, address)
ON CONFLICT (channel, address) WHERE owner_kind = 'ladder'
DO UPDATE SET owner = EXCLUDED.owner
RETURNING id, channel, address, active, locale
"""


async def queue_for_ladder(
    conn: asyncpg.Connection,
    items: Sequence[tuple[Envelope, dict[str, Any], dict[str, Any], events.CaseEscalated]],
    *,
    locale: str = "zh-CN",
) -> int:
    """Queue a message to whoever each escalation of the batch reached (`ladder.recipient`),
    in `locale` for a contact seen for the first time; returns how many."""
    wanted: dict[ladder.Target, str] = {}
    plan: list[tuple[Envelope, dict[str, Any], dict[str, Any], ladder.Target]] = []
    for env, view, case, event in items:
        found = ladder.recipient(event)
        if found is not None:
            owner, target = found
            wanted[target] = owner
            plan.append((env, view, case, target))
    if not plan:
        return 0
    subs = {
        (r["channel"], r["address"]): r
        for r in await conn.fetch(
            _LADDER_SUBSCRIPTIONS_SQL,
            list(wanted.values()),
            [channel for channel, _ in wanted],
            [address for _, address in wanted],
            locale,
        )
    }
    rows: list[tuple[Any, int, bytes, str, datetime | None]] = []
    for env, view, case, target in plan:
        sub = subs[target]
        if not sub["active"]:
            continue
        try:
            message = render(
                "ladder",
                "CaseEscalated",
                target[0],
                sub["locale"],
                staff_context(view, sub["locale"]),
            )
        except Exception:  # as for staff messages: the batch goes on, loudly (no address)
            DELIVERIES.labels(target[0], "template_error").inc()
            log.exception("the ladder's %s template for CaseEscalated failed", target[0])
            continue
        payload = orjson.dumps({"subject": message.subject, "text": message.text})
        rows.append((env.event_id, sub["id"], payload, case["department"], None))
    return await _queue(conn, rows)


class MessageSender:
    """Works the delivery log's e-mail and SMS rows: leases due ones (each subscription its
    share), sends them, records the outcome. Woken when messages are queued."""

    def __init__(
        self,
        dsn: str,
        channels: dict[str, Channel],
        *,
        schedule: tuple[float, ...],
        batch: int = 50,
        per_subscription: int = 10,
        idle_poll_s: float = 1.0,
        lease_s: float = 60.0,
    ) -> None:
        self.dsn = dsn
        self.channels = channels
        self.lease_s = lease_s
        self.schedule = schedule
        self.batch = batch
        self.per_subscription = per_subscription
        self.idle_poll_s = idle_poll_s

    async def run(self, stop: asyncio.Event) -> None:
        async def sending(pool: asyncpg.Pool) -> None:
            await self._loop(pool, stop)

        try:
            await with_own_pool(self.dsn, "notifier", stop, sending, what="message sender")
        finally:
            for channel in self.channels.values():
                await channel.close()

    async def _loop(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        wake = asyncio.Event()

        def woken(*_: object) -> None:
            wake.set()

        listener = await pool.acquire()
        await listener.add_listener(MESSAGES_QUEUED, woken)
        try:
            while not stop.is_set():
                wake.clear()  # before the lease: a delivery inserted meanwhile wakes us again
                if await self.work_once(pool) == 0:
                    await until_set(wake, stop, at_most_s=self.idle_poll_s)
        finally:
            with contextlib.suppress(Exception):  # UNLISTEN: pooled connections are not reset
                await listener.remove_listener(MESSAGES_QUEUED, woken)
            await pool.release(listener)

    async def work_once(self, pool: asyncpg.Pool) -> int:
        """Send one lease's worth of due messages; returns how many were leased."""
        rows = await pool.fetch(
            LEASE_SQL,
            self.batch,
            datetime.now(UTC),
            self.per_subscription,
            [],
            [],
            [],
            list(MESSAGE_CHANNELS),
            self.lease_s,
        )
        await asyncio.gather(*(self._send(pool, row) for row in rows))
        return len(rows)

    async def _send(self, pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        name = row["channel"]
        if not row["active"]:
            await finish(pool, row, "disabled", None, "subscription disabled")
            return
        channel = self.channels.get(name)
        payload = orjson.loads(row["payload"])
        try:
            if channel is None:
                raise RuntimeError(f"no {name} channel is configured")
            await channel.send(
                row["address"],
                Message(payload["text"], payload.get("subject")),
                delivery_id=str(row["id"]),
            )
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            # the log names the channel and the error's type only: never the address
            log.warning("%s message failed (%s)", name, type(exc).__name__)
            delay = webhooks.next_delay(row["attempts"] + 1, None, self.schedule)
            DELIVERIES.labels(name, "retry" if delay is not None else "dead").inc()
            if delay is None:
                DEAD.inc()
                await finish(pool, row, "dead", None, error)
            else:
                await retry_later(pool, row, delay, None, error)
            return
        await finish(pool, row, "delivered", None, None)
        DELIVERIES.labels(name, "delivered").inc()
        if row["reported_at"] is not None:
            DISPATCH_LATENCY.labels(row["department"] or "", name).observe(
                max(0.0, (datetime.now(UTC) - row["reported_at"]).total_seconds())
            )
