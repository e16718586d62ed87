"""The delivery log and its webhook sender.

The log (`notifier.deliveries`) holds one row per event and subscription, written by the feed
writer (`feeds`). `WebhookSender` works its webhook rows: it leases due rows (`SKIP LOCKED`),
posts them signed, and records the outcome, retrying on the schedule; e-mail and SMS rows are
the `staff` module's. The metrics here are the notifier's, whatever the channel.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from services.notifier import webhooks
from shared.aio import until_set
from shared.db import with_own_pool
from shared.metrics import REGISTRY

log = logging.getLogger(__name__)

DISPATCH_LATENCY = Histogram(
    "griddispatch_dispatch_latency_seconds",
    "Reported → the case's routing delivered to the department (its feed, webhooks, e-mail) "
    "or worker (SMS), by department and channel; later messages about the case are not timed",
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


# A lease ($8 seconds) is how long the rows are the sender's: should it die before recording an
# attempt, another sender (or itself, restarted) takes them again once the lease ends.
# Each subscription of the sender's channels ($7) gets at most its share of the lease ($3 minus
# what the sender already has in flight for it; $4/$5), and an endpoint whose circuit breaker
# is open gets none ($6): one endpoint's backlog cannot fill the sender while the others wait.
# Only the subscriptions with pending deliveries are visited (found by skipping through the
# per-subscription index), so thousands of quiet subscriptions (a worker app each) cost nothing.
LEASE_SQL = """
WITH RECURSIVE pending(sub_id) AS (
    SELECT min(subscription_id) FROM notifier.deliveries WHERE state = 'pending'
    UNION ALL
    SELECT (SELECT min(d3.subscription_id) FROM notifier.deliveries d3
            WHERE d3.state = 'pending' AND d3.subscription_id > p.sub_id)
    FROM pending p WHERE p.sub_id IS NOT NULL
)
UPDATE notifier.deliveries d SET lease_until = $2 + make_interval(secs => $8)
FROM (
    SELECT due.id FROM pending p
    JOIN notifier.subscriptions s ON s.id = p.sub_id AND s.channel = ANY($7::text[])
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
          s.secrets, s.active, s.channel, s.address
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
        lease_s: float = 60.0,
    ) -> None:
        self.dsn = dsn
        self.allow = allow
        self.lease_s = lease_s
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

            async def sending(pool: asyncpg.Pool) -> None:
                await self.send_loop(pool, client, stop)

            await with_own_pool(
                self.dsn, "notifier", stop, sending, what="webhook sender", max_size=8
            )

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
            ["webhook"],
            self.lease_s,
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
            await finish(conn, row, "disabled", None, "endpoint disabled")
            return None
        try:
            webhooks.check_destination(url, self.allow)
        except webhooks.ForbiddenDestination as exc:
            await finish(conn, row, "dead", None, str(exc))
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
            await finish(conn, row, "disabled", status, "410 Gone")
            DELIVERIES.labels("webhook", "gone").inc()
            DISABLED.inc()
            return None
        delay = webhooks.next_delay(row["attempts"] + 1, retry_after, self.schedule)
        DELIVERIES.labels("webhook", "retry" if delay is not None else "dead").inc()
        if delay is None:
            DEAD.inc()
            await finish(conn, row, "dead", status, error or f"HTTP {status}")
            return None
        await retry_later(conn, row, delay, status, error or f"HTTP {status}")
        return None

    async def _hold_back(self, conn: asyncpg.Pool, row: asyncpg.Record, now: datetime) -> None:
        """The endpoint's breaker is open: try again after its cool-down (not an attempt)."""
        DELIVERIES.labels("webhook", "held_back").inc()
        await conn.execute(
            "UPDATE notifier.deliveries SET lease_until = NULL, next_attempt_at = $2 WHERE id = $1",
            row["id"],
            now + timedelta(seconds=self.breaker.cooldown_s),
        )


async def finish(
    conn: asyncpg.Pool | asyncpg.Connection,
    row: asyncpg.Record,
    state: str,
    status: int | None,
    error: str | None,
) -> None:
    """Record a delivery's last attempt and its final state."""
    await conn.execute(
        "UPDATE notifier.deliveries SET state = $2, attempts = attempts + 1, "
        "lease_until = NULL, last_status = $3, last_error = $4, "
        "delivered_at = CASE WHEN $2 = 'delivered' THEN now() END WHERE id = $1",
        row["id"],
        state,
        status,
        error,
    )


async def retry_later(
    conn: asyncpg.Pool | asyncpg.Connection,
    row: asyncpg.Record,
    delay_s: float,
    status: int | None,
    error: str,
) -> None:
    """Record a failed attempt; the delivery falls due again after `delay_s`."""
    await conn.execute(
        "UPDATE notifier.deliveries SET attempts = attempts + 1, lease_until = NULL, "
        "next_attempt_at = $2, last_status = $3, last_error = $4 WHERE id = $1",
        row["id"],
        datetime.now(UTC) + timedelta(seconds=delay_s),
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
