"""Escalation: wiring only. The lifecycle consumer arms timers, the scheduler fires them, the
outbox relay publishes what fired, and a small HTTP API switches emergency mode."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import uvicorn
from aiokafka import ConsumerRecord
from fastapi import FastAPI, Header, HTTPException
from prometheus_client import Gauge
from pydantic import BaseModel, Field

from services.escalation import timers
from services.escalation.retention import purges
from services.escalation.settings import MIGRATIONS, EscalationSettings
from shared import topics
from shared.aio import until_set
from shared.db import CONNECTION_LOST, create_pool, migrate
from shared.kafka import (
    DeadLetters,
    Records,
    decode_records,
    durable_subscriber,
    handle_isolating,
    make_broker,
    make_producer,
    start_when_reachable,
    watch_consumers,
)
from shared.metrics import NO_OPENTELEMETRY, REGISTRY, health_routes
from shared.outbox import OutboxRelay
from shared.retention import Retention
from shared.service import KafkaAccess, ServiceSpec, run_until_stopped, supervised
from shared.settings import Settings
from shared.text import refuse_unstorable_text
from shared.web import answer_database_outages

log = logging.getLogger(__name__)
GROUP_ID = "escalation"

PENDING = Gauge("griddispatch_timers_pending", "Pending timers", registry=REGISTRY)
OVERDUE = Gauge(
    "griddispatch_timers_overdue_unfired",
    "Timers due more than 5 s ago and still pending (an auditor: should stay 0)",
    registry=REGISTRY,
)


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Fires due timers. Several replicas may run over one database: SKIP LOCKED shares the
    work and each timer fires in exactly one transaction. Sleeps until the next due time, or
    until NOTIFY says an earlier timer was armed."""

    def __init__(
        self,
        dsn: str,
        cfg: timers.Settings,
        *,
        batch: int = 500,
        max_sleep_s: float = 1.0,
        clock: Clock = utc_now,
    ) -> None:
        self.dsn = dsn
        self.cfg = cfg
        self.batch = batch
        self.max_sleep_s = max_sleep_s
        self.clock = clock
        self.fired = 0
        self._wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                conn: asyncpg.Connection = await asyncpg.connect(self.dsn)
                try:
                    await conn.add_listener(timers.NOTIFY_CHANNEL, lambda *_: self._wake.set())
                    await self._loop(conn, stop)
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            except CONNECTION_LOST as exc:
                log.warning("scheduler lost the database, retrying: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1)

    async def _loop(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            fired = await timers.fire_due(conn, self.clock(), self.cfg, batch=self.batch)
            self.fired += len(fired)
            if len(fired) >= self.batch:
                continue
            nxt = await timers.next_due(conn)
            sleep = self.max_sleep_s
            if nxt is not None:
                sleep = min(sleep, max(0.0, (nxt - self.clock()).total_seconds()))
            if sleep > 0:
                await until_set(self._wake, stop, at_most_s=sleep)


class EmergencyIn(BaseModel):
    area: str = Field(min_length=1, max_length=64, description="district, street office or grid")
    on: bool
    factor: float | None = Field(default=None, gt=0, le=1)
    reason: str = Field(min_length=1, max_length=1000)
    by: str = Field(default="operator", max_length=64)


def http_app(pool: asyncpg.Pool, es: EscalationSettings, cfg: timers.Settings) -> FastAPI:
    app = FastAPI(title="GridDispatch escalation", version="1", telemetry=NO_OPENTELEMETRY)
    refuse_unstorable_text(app)
    answer_database_outages(app)

    async def db_ok() -> bool:
        async with pool.acquire() as conn:
            PENDING.set(
                await conn.fetchval(
                    "SELECT count(*) FROM escalation.timers WHERE state = 'pending'"
                )
            )
            OVERDUE.set(
                await conn.fetchval(
                    "SELECT count(*) FROM escalation.timers WHERE state = 'pending' "
                    "AND due_at < now() - interval '5 seconds'"
                )
            )
            return True

    app.router.routes.extend(health_routes({"database": db_ok}))

    def check(authorization: str | None) -> None:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not es.admin_token or not hmac.compare_digest(token, es.admin_token):
            raise HTTPException(403, "an operator token is required")

    @app.post("/v1/emergency", status_code=202)
    async def switch(
        body: EmergencyIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Switch an area into (with a factor, e.g. 0.25) or out of emergency mode."""
        check(authorization)
        if body.on and body.factor is None:
            raise HTTPException(422, "a factor is required to switch emergency mode on")
        async with pool.acquire() as conn:
            env = await timers.set_emergency(
                conn,
                body.area,
                on=body.on,
                factor=body.factor,
                reason=body.reason,
                by=body.by,
                now=utc_now(),
                cfg=cfg,
            )
        return {"event_id": str(env.event_id), **env.payload}

    @app.get("/v1/emergency")
    async def status(authorization: Annotated[str | None, Header()] = None) -> list[dict[str, Any]]:
        check(authorization)
        async with pool.acquire() as conn:
            return await timers.emergency_status(conn)

    return app


async def main(settings: Settings, stop: asyncio.Event) -> None:
    es = EscalationSettings()
    cfg = es.policy()
    pool = await create_pool(settings.database_url, "escalation")
    async with pool.acquire() as conn:
        await migrate(conn, "escalation", MIGRATIONS)
    producer = make_producer(settings.kafka, "escalation-outbox")
    relay = OutboxRelay(
        settings.database_url,
        "escalation",
        producer,
        batch_size=settings.outbox.batch_size,
        poll_interval_s=settings.outbox.poll_interval_s,
    )
    broker = make_broker(settings.kafka, "escalation")
    dead_letters = DeadLetters(broker, "escalation")

    @durable_subscriber(
        broker, topics.CASES_LIFECYCLE, group_id=GROUP_ID, batch=True, max_records=500
    )
    async def arm_timers(records: Records) -> None:
        await handle_isolating(records, fold_records, dead_letters)

    async def fold_records(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        # The whole batch in one transaction and a handful of statements: a commit, and then
        # a savepoint and five statements, per event made this consumer the pipeline's
        # bottleneck.
        items = await decode_records(records, dead_letters)
        async with pool.acquire() as conn:
            await timers.fold_batch(conn, items, utc_now(), cfg)

    scheduler = Scheduler(
        settings.database_url, cfg, batch=es.batch_size, max_sleep_s=es.max_sleep_s
    )
    retention = Retention(pool, "escalation", purges(settings.retention), settings.retention)
    server = uvicorn.Server(
        uvicorn.Config(
            http_app(pool, es, cfg), host=es.host, port=es.port, log_config=None, access_log=False
        )
    )
    tasks = [
        asyncio.create_task(supervised("deadline scheduler", scheduler.run, stop)),
        asyncio.create_task(server.serve()),
        asyncio.create_task(watch_consumers(broker, settings, stop)),
        asyncio.create_task(supervised("retention", retention.run, stop)),
    ]
    await start_when_reachable(producer, broker, stop=stop, what="escalation")
    tasks.append(asyncio.create_task(supervised("outbox relay", relay.run, stop)))
    await run_until_stopped(
        stop, server=server, broker=broker, producer=producer, pool=pool, tasks=tasks
    )


SERVICE = ServiceSpec(
    kafka=KafkaAccess(
        reads=((topics.CASES_LIFECYCLE, GROUP_ID),),
        writes=(topics.CASES_LIFECYCLE, topics.dlq(topics.CASES_LIFECYCLE)),
    ),
    name="escalation",
    http_port=lambda: EscalationSettings().port,
    description="durable deadlines, warnings, the escalation ladder, emergency mode",
    main=main,
    schema="escalation",
    migrations=MIGRATIONS,
    order=30,
)
