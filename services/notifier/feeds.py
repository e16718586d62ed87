"""Department feeds: the lifecycle consumer that tells everyone who is to be told.

`FeedWriter.handle` turns a batch of lifecycle events into (1) messages on the departments'
`dept.<code>` topics (unless a department switched its feed off), published and acknowledged
before the offsets are committed, with a deterministic id per source event, and (2) rows in
the delivery log, one per subscription (webhook, e-mail, SMS) and event, and messages for
residents — all in one transaction per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.notifier.delivery import DELIVERIES, DISPATCH_LATENCY
from services.notifier.resident_delivery import (
    DepartmentName,
    forget_residents,
    no_names,
    queue_for_residents,
)
from services.notifier.staff import message_subscriptions, queue_for_ladder, queue_for_staff
from services.notifier.views import DEPARTMENT_EVENTS, department_view, dispatch_started
from shared import events, topics
from shared.aio import Refreshed
from shared.directory import DepartmentDirectory
from shared.events import Envelope
from shared.ids import derived_event_id
from shared.kafka import DeadLetters, decode_records, ensure_topics

# How long the set of departments whose feed is switched off is trusted before it is read
# again: a switch takes effect within this, at the cost of one small query per interval.
FEED_SWITCH_TTL_S = 5.0
# How long the first batch waits for the department directory (names for residents' messages)
DIRECTORY_WAIT_S = 10.0


class FeedWriter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        kafka: str | Mapping[str, Any],
        partitions: int,
        dead_letters: DeadLetters | None,
        quiet: tuple[dtime, dtime] = (dtime(22), dtime(7)),
        replication_factor: int = 1,
        directory: DepartmentDirectory | None = None,
        ladder_locale: str = "zh-CN",
    ) -> None:
        self.quiet = quiet
        self.ladder_locale = ladder_locale
        # department names for residents' messages; waited for once, at the first batch
        self.department_name: DepartmentName = directory.name if directory else no_names
        self._names_ready = directory.caught_up if directory else None
        self.replication_factor = replication_factor
        self.pool = pool
        self.producer = producer
        self.kafka = kafka
        self.partitions = partitions
        self.dead_letters = dead_letters
        self._topics: set[str] = set()
        # departments whose feed topic is switched off, read again every few seconds
        self._feeds_off = Refreshed(_read_feeds_off, FEED_SWITCH_TTL_S, frozenset[str]())
        self._message_subscriptions = message_subscriptions()

    async def _topic(self, department: str) -> str:
        name = topics.department_feed(department)
        if name not in self._topics:
            await ensure_topics(
                self.kafka,
                [name],
                partitions=self.partitions,
                replication_factor=self.replication_factor,
                configs=topics.FEED_CONFIG,
            )
            self._topics.add(name)
        return name

    async def handle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> int:
        """Write one batch to the department feeds and the delivery log; returns the events
        told to a department. The database work is set-based (a handful of statements and one
        commit per batch, not per event), while each event still sees the case as the events
        before it left it."""
        items = [
            (env, event)
            for env, event in await decode_records(records, self.dead_letters)
            if isinstance(event, DEPARTMENT_EVENTS)
        ]
        if not items:
            return 0
        if self._names_ready is not None:
            # At start: give the directory a moment, or the first residents' messages would
            # name departments by code. Once only: without it, messages still go out.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._names_ready.wait(), DIRECTORY_WAIT_S)
            self._names_ready = None
        sends: list[tuple[str, bytes, bytes, str | None, datetime | None]] = []
        deliveries: list[tuple[uuid.UUID, bytes, str, datetime | None, str, str]] = []
        # A case whose first event in the batch routes it needs nothing from the database
        # (the usual batch: new cases only, and no lookup at all).
        routed_first: dict[str, bool] = {}
        for env, event in items:
            routed_first.setdefault(env.case_id, isinstance(event, events.CaseRouted))
        lookup = [case_id for case_id, first in routed_first.items() if not first]
        erased = [env.case_id for env, ev in items if isinstance(ev, events.PersonalDataErased)]
        async with self.pool.acquire() as conn, conn.transaction():
            if erased:  # before anything of this batch could queue a message to them
                await forget_residents(conn, erased)
            rows = (
                await conn.fetch("SELECT * FROM notifier.cases WHERE case_id = ANY($1)", lookup)
                if lookup
                else []
            )
            cases: dict[str, dict[str, Any]] = {r["case_id"]: dict(r) for r in rows}
            routed: dict[str, dict[str, Any]] = {}  # written back at the end of the batch
            extended: dict[str, datetime] = {}  # new resolve deadlines, likewise
            for_residents: list[tuple[Envelope, events.Event, dict[str, Any]]] = []
            for_staff: list[tuple[Envelope, dict[str, Any], dict[str, Any]]] = []
            for_ladder: list[
                tuple[Envelope, dict[str, Any], dict[str, Any], events.CaseEscalated]
            ] = []
            feeds_off = await self._feeds_off.get(conn)
            now = datetime.now(UTC)
            for env, event in items:
                case: dict[str, Any] | None
                if isinstance(event, events.CaseRouted):
                    case = {
                        "case_id": env.case_id,
                        "department": event.department,
                        "worker_id": event.worker_id,
                        "grid_id": event.grid_id,
                        "district": event.district,
                        "category": event.category,
                        "priority": event.priority.value,
                        "reported_at": event.reported_at,
                        "resolve_by": event.deadlines.resolve_by,
                    }
                    cases[env.case_id] = routed[env.case_id] = case
                case = cases.get(env.case_id)
                if case is None or not case["department"]:
                    continue  # not routed yet: nobody to tell
                if isinstance(event, events.CaseDeadlineExtended):
                    # due later from now on (a copy: this batch's earlier messages keep theirs)
                    case = cases[env.case_id] = {**case, "resolve_by": event.resolve_by}
                    extended[env.case_id] = event.resolve_by
                if not (isinstance(event, events.CaseRouted) and event.handed_over_from):
                    # a handover changes the worker only: nothing new for the resident
                    for_residents.append((env, event, case))
                view = department_view(env, event, case)
                view["feed_id"] = str(derived_event_id(env.event_id, "dept-feed"))
                for_staff.append((env, view, case))
                if isinstance(event, events.CaseEscalated):
                    for_ladder.append((env, view, case, event))
                body = orjson.dumps(view)
                since = dispatch_started(view, case)  # None: not a dispatch, not timed
                if case["department"] not in feeds_off:
                    sends.append(
                        (
                            await self._topic(case["department"]),
                            body,
                            env.case_id.encode(),
                            case["department"],
                            since,
                        )
                    )
                deliveries.append(
                    (
                        env.event_id,
                        body,
                        case["department"],
                        since,
                        case["worker_id"] or "",
                        env.event_type,
                    )
                )
            if routed:
                await conn.execute(
                    """INSERT INTO notifier.cases (case_id, department, worker_id, grid_id,
                           district, category, priority, reported_at, resolve_by)
                       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                           $5::text[], $6::text[], $7::text[], $8::timestamptz[],
                           $9::timestamptz[])
                       ON CONFLICT (case_id) DO UPDATE SET department = EXCLUDED.department,
                           worker_id = EXCLUDED.worker_id, grid_id = EXCLUDED.grid_id,
                           district = EXCLUDED.district, category = EXCLUDED.category,
                           priority = EXCLUDED.priority, reported_at = EXCLUDED.reported_at,
                           resolve_by = EXCLUDED.resolve_by, updated_at = now()""",
                    *[
                        list(col)
                        for col in zip(*(c.values() for c in routed.values()), strict=True)
                    ],
                )
            if extended:
                await conn.execute(
                    "UPDATE notifier.cases c SET resolve_by = x.resolve_by, updated_at = now() "
                    "FROM unnest($1::text[], $2::timestamptz[]) AS x(case_id, resolve_by) "
                    "WHERE c.case_id = x.case_id",
                    list(extended),
                    list(extended.values()),
                )
            # when each case closed (None: reopened), for the retention of residents' contacts
            closings: dict[str, datetime | None] = {}
            for env, event in items:
                if isinstance(event, events.CaseClosed | events.CaseReopened):
                    closings[env.case_id] = (
                        env.occurred_at if isinstance(event, events.CaseClosed) else None
                    )
            if closings:
                await conn.execute(
                    "UPDATE notifier.cases c SET closed_at = x.closed_at "
                    "FROM unnest($1::text[], $2::timestamptz[]) AS x(case_id, closed_at) "
                    "WHERE c.case_id = x.case_id",
                    list(closings),
                    list(closings.values()),
                )
            await queue_for_residents(
                conn,
                for_residents,
                quiet=self.quiet,
                now=now,
                department_name=self.department_name,
            )
            # e-mail and SMS subscriptions
            await queue_for_staff(conn, for_staff, self._message_subscriptions)
            # whoever an escalation reached, at the contact the case carries
            await queue_for_ladder(conn, for_ladder, locale=self.ladder_locale)
            # the delivery log's webhooks: one row per active endpoint of the department, of
            # the case's grid worker, and of worker-app gateways (owner '*': every worker)
            if deliveries:
                await conn.execute(
                    """INSERT INTO notifier.deliveries (id, event_id, subscription_id, payload,
                           department, reported_at)
                       SELECT md5(x.event_id::text || '/' || s.id)::uuid, x.event_id, s.id,
                           x.payload, x.department, x.reported_at
                       FROM unnest($1::uuid[], $2::bytea[], $3::text[], $4::timestamptz[],
                           $5::text[], $6::text[])
                           AS x(event_id, payload, department, reported_at, worker_id, event_type)
                       JOIN notifier.subscriptions s ON s.active AND s.channel = 'webhook' AND (
                           (s.owner_kind = 'department' AND s.owner = x.department)
                           OR (s.owner_kind = 'worker' AND s.owner IN (x.worker_id, '*')))
                           AND (s.event_types IS NULL OR x.event_type = ANY(s.event_types))
                       ON CONFLICT (event_id, subscription_id) DO NOTHING""",
                    *[list(col) for col in zip(*deliveries, strict=True)],
                )
        futures = [await self.producer.send(t, v, key=k) for t, v, k, _, _ in sends]
        await asyncio.gather(*futures)
        now = datetime.now(UTC)
        for _, _, _, dept, reported_at in sends:
            DELIVERIES.labels("feed", "delivered").inc()
            if reported_at is not None:
                DISPATCH_LATENCY.labels(dept or "", "feed").observe(
                    max(0.0, (now - reported_at).total_seconds())
                )
        return len(deliveries)


async def _read_feeds_off(conn: asyncpg.Connection) -> frozenset[str]:
    rows = await conn.fetch("SELECT department FROM notifier.department_feeds WHERE NOT enabled")
    return frozenset(r["department"] for r in rows)
