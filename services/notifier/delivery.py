"""Department feeds and webhook deliveries.

`FeedWriter.handle` turns a batch of lifecycle events into (1) messages on the departments'
`dept.<code>` topics, published and acknowledged before the offsets are committed, with a
deterministic id per source event, and (2) rows in the delivery log, one per webhook endpoint
(unique per event and endpoint). `WebhookSender` works the log: it leases due rows
(`SKIP LOCKED`), posts them signed, and records the outcome, retrying on the schedule.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram

from services.notifier import webhooks
from services.notifier.resident_delivery import queue_for_residents
from services.notifier.views import DEPARTMENT_EVENTS, department_view
from shared import events, topics
from shared.aio import until_set
from shared.db import create_pool
from shared.events import Envelope
from shared.ids import derived_event_id
from shared.kafka import DeadLetters, decode_records, ensure_topics
from shared.metrics import REGISTRY

log = logging.getLogger(__name__)

DISPATCH_LATENCY = Histogram(
    "griddispatch_dispatch_latency_seconds",
    "Reported → delivered to the department, by department and channel",
    ["department", "channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "griddispatch_deliveries_total",
    "Delivery attempts by channel and result",
    ["channel", "result"],
    registry=REGISTRY,
)
DISABLED = Gauge(
    "griddispatch_webhook_endpoints_disabled",
    "Webhook endpoints disabled (410 or by hand)",
    registry=REGISTRY,
)
BREAKERS_OPEN = Gauge(
    "griddispatch_webhook_breakers_open",
    "Webhook endpoints whose circuit breaker is open (their deliveries wait out the cool-down)",
    registry=REGISTRY,
)
DEAD = Counter(
    "griddispatch_deliveries_dead_total",
    "Deliveries that exhausted their retries",
    registry=REGISTRY,
)


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
    ) -> None:
        self.quiet = quiet
        self.replication_factor = replication_factor
        self.pool = pool
        self.producer = producer
        self.kafka = kafka
        self.partitions = partitions
        self.dead_letters = dead_letters
        self._topics: set[str] = set()

    async def _topic(self, department: str) -> str:
        name = topics.department_feed(department)
        if name not in self._topics:
            await ensure_topics(
                self.kafka,
                [name],
                partitions=self.partitions,
                replication_factor=self.replication_factor,
            )
            self._topics.add(name)
        return name

    async def handle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> int:
        """Write one batch to the department feeds and the delivery log. The database work is
        set-based (a handful of statements and one commit per batch, not per event), while
        each event still sees the case as the events before it left it."""
        items = [
            (env, event)
            for env, event in await decode_records(records, self.dead_letters)
            if isinstance(event, DEPARTMENT_EVENTS)
        ]
        if not items:
            return 0
        sends: list[tuple[str, bytes, bytes, str | None, datetime | None]] = []
        deliveries: list[tuple[uuid.UUID, bytes, str, datetime | None, str]] = []
        # A case whose first event in the batch routes it needs nothing from the database
        # (the usual batch: new cases only, and no lookup at all).
        routed_first: dict[str, bool] = {}
        for env, event in items:
            routed_first.setdefault(env.case_id, isinstance(event, events.CaseRouted))
        lookup = [case_id for case_id, first in routed_first.items() if not first]
        async with self.pool.acquire() as conn, conn.transaction():
            rows = (
                await conn.fetch("SELECT * FROM notifier.cases WHERE case_id = ANY($1)", lookup)
                if lookup
                else []
            )
            cases: dict[str, dict[str, Any]] = {r["case_id"]: dict(r) for r in rows}
            routed: dict[str, dict[str, Any]] = {}  # written back at the end of the batch
            for_residents: list[tuple[Envelope, events.Event, dict[str, Any]]] = []
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
                for_residents.append((env, event, case))
                view = department_view(env, event, case)
                view["feed_id"] = str(derived_event_id(env.event_id, "dept-feed"))
                body = orjson.dumps(view)
                sends.append(
                    (
                        await self._topic(case["department"]),
                        body,
                        env.case_id.encode(),
                        case["department"],
                        case["reported_at"],
                    )
                )
                deliveries.append(
                    (
                        env.event_id,
                        body,
                        case["department"],
                        case["reported_at"],
                        case["worker_id"] or "",
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
            await queue_for_residents(conn, for_residents, quiet=self.quiet, now=now)
            # the delivery log: one row per active endpoint of the department, of the case's
            # grid worker, and of worker-app gateways (owner '*': every worker)
            if deliveries:
                await conn.execute(
                    """INSERT INTO notifier.deliveries (id, event_id, subscription_id, payload,
                           department, reported_at)
                       SELECT md5(x.event_id::text || '/' || s.id)::uuid, x.event_id, s.id,
                           x.payload, x.department, x.reported_at
                       FROM unnest($1::uuid[], $2::bytea[], $3::text[], $4::timestamptz[],
                           $5::text[]) AS x(event_id, payload, department, reported_at, worker_id)
                       JOIN notifier.subscriptions s ON s.active AND (
                           (s.owner_kind = 'department' AND s.owner = x.department)
                           OR (s.owner_kind = 'worker' AND s.owner IN (x.worker_id, '*')))
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
        return len(sends)


@dataclass
class Breaker:
    """Per-endpoint circuit breaker: after `threshold` failures in a row, stop calling the
    endpoint for `cooldown_s` (its deliveries wait), then try again."""

    threshold: int = 5
    cooldown_s: float = 30.0
    failures: dict[str, int] = field(default_factory=dict)
    open_until: dict[str, float] = field(default_factory=dict)

    def allows(self, endpoint: str) -> bool:
        return time.monotonic() >= self.open_until.get(endpoint, 0.0)

    def open_endpoints(self) -> list[str]:
        now = time.monotonic()
        return [endpoint for endpoint, until in self.open_until.items() if until > now]

    def record(self, endpoint: str, ok: bool) -> None:
        if ok:
            self.failures.pop(endpoint, None)
            return
        n = self.failures.get(endpoint, 0) + 1
        self.failures[endpoint] = n
        if n >= self.threshold:
            self.open_until[endpoint] = time.monotonic() + self.cooldown_s


# Each subscription gets at most its share of the lease ($3 minus what the sender already has
# in flight for it; $4/$5), and an endpoint whose circuit breaker is open gets none ($6): one
# endpoint's backlog cannot fill the sender while the others wait. Only the subscriptions with
# pending deliveries are visited (found by skipping through the per-subscription index), so
# thousands of quiet subscriptions (a worker app each, say) cost nothing.
LEASE_SQL = """
WITH RECURSIVE pending(sub_id) AS (
    SELECT min(subscription_id) FROM notifier.deliveries WHERE state = 'pending'
    UNION ALL
    SELECT (SELECT min(d3.subscription_id) FROM notifier.deliveries d3
            WHERE d3.state = 'pending' AND d3.subscription_id > p.sub_id)
    FROM pending p WHERE p.sub_id IS NOT NULL
)
UPDATE notifier.deliveries d SET lease_until = $2 + interval '60 seconds'
FROM (
    SELECT due.id FROM pending p
    JOIN notifier.subscriptions s ON s.id = p.sub_id
    LEFT JOIN unnest($4::bigint[], $5::int[]) AS busy(sub_id, n) ON busy.sub_id = s.id
    CROSS JOIN LATERAL (
        SELECT d2.id, d2.next_attempt_at FROM notifier.deliveries d2
        WHERE d2.subscription_id = s.id AND d2.state = 'pending' AND d2.next_attempt_at <= $2
          AND (d2.lease_until IS NULL OR d2.lease_until < $2)
        ORDER BY d2.next_attempt_at LIMIT greatest(0, $3 - coalesce(busy.n, 0))
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE s.url <> ALL($6::text[])
    ORDER BY due.next_attempt_at LIMIT $1
) due, notifier.subscriptions s
WHERE d.id = due.id AND s.id = d.subscription_id
RETURNING d.id, d.payload, d.attempts, d.department, d.reported_at, s.id AS sub_id, s.url,
          s.secrets, s.active
"""


# Notified (by a trigger, once per statement) whenever deliveries are inserted.
WAKE_CHANNEL = "notifier_deliveries"


class WebhookSender:
    def __init__(
        self,
        dsn: str,
        *,
        allow: frozenset[str],
        schedule: tuple[float, ...],
        timeout_s: float = 15.0,
        per_endpoint: int = 4,
        batch: int = 100,
        breaker: Breaker | None = None,
        idle_poll_s: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.allow = allow
        self.schedule = schedule
        self.timeout_s = timeout_s
        self.per_endpoint = per_endpoint
        self.batch = batch  # also the most deliveries in flight at once
        # the most in flight (sending or waiting for their endpoint's turn) per subscription
        self.per_subscription = min(batch, 8 * per_endpoint)
        self.breaker = breaker or Breaker()
        # With nothing in flight the sender sleeps until a new delivery is inserted (a trigger
        # NOTIFYs `WAKE_CHANNEL`) or this long: retries and held-back deliveries fall due
        # without a notification.
        self.idle_poll_s = idle_poll_s
        self._limits: dict[str, asyncio.Semaphore] = {}
        self.attempts = 0

    async def run(self, stop: asyncio.Event) -> None:
        # aiohttp, not httpx: on this machine httpx's pool managed ~260 requests/s with 32 in
        # flight against ~8,700/s for aiohttp (bench/notifier.py).
        # No per-host cap in the pool: endpoints (URLs) are limited one by one (`per_endpoint`),
        # and a host's hanging URL must not use up the connections of its other URLs.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
            while not stop.is_set():
                try:
                    pool = await create_pool(self.dsn, "notifier", min_size=1, max_size=8)
                    try:
                        await self.send_loop(pool, client, stop)
                    finally:
                        await pool.close()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("webhook sender lost the database: %s", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1)

    async def send_loop(
        self, pool: asyncpg.Pool, client: aiohttp.ClientSession, stop: asyncio.Event
    ) -> None:
        """Lease due deliveries as slots free up and record the delivered ones in batches.

        Not batch by batch: a batch waited for its slowest delivery (up to the 15 s timeout of
        one broken endpoint) before the next lease, so every department's webhooks stalled
        behind one department's dead receiver."""
        in_flight: dict[asyncio.Task[int | None], asyncpg.Record] = {}
        delivered: list[tuple[uuid.UUID, int]] = []
        leased_at = first_unrecorded = 0.0
        freed = self.batch  # slots freed since the last lease
        wake = asyncio.Event()

        def woken(*_: object) -> None:
            wake.set()

        listener = await pool.acquire()
        await listener.add_listener(WAKE_CHANNEL, woken)
        try:
            while not stop.is_set() or in_flight:
                room = self.batch - len(in_flight)
                if (
                    not stop.is_set()
                    and room > 0
                    and (
                        (wake.is_set() and not in_flight)
                        or freed >= min(self.batch // 2, self.per_subscription // 2)
                        or time.monotonic() - leased_at > 0.2
                    )
                ):
                    # Cleared before the lease: a delivery inserted meanwhile wakes us again.
                    wake.clear()
                    leased_at, freed = time.monotonic(), 0
                    for row in await self._lease(pool, room, in_flight.values()):
                        in_flight[asyncio.create_task(self._deliver(pool, client, row))] = row
                if not in_flight:
                    await until_set(wake, stop, at_most_s=self.idle_poll_s)
                    continue
                done, _ = await asyncio.wait(
                    in_flight, timeout=0.2, return_when=asyncio.FIRST_COMPLETED
                )
                freed += len(done)
                for task in done:
                    row = in_flight.pop(task)
                    status = task.result()  # a database error ends the loop (and is retried)
                    if status is not None:
                        if not delivered:
                            first_unrecorded = time.monotonic()
                        delivered.append((row["id"], status))
                # The common outcome, recorded for many at once: a delivered row stays leased
                # until then, and after a crash is sent once more with the same webhook-id.
                if delivered and (
                    len(delivered) >= self.batch // 4
                    or not in_flight
                    or time.monotonic() - first_unrecorded > 0.05
                ):
                    await self._record_delivered(pool, delivered)
                    delivered = []
        finally:  # the leases of whatever was still in flight expire; those are retried
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            if delivered:
                with contextlib.suppress(Exception):
                    await self._record_delivered(pool, delivered)
            with contextlib.suppress(Exception):  # UNLISTEN: pooled connections are not reset
                await listener.remove_listener(WAKE_CHANNEL, woken)
            await pool.release(listener)

    async def _lease(
        self, pool: asyncpg.Pool, room: int, in_flight: Iterable[asyncpg.Record]
    ) -> list[asyncpg.Record]:
        """Up to `room` due deliveries, each subscription's share at most."""
        open_endpoints = self.breaker.open_endpoints()
        BREAKERS_OPEN.set(len(open_endpoints))
        busy: collections.Counter[int] = collections.Counter()
        sending = set()
        for row in in_flight:
            busy[row["sub_id"]] += 1
            sending.add(row["id"])
        rows = await pool.fetch(
            LEASE_SQL,
            room,
            datetime.now(UTC),
            self.per_subscription,
            list(busy),
            list(busy.values()),
            open_endpoints,
        )
        # one queued here past its lease (now renewed) is not sent twice
        return [row for row in rows if row["id"] not in sending]

    async def _record_delivered(
        self, pool: asyncpg.Pool, delivered: list[tuple[uuid.UUID, int]]
    ) -> None:
        await pool.execute(
            "UPDATE notifier.deliveries d SET state = 'delivered', "
            "attempts = d.attempts + 1, lease_until = NULL, last_status = x.status, "
            "last_error = NULL, delivered_at = now() "
            "FROM unnest($1::uuid[], $2::int[]) AS x(id, status) WHERE d.id = x.id",
            [d[0] for d in delivered],
            [d[1] for d in delivered],
        )

    async def _deliver(
        self, conn: asyncpg.Pool, client: aiohttp.ClientSession, row: asyncpg.Record
    ) -> int | None:
        """One attempt. Returns the HTTP status when delivered (recorded by the caller);
        every other outcome is recorded here."""
        url = row["url"]
        now = datetime.now(UTC)
        if not row["active"]:
            await self._finish(conn, row, "disabled", None, "endpoint disabled")
            return None
        try:
            webhooks.check_destination(url, self.allow)
        except webhooks.ForbiddenDestination as exc:
            await self._finish(conn, row, "dead", None, str(exc))
            DELIVERIES.labels("webhook", "forbidden").inc()
            return None
        body = bytes(row["payload"]).decode()
        headers = webhooks.sign(list(row["secrets"]), str(row["id"]), now, body)
        limit = self._limits.setdefault(url, asyncio.Semaphore(self.per_endpoint))
        status, error, retry_after = None, None, None
        async with limit:
            # Asked once it is this delivery's turn, not before queueing: the endpoint may have
            # failed often enough meanwhile to open the breaker, and every queued delivery
            # would otherwise still wait out its own timeout, holding one of the sender's slots.
            if not self.breaker.allows(url):
                await self._hold_back(conn, row, now)
                return None
            self.attempts += 1
            try:
                async with client.post(
                    url, data=body.encode(), headers=headers, allow_redirects=False
                ) as resp:
                    await resp.read()
                    status = resp.status
                    retry_after = webhooks.retry_after_s(resp.headers.get("retry-after"), now)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        ok = status is not None and 200 <= status < 300
        self.breaker.record(url, ok)
        if ok:
            DELIVERIES.labels("webhook", "delivered").inc()
            if row["reported_at"] is not None:
                DISPATCH_LATENCY.labels(row["department"] or "", "webhook").observe(
                    max(0.0, (datetime.now(UTC) - row["reported_at"]).total_seconds())
                )
            return status
        if status == 410:
            await conn.execute(
                "UPDATE notifier.subscriptions SET active = false, "
                "disabled_reason = '410 Gone from the endpoint' WHERE id = $1",
                row["sub_id"],
            )
            await self._finish(conn, row, "disabled", status, "410 Gone")
            DELIVERIES.labels("webhook", "gone").inc()
            DISABLED.inc()
            return None
        delay = webhooks.next_delay(row["attempts"] + 1, retry_after, self.schedule)
        DELIVERIES.labels("webhook", "retry" if delay is not None else "dead").inc()
        if delay is None:
            DEAD.inc()
            await self._finish(conn, row, "dead", status, error or f"HTTP {status}")
            return None
        await conn.execute(
            "UPDATE notifier.deliveries SET attempts = attempts + 1, lease_until = NULL, "
            "next_attempt_at = $2, last_status = $3, last_error = $4 WHERE id = $1",
            row["id"],
            datetime.now(UTC) + timedelta(seconds=delay),
            status,
            error or f"HTTP {status}",
        )
        return None

    async def _hold_back(self, conn: asyncpg.Pool, row: asyncpg.Record, now: datetime) -> None:
        """The endpoint's breaker is open: try again after its cool-down (not an attempt)."""
        DELIVERIES.labels("webhook", "held_back").inc()
        await conn.execute(
            "UPDATE notifier.deliveries SET lease_until = NULL, next_attempt_at = $2 WHERE id = $1",
            row["id"],
            now + timedelta(seconds=self.breaker.cooldown_s),
        )

    async def _finish(
        self,
        conn: asyncpg.Pool,
        row: asyncpg.Record,
        state: str,
        status: int | None,
        error: str | None,
    ) -> None:
        await conn.execute(
            "UPDATE notifier.deliveries SET state = $2, attempts = attempts + 1, "
            "lease_until = NULL, last_status = $3, last_error = $4, "
            "delivered_at = CASE WHEN $2 = 'delivered' THEN now() END WHERE id = $1",
            row["id"],
            state,
            status,
            error,
        )


async def replay(conn: asyncpg.Connection, delivery_id: uuid.UUID) -> bool:
    """Send a dead delivery again (same webhook-id), from the first step of the schedule."""
    done = await conn.execute(
        "UPDATE notifier.deliveries SET state = 'pending', attempts = 0, next_attempt_at = now(),"
        " lease_until = NULL WHERE id = $1 AND state = 'dead'",
        delivery_id,
    )
    return bool(done.endswith(" 1"))
