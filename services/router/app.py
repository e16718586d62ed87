"""Router: wiring only. Consumers of `cases.intake` (decisions) and `cases.lifecycle` (open-case
counts), the reference-data reloader, and a small HTTP API (explain, triage, health, metrics).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Annotated, Any

import asyncpg
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query
from pydantic import BaseModel, Field

from services.router import store
from services.router.decide import CaseFacts, decide
from services.router.dispatch import (
    Dispatcher,
    RouterState,
    fold_lifecycle,
    refresh_open_counts,
)
from services.router.retention import purges
from services.router.settings import MIGRATIONS, RouterSettings
from shared import events, topics
from shared.aio import until_set
from shared.catalogue import load_file
from shared.db import CONNECTION_LOST, create_pool, migrate
from shared.directory import DepartmentDirectory, DirectoryPublisher
from shared.events import wrap
from shared.kafka import (
    DeadLetters,
    Records,
    connection_options,
    durable_subscriber,
    handle_isolating,
    make_broker,
    make_producer,
    watch_consumers,
)
from shared.metrics import NO_OPENTELEMETRY, health_routes, sample_every
from shared.retention import Retention
from shared.service import KafkaAccess, ServiceSpec, run_until_stopped, settle_heap, supervised
from shared.settings import Settings
from shared.text import refuse_unstorable_text
from shared.web import answer_database_outages

log = logging.getLogger(__name__)
ROUTING_GROUP = "router"
LOAD_GROUP = "router-load"  # open cases per worker, counted in PostgreSQL


async def reload_loop(
    settings: Settings,
    rs: RouterSettings,
    state: RouterState,
    stop: asyncio.Event,
    reloaded: asyncio.Event | None = None,
) -> None:
    """Reload the snapshot when `refdata_version` moves (NOTIFY wakes us; polling backs it).
    Sets `reloaded` after each reload (the department directory is published again)."""
    wake = asyncio.Event()
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        wake.clear()  # before the read: a NOTIFY during the load must wake us again
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(settings.database_url)
                await conn.add_listener(store.CHANNEL, lambda *_: wake.set())
            version = await store.current_version(conn)
            if version != state.ref.version:
                ref = await store.load_reference(conn, snap_m=rs.snap_m)
                state.swap(ref)
                settle_heap(collect=False)  # the new snapshot, out of the collector's passes
                log.info("reference data version %s loaded: %s", ref.version, ref.stats())
                if reloaded is not None:
                    reloaded.set()
        except CONNECTION_LOST as exc:
            log.warning("reference data reload failed, will retry: %s", exc)
            conn = None
        await until_set(wake, stop, at_most_s=rs.reload_poll_s)
    if conn is not None:
        await conn.close()


class ExplainOut(BaseModel):
    outcome: str
    decision: dict[str, Any]
    trail: list[str]
    refdata_version: int


class TriageIn(BaseModel):
    grid_id: str | None = Field(default=None, max_length=64)
    department: str | None = Field(default=None, max_length=64)
    reason: str = Field(default="manual triage", max_length=1000)


def http_app(state: RouterState, rs: RouterSettings, pool: asyncpg.Pool, producer: Any) -> FastAPI:
    app = FastAPI(title="GridDispatch router", version="1", telemetry=NO_OPENTELEMETRY)
    refuse_unstorable_text(app)
    answer_database_outages(app)
    app.router.routes.extend(health_routes({"reference data": _has_grids(state)}))

    def check(authorization: str | None) -> None:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not rs.admin_token or not hmac.compare_digest(token, rs.admin_token):
            raise HTTPException(
                403, "an operator token is required (GRIDDISPATCH_ROUTER__ADMIN_TOKEN)"
            )

    @app.get("/v1/explain", response_model=ExplainOut)
    async def explain(
        category: Annotated[str, Query(max_length=64)],
        lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
        lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
        building_code: Annotated[str | None, Query(max_length=64)] = None,
        description: Annotated[str, Query(max_length=4000)] = "",
        authorization: Annotated[str | None, Header()] = None,
        facility_code: Annotated[str | None, Query(max_length=64)] = None,
    ) -> ExplainOut:
        """Route a hypothetical case and say why, step by step."""
        check(authorization)
        return explain_case(
            state, category, lat, lon, building_code, description, facility_code=facility_code
        )

    @app.get("/v1/triage")
    async def triage(authorization: Annotated[str | None, Header()] = None) -> list[dict[str, Any]]:
        check(authorization)
        async with pool.acquire() as conn:
            return [dict(r) for r in await store.triage_list(conn)]

    @app.post("/v1/triage/{case_id}", status_code=202)
    async def route_by_hand(
        case_id: str, body: TriageIn, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, str]:
        """An operator's decision for an unroutable case: goes through `cases.intake` like any
        reroute, so it is recorded and published the same way."""
        check(authorization)
        if body.grid_id is None and body.department is None:
            raise HTTPException(422, "give a grid_id, a department or both")
        env = wrap(
            events.RerouteRequested(
                reason=body.reason,
                requested_by="operator",
                grid_id=body.grid_id,
                department=body.department,
            ),
            case_id=case_id,
            producer="router",
        )
        await producer.send_and_wait(topics.CASES_INTAKE, env.to_json(), key=case_id.encode())
        return {"case_id": case_id, "event_id": str(env.event_id)}

    return app


def _has_grids(state: RouterState) -> Any:
    async def check() -> bool:
        return len(state.ref.grids) > 0

    return check


def explain_case(
    state: RouterState,
    category: str,
    lat: float | None,
    lon: float | None,
    building_code: str | None,
    description: str,
    *,
    facility_code: str | None = None,
) -> ExplainOut:
    from datetime import UTC, datetime

    facts = CaseFacts(
        case_id="explain",
        category=category,
        description=description,
        location=events.Location(
            lat=lat, lon=lon, building_code=building_code, facility_code=facility_code
        ),
        reported_at=datetime.now(UTC),
    )
    d = decide(facts, state.ref, open_cases=state.open_cases, explain=True)
    return ExplainOut(
        outcome="routed" if d.routed else "unroutable",
        decision=d.event.model_dump(mode="json"),
        trail=list(d.trail),
        refdata_version=state.ref.version,
    )


async def main(settings: Settings, stop: asyncio.Event) -> None:
    rs = RouterSettings()
    pool = await create_pool(settings.database_url, "router")
    async with pool.acquire() as conn:
        await migrate(conn, "router", MIGRATIONS)
        if not await conn.fetchval("SELECT count(*) FROM router.categories"):
            await store.import_categories(conn, load_file().categories)
        ref = await store.load_reference(conn, snap_m=rs.snap_m)
        state = RouterState(ref, await store.open_counts(conn))
    state.swap(ref)
    if not ref.grids:
        log.warning("no grids loaded: run `griddispatch demo city` or `griddispatch grids import`")
    producer = make_producer(settings.kafka, "router")
    while not stop.is_set():
        try:
            await producer.start()
            break
        except Exception as exc:
            log.warning("Kafka unavailable, retrying: %s", exc)
            await asyncio.sleep(2)
    broker = make_broker(settings.kafka, "router")
    dead_letters = DeadLetters(broker, "router")
    dispatcher = Dispatcher(pool, producer, state, dead_letters)

    @durable_subscriber(
        broker, topics.CASES_INTAKE, group_id=ROUTING_GROUP, batch=True, max_records=rs.batch_size
    )
    async def route_cases(records: Records) -> None:
        await handle_isolating(records, dispatcher.handle, dead_letters)

    @durable_subscriber(
        broker, topics.CASES_LIFECYCLE, group_id=LOAD_GROUP, batch=True, max_records=1000
    )
    async def count_open_cases(records: Records) -> None:
        async with pool.acquire() as conn:
            await fold_lifecycle(conn, state, records)

    directory = DepartmentDirectory(connection_options(settings.kafka), client_id="router")
    publisher = DirectoryPublisher(producer, directory, state.department_names)
    reloader = asyncio.create_task(
        supervised(
            "reference reloader",
            lambda s: reload_loop(settings, rs, state, s, publisher.wake),
            stop,
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(
            http_app(state, rs, pool, producer),
            host=rs.host,
            port=rs.port,
            log_config=None,
            access_log=False,
        )
    )
    retention = Retention(pool, "router", purges(settings.retention), settings.retention)
    serving = asyncio.create_task(server.serve())
    await broker.start()
    watching = asyncio.create_task(watch_consumers(broker, settings, stop))
    log.info("router running: %s", ref.stats())
    await run_until_stopped(
        stop,
        server=server,
        broker=broker,
        producer=producer,
        pool=pool,
        tasks=[
            reloader,
            serving,
            watching,
            asyncio.create_task(supervised("department directory", directory.run, stop)),
            asyncio.create_task(supervised("directory publisher", publisher.run, stop)),
            asyncio.create_task(supervised("retention", retention.run, stop)),
            asyncio.create_task(
                sample_every(
                    rs.open_counts_refresh_s,
                    lambda: refresh_open_counts(pool, state),
                    stop,
                    "open-case counts",
                )
            ),
        ],
    )


SERVICE = ServiceSpec(
    kafka=KafkaAccess(
        reads=((topics.CASES_INTAKE, ROUTING_GROUP), (topics.CASES_LIFECYCLE, LOAD_GROUP)),
        follows=(topics.DEPARTMENTS,),
        # decisions; reroutes asked by operators; the department directory; poison messages
        writes=(
            topics.CASES_LIFECYCLE,
            topics.DEPARTMENTS,
            topics.CASES_INTAKE,
            topics.dlq(topics.CASES_INTAKE),
            topics.dlq(topics.CASES_LIFECYCLE),
        ),
    ),
    name="router",
    http_port=lambda: RouterSettings().port,
    description="grid, department, worker, priority and deadlines for every case",
    main=main,
    schema="router",
    migrations=MIGRATIONS,
    order=20,
    take_catalogue=store.take_catalogue,
    check_catalogue=store.catalogue_problems,
)
