"""Intake: wiring only. The HTTP API, the outbox relay and the read-model consumer share one
process (and scale out together); the decisions live in lifecycle.py, catalogue.py, views.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.intake import store
from services.intake.auth import RateLimiter
from services.intake.http import cases, open311, performance, tasks
from services.intake.http.deps import CatalogueCache, IntakeState, KeyCache
from services.intake.http.errors import install_error_handlers
from services.intake.http.middleware import BodyLimit, RefuseNulInQuery, RequestMetrics
from services.intake.readmodel import GROUP_ID as READ_MODEL_GROUP
from services.intake.readmodel import OpenCaseGauge, attach_read_model
from services.intake.reports import ReportWriter
from services.intake.retention import purges
from services.intake.settings import MIGRATIONS, IntakeSettings
from shared import topics
from shared.catalogue import load_file
from shared.db import create_pool, migrate
from shared.directory import DepartmentDirectory
from shared.kafka import connection_options, make_broker, make_producer, watch_consumers
from shared.logging import configure_logging
from shared.metrics import NO_OPENTELEMETRY, health_routes
from shared.outbox import OutboxRelay
from shared.retention import Retention
from shared.service import KafkaAccess, ServiceSpec, settle_heap, supervised
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    intake_settings: IntakeSettings | None = None,
    *,
    background: bool = True,
) -> FastAPI:
    """The intake ASGI app. With `background`, it also runs the outbox relay and the
    read-model consumer (a replica does all three)."""
    settings = settings or get_settings()
    isettings = intake_settings or IntakeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await create_pool(settings.database_url, "intake", max_size=isettings.pool_size)
        async with pool.acquire() as conn:
            await migrate(conn, "intake", MIGRATIONS)
            await store.import_catalogue(conn, load_file(), replace=False)
        app.state.intake = IntakeState(
            settings=isettings,
            pool=pool,
            catalogue=CatalogueCache(pool, isettings.catalogue_refresh_s),
            limiter=RateLimiter(isettings.rate_limit_per_key, isettings.rate_limit_per_address),
            keys=KeyCache(pool, isettings.key_cache_s),
            writer=ReportWriter(pool),
        )
        app.state.intake.writer.start()
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        producer = None
        broker = None
        if background:
            directory = DepartmentDirectory(
                connection_options(settings.kafka), client_id="intake-directory"
            )
            app.state.intake.directory = directory
            tasks.append(
                asyncio.create_task(supervised("department directory", directory.run, stop))
            )
            producer = make_producer(settings.kafka, "intake-outbox")
            relay = OutboxRelay(
                settings.database_url,
                "intake",
                producer,
                batch_size=settings.outbox.batch_size,
                poll_interval_s=settings.outbox.poll_interval_s,
            )
            tasks.append(asyncio.create_task(_start_relay(producer, relay, stop)))
            broker = make_broker(settings.kafka, "intake")
            attach_read_model(broker, pool)
            tasks.append(asyncio.create_task(_start_broker(broker, stop)))
            tasks.append(asyncio.create_task(watch_consumers(broker, settings, stop)))
            retention = Retention(pool, "intake", purges(settings.retention), settings.retention)
            tasks.append(asyncio.create_task(supervised("retention", retention.run, stop)))
            tasks.append(
                asyncio.create_task(
                    supervised(
                        "open-case gauge",
                        OpenCaseGauge(pool, interval_s=settings.metrics_interval_s).run,
                        stop,
                    )
                )
            )
        settle_heap()
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 15)
            if broker is not None:
                with contextlib.suppress(Exception):
                    await broker.stop()
            if producer is not None:
                with contextlib.suppress(Exception):
                    await producer.stop()
            await app.state.intake.writer.stop()
            await pool.close()

    app = FastAPI(
        title="GridDispatch intake",
        version="1",
        description="Resident reports in (JSON and Open311 GeoReport v2), case status out.",
        lifespan=lifespan,
        telemetry=NO_OPENTELEMETRY,
    )
    install_error_handlers(app)
    app.include_router(cases.router)
    app.include_router(tasks.router)
    app.include_router(performance.router)
    app.include_router(open311.router)

    async def db_ready() -> bool:
        st: IntakeState = app.state.intake
        async with st.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT 1"))

    app.router.routes.extend(health_routes({"database": db_ready}))

    app.add_middleware(RequestMetrics, service="intake")
    app.add_middleware(RefuseNulInQuery)
    app.add_middleware(BodyLimit, limit=isettings.max_body_bytes)
    return app


async def _start_relay(producer: Any, relay: OutboxRelay, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await producer.start()
            break
        except Exception as exc:  # Kafka down: keep accepting reports, retry
            log.warning("Kafka unavailable for the outbox relay, retrying: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2)
    if not stop.is_set():
        await supervised("outbox relay", relay.run, stop)


async def _start_broker(broker: Any, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await broker.start()
            return
        except Exception as exc:
            log.warning("Kafka unavailable for the read model, retrying: %s", exc)
            with contextlib.suppress(Exception):
                await broker.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2)


def asgi() -> FastAPI:
    """The app of one of several server processes (`services.intake.workers`), each a fresh
    interpreter: it logs as the service does, then builds the app."""
    settings = get_settings()
    configure_logging("intake", level=settings.log_level, json=settings.log_json)
    return create_app(settings)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    isettings = IntakeSettings()
    if isettings.workers == 1:
        config = uvicorn.Config(
            create_app(settings, isettings),
            host=isettings.host,
            port=isettings.port,
            log_config=None,
            access_log=False,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        await stop.wait()
        server.should_exit = True
        await serving
        return
    # Several server processes: uvicorn's own supervisor starts and watches them.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.intake.workers")
    await stop.wait()
    proc.terminate()
    await proc.wait()


SERVICE = ServiceSpec(
    kafka=KafkaAccess(
        reads=((topics.CASES_LIFECYCLE, READ_MODEL_GROUP),),
        follows=(topics.DEPARTMENTS,),
        writes=(topics.CASES_INTAKE, topics.CASES_LIFECYCLE, topics.dlq(topics.CASES_LIFECYCLE)),
    ),
    name="intake",
    http_port=lambda: IntakeSettings().port,
    description="HTTP API and Open311 for residents' reports; the case read model",
    main=main,
    schema="intake",
    migrations=MIGRATIONS,
    order=10,
    take_catalogue=store.take_catalogue,
)
