"""The transactional outbox.

`Outbox.add` writes an envelope into `<schema>.outbox` inside the caller's transaction, so a
state change and the event announcing it commit together or not at all. `OutboxRelay` moves
the rows to Kafka:

1. one relay per schema is active at a time (a PostgreSQL advisory lock; standbys wait);
2. it reads a batch in `id` order and sends it with the idempotent `acks=all` producer —
   rows of one case share a key, hence a partition, and go out in the order they were written;
3. only after the broker acknowledged every row of the batch are they deleted.

A relay that dies between 2 and 3 sends those rows again on restart: downstream sees a
duplicate with the same `event_id`, and consumers deduplicate by it. It sleeps on
LISTEN/NOTIFY, with a polling fallback in case a notification is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from shared.aio import until_set
from shared.db import CONNECTION_LOST, check_schema_name
from shared.events import Envelope
from shared.logging import COLLAPSE
from shared.metrics import (
    OUTBOX_BACKLOG,
    OUTBOX_BATCH_SECONDS,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISHED,
)

if TYPE_CHECKING:  # the relay is given its producer: the outbox's writers need no Kafka client
    from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)


class Outbox:
    """The write side, used inside a service's own transactions."""

    def __init__(self, schema: str) -> None:
        self.schema = check_schema_name(schema)
        self.channel = f"{schema}_outbox"
        # Rows keep the order given: ids are assigned in ordinality order.
        self._insert = (
            f"INSERT INTO {schema}.outbox (event_id, topic, key, value, headers) "
            "SELECT e, t, k, v, h::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[], "
            "$4::bytea[], $5::text[]) WITH ORDINALITY AS x(e, t, k, v, h, n) ORDER BY n"
        )

    def row(
        self, envelope: Envelope, topic: str, headers: dict[str, str] | None = None
    ) -> tuple[object, ...]:
        """The values of one outbox row (event_id, topic, key, value, headers as JSON text), for
        callers that write it inside a larger single statement (and select pg_notify there)."""
        return (
            envelope.event_id,
            topic,
            envelope.case_id,
            envelope.to_json(),
            orjson.dumps({**(headers or {}), "event_type": envelope.event_type}).decode(),
        )

    async def add(
        self,
        conn: asyncpg.Connection,
        envelope: Envelope,
        *,
        topic: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        await self.add_many(conn, [(envelope, topic)], headers=headers)

    async def add_many(
        self,
        conn: asyncpg.Connection,
        items: list[tuple[Envelope, str]],
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Add several envelopes, in this order, with one statement (arrays, not a round trip
        per row). Must run inside the caller's transaction."""
        if not conn.is_in_transaction():
            raise RuntimeError("Outbox.add must run inside the caller's transaction")
        if not items:
            return
        cols = list(zip(*(self.row(env, topic, headers) for env, topic in items), strict=True))
        await conn.execute(self._insert, *[list(c) for c in cols])
        # Delivered at commit, collapsed to one per transaction.
        await conn.execute("SELECT pg_notify($1, '')", self.channel)


def _lock_key(schema: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"outbox:{schema}".encode()).digest()[:8], "big", signed=True
    )


class OutboxRelay:
    """Publishes one schema's outbox to Kafka. Run it with `await relay.run(stop_event)`."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 2000,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.producer = producer
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.channel = f"{schema}_outbox"
        self.is_leader = False
        self.published = 0
        self._wake = asyncio.Event()
        self._backlog_checked = 0.0
        self._select = (
            f"SELECT id, topic, key, value, headers::text AS headers FROM {schema}.outbox"
            " ORDER BY id LIMIT $1"
        )
        self._delete = f"DELETE FROM {schema}.outbox WHERE id = ANY($1::bigint[])"

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set. Survives database and broker outages by retrying."""
        while not stop.is_set():
            try:
                await self._run_connected(stop)
            except CONNECTION_LOST as exc:
                self.is_leader = False
                log.warning(  # each attempt while the database is away
                    "outbox relay lost its database connection: %s", exc, extra=COLLAPSE
                )
                await _wait(stop, self.poll_interval_s)

    async def _run_connected(self, stop: asyncio.Event) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(self.dsn)
        try:
            await self._become_leader(conn, stop)
            if stop.is_set():
                return
            await conn.add_listener(self.channel, self._on_notify)
            log.info("outbox relay for %s is active", self.schema)
            while not stop.is_set():
                # Cleared before the read, not after: a NOTIFY that arrives while this batch
                # is in flight is for rows the read may have missed, and must wake us again.
                self._wake.clear()
                sent = await self.relay_batch(conn)
                if sent >= self.batch_size:
                    continue  # more is waiting
                await self._sleep(stop)
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    async def _become_leader(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        key = _lock_key(self.schema)
        while not stop.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                self.is_leader = True
                return
            await _wait(stop, self.poll_interval_s)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _sleep(self, stop: asyncio.Event) -> None:
        await until_set(self._wake, stop, at_most_s=self.poll_interval_s)

    async def relay_batch(self, conn: asyncpg.Connection) -> int:
        """Publish and delete at most one batch; returns how many rows went out."""
        rows = await conn.fetch(self._select, self.batch_size)
        if not rows:
            OUTBOX_BACKLOG.labels(self.schema).set(0)
            OUTBOX_OLDEST_AGE.labels(self.schema).set(0)
            return 0
        started = time.perf_counter()
        try:
            futures = [
                await self.producer.send(
                    row["topic"],
                    value=row["value"],
                    key=row["key"].encode(),
                    headers=[(k, str(v).encode()) for k, v in orjson.loads(row["headers"]).items()],
                )
                for row in rows
            ]
            await asyncio.gather(*futures)
        except Exception as exc:
            # Nothing of this batch is deleted: it is sent again (same event ids) next time.
            log.warning("outbox relay could not publish a batch, will retry: %s", exc)
            await asyncio.sleep(self.poll_interval_s)
            return 0
        await self.after_publish(rows)
        await conn.execute(self._delete, [row["id"] for row in rows])
        self.published += len(rows)
        for topic in {row["topic"] for row in rows}:
            OUTBOX_PUBLISHED.labels(self.schema, topic).inc(
                sum(1 for row in rows if row["topic"] == topic)
            )
        OUTBOX_BATCH_SECONDS.labels(self.schema).observe(time.perf_counter() - started)
        if time.monotonic() - self._backlog_checked > 1.0:  # a count(*) is not free
            await self._update_backlog(conn)
        return len(rows)

    async def after_publish(self, rows: list[asyncpg.Record]) -> None:
        """Called between the broker's ack and the delete. A seam for crash tests."""

    async def _update_backlog(self, conn: asyncpg.Connection) -> None:
        self._backlog_checked = time.monotonic()
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, extract(epoch FROM clock_timestamp() - min(created_at)) AS age"
            f" FROM {self.schema}.outbox"
        )
        if row is not None:
            OUTBOX_BACKLOG.labels(self.schema).set(row["n"])
            OUTBOX_OLDEST_AGE.labels(self.schema).set(float(row["age"] or 0))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
