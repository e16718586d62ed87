"""Notifier: wiring only. The lifecycle consumer writes department feeds and the delivery log;
the webhook and message (e-mail, SMS) senders work the log, the resident sender residents'
messages; a small HTTP API manages subscriptions."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Annotated, Any, Literal

import asyncpg
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Path, Query
from fastapi.responses import StreamingResponse

from services.notifier import webhooks
from services.notifier.catalogue import CategoryNames, take_catalogue
from services.notifier.delivery import WebhookSender
from services.notifier.feeds import FeedWriter
from services.notifier.resident_delivery import ResidentSender, remember_contacts
from services.notifier.retention import purges
from services.notifier.settings import MIGRATIONS, NotifierSettings
from services.notifier.staff import MessageSender
from services.notifier.stream import department_events
from services.notifier.subscriptions import (
    FeedSwitch,
    SubscriptionIn,
    add_subscription,
    disable_subscription,
    list_subscriptions,
    switch_feed,
)
from shared import topics
from shared.db import create_pool, migrate
from shared.directory import DepartmentDirectory
from shared.kafka import (
    DeadLetters,
    Records,
    connection_options,
    durable_subscriber,
    handle_isolating,
    is_transient,
    make_broker,
    make_producer,
    start_when_reachable,
    watch_consumers,
)
from shared.metrics import NO_OPENTELEMETRY, health_routes
from shared.retention import Retention
from shared.service import KafkaAccess, ServiceSpec, run_until_stopped, supervised
from shared.settings import KafkaSettings, Settings
from shared.text import refuse_unstorable_text
from shared.web import answer_database_outages

log = logging.getLogger(__name__)
FEEDS_GROUP = "notifier"
RESIDENTS_GROUP = "notifier-residents"


def http_app(
    pool: asyncpg.Pool,
    ns: NotifierSettings,
    kafka: KafkaSettings,
) -> FastAPI:
    app = FastAPI(title="GridDispatch notifier", version="1", telemetry=NO_OPENTELEMETRY)
    refuse_unstorable_text(app)
    answer_database_outages(app)

    async def db_ok() -> bool:
        async with pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1"))

    app.router.routes.extend(health_routes({"database": db_ok}))

    def check(authorization: str | None) -> None:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not ns.admin_token or not hmac.compare_digest(token, ns.admin_token):
            raise HTTPException(403, "an operator token is required")

    @app.post("/v1/subscriptions", status_code=201)
    async def create(
        body: SubscriptionIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        check(authorization)
        try:
            async with pool.acquire() as conn:
                sub_id = await add_subscription(conn, body, ns.allow())
        except webhooks.ForbiddenDestination as exc:
            raise HTTPException(422, str(exc)) from exc
        except Exception as exc:  # a malformed secret
            if is_transient(exc) or isinstance(exc, asyncpg.PostgresError):
                raise  # the database's errors are not the secrets' (a NUL: 422, see text)
            raise HTTPException(422, f"secrets: {exc}") from exc
        return {"id": sub_id}

    @app.get("/v1/subscriptions")
    async def listed(
        owner_kind: Annotated[Literal["department", "worker", "ladder"] | None, Query()] = None,
        owner: Annotated[str | None, Query(max_length=64)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        check(authorization)
        async with pool.acquire() as conn:
            return await list_subscriptions(conn, owner_kind, owner)

    @app.delete("/v1/subscriptions/{sub_id}", status_code=204)
    async def disable(
        sub_id: Annotated[int, Path(ge=1, le=2**63 - 1, description="a subscription's id")],
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        check(authorization)
        async with pool.acquire() as conn:
            if not await disable_subscription(conn, sub_id):
                raise HTTPException(404, f"no active subscription {sub_id}")

    @app.put("/v1/departments/{department}/feed")
    async def feed(
        department: str, body: FeedSwitch, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        check(authorization)
        try:
            async with pool.acquire() as conn:
                await switch_feed(conn, department, body.enabled)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"department": department, "enabled": body.enabled}

    @app.get("/v1/stream")
    async def stream(
        department: Annotated[str, Query(min_length=1, max_length=64)],
        grid: Annotated[str | None, Query(max_length=64)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """Server-sent events of one department's feed (optionally one grid). Operators use the
        admin token; a department uses its own stream token."""
        token = (authorization or "").removeprefix("Bearer ").strip()
        operator = bool(ns.admin_token) and hmac.compare_digest(token, ns.admin_token)

        async def token_valid() -> bool:
            async with pool.acquire() as conn:
                return bool(
                    await conn.fetchval(
                        "SELECT true FROM notifier.stream_tokens WHERE token_hash = $1 "
                        "AND department = $2 AND revoked_at IS NULL",
                        hashlib.sha256(token.encode()).hexdigest(),
                        department,
                    )
                )

        if not operator and not (token and await token_valid()):
            raise HTTPException(403, "a stream token for this department is required")
        try:
            topics.department_feed(department)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        return StreamingResponse(
            department_events(
                connection_options(kafka),
                department,
                grid,
                pool,
                partitions=kafka.partitions,
                replication_factor=kafka.replication_factor,
                # a department's token is checked again while it streams (revocation)
                still_allowed=None if operator else token_valid,
                recheck_s=ns.stream_recheck_s,
            ),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/deliveries")
    async def deliveries(
        state: str = "dead", authorization: Annotated[str | None, Header()] = None
    ) -> list[dict[str, Any]]:
        check(authorization)
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, event_id, subscription_id, state, attempts, last_status, last_error,"
                " created_at FROM notifier.deliveries WHERE state = $1 ORDER BY created_at "
                "LIMIT 200",
                state,
            )
        return [dict(r) for r in rows]

    return app


async def main(settings: Settings, stop: asyncio.Event) -> None:
    ns = NotifierSettings()
    pool = await create_pool(settings.database_url, "notifier")
    async with pool.acquire() as conn:
        await migrate(conn, "notifier", MIGRATIONS)
    producer = make_producer(settings.kafka, "notifier")
    broker = make_broker(settings.kafka, "notifier")
    dead_letters = DeadLetters(broker, "notifier")
    # department names for residents' messages
    directory = DepartmentDirectory(connection_options(settings.kafka), client_id="notifier")
    feeds = FeedWriter(
        pool,
        producer,
        connection_options(settings.kafka),
        settings.kafka.partitions,
        dead_letters,
        quiet=ns.quiet(),
        replication_factor=settings.kafka.replication_factor,
        directory=directory,
        ladder_locale=ns.ladder_locale,
    )

    @durable_subscriber(
        broker, topics.CASES_INTAKE, group_id=RESIDENTS_GROUP, batch=True, max_records=500
    )
    async def contacts(records: Records) -> None:
        async with pool.acquire() as conn:
            await remember_contacts(conn, records, quiet=ns.quiet())

    @durable_subscriber(
        broker, topics.CASES_LIFECYCLE, group_id=FEEDS_GROUP, batch=True, max_records=500
    )
    async def notify(records: Records) -> None:
        await handle_isolating(records, feeds.handle, dead_letters)

    sender = WebhookSender(
        settings.database_url,
        allow=ns.allow(),
        schedule=ns.schedule(),
        timeout_s=ns.webhook_timeout_s,
        per_endpoint=ns.per_endpoint_concurrency,
        lease_s=ns.delivery_lease_s,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            http_app(
                pool,
                ns,
                settings.kafka,
            ),
            host=ns.host,
            port=ns.port,
            log_config=None,
            access_log=False,
        )
    )
    residents = ResidentSender(settings.database_url, ns.channels(), lease_s=ns.delivery_lease_s)
    staff = MessageSender(
        settings.database_url, ns.channels(), schedule=ns.schedule(), lease_s=ns.delivery_lease_s
    )
    retention = Retention(pool, "notifier", purges(settings.retention), settings.retention)
    tasks = [
        asyncio.create_task(supervised("webhook sender", sender.run, stop)),
        asyncio.create_task(supervised("resident sender", residents.run, stop)),
        asyncio.create_task(supervised("message sender", staff.run, stop)),
        asyncio.create_task(supervised("department directory", directory.run, stop)),
        asyncio.create_task(supervised("retention", retention.run, stop)),
        asyncio.create_task(supervised("category names", CategoryNames(pool).run, stop)),
        asyncio.create_task(server.serve()),
        asyncio.create_task(watch_consumers(broker, settings, stop)),
    ]
    await start_when_reachable(producer, broker, stop=stop, what="notifier")
    await run_until_stopped(
        stop, server=server, broker=broker, producer=producer, pool=pool, tasks=tasks, grace_s=20
    )


SERVICE = ServiceSpec(
    kafka=KafkaAccess(
        reads=((topics.CASES_INTAKE, RESIDENTS_GROUP), (topics.CASES_LIFECYCLE, FEEDS_GROUP)),
        follows=(topics.DEPARTMENTS,),
        writes=(topics.dlq(topics.CASES_INTAKE), topics.dlq(topics.CASES_LIFECYCLE)),
        feeds=True,
    ),
    name="notifier",
    http_port=lambda: NotifierSettings().port,
    description="department feeds, signed webhooks, e-mail and SMS, with a delivery log",
    main=main,
    schema="notifier",
    migrations=MIGRATIONS,
    order=40,
    take_catalogue=take_catalogue,
)
