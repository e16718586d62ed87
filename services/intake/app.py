"""Intake: wiring only. The HTTP API, the outbox relay and the read-model consumer share one
process (and scale out together); the decisions live in lifecycle.py, catalogue.py, views.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.intake import store
from services.intake.auth import RateLimiter
from services.intake.http import cases, open311
from services.intake.http.deps import ApiError, CatalogueCache, IntakeState, KeyCache
from services.intake.readmodel import GROUP_ID as READ_MODEL_GROUP
from services.intake.readmodel import OpenCaseGauge, attach_read_model
from services.intake.reports import ReportWriter
from services.intake.retention import purges
from services.intake.settings import MIGRATIONS, IntakeSettings
from shared import text, topics
from shared.catalogue import load_file
from shared.db import DATABASE_AWAY, create_pool, migrate
from shared.directory import DepartmentDirectory
from shared.kafka import connection_options, make_broker, make_producer, watch_consumers
from shared.logging import COLLAPSE, configure_logging
from shared.metrics import NO_OPENTELEMETRY, REGISTRY, health_routes
from shared.outbox import OutboxRelay
from shared.retention import Retention
from shared.service import KafkaAccess, ServiceSpec, settle_heap, supervised
from shared.settings import Settings, get_settings
from shared.web import RETRY_AFTER_S

log = logging.getLogger(__name__)


HTTP_REQUESTS = Counter(
    "griddispatch_http_requests_total",
    "HTTP requests by route and status",
    ["service", "method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "griddispatch_http_request_seconds",
    "HTTP request duration",
    ["service", "method", "route"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, counting what actually arrives
    (a missing or false Content-Length does not get around it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = (
            b'{"error":"body_too_large","message":"the request body is over '
            + str(self.limit).encode()
            + b' bytes","errors":[]}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class RefuseNulInQuery:
    """A query parameter holding a NUL character (`%00`) gets 422 naming it (Open311: 400), on
    every route: PostgreSQL cannot store or compare one (see `shared.text`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        name = (
            text.nul_in_pairs(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
            if b"%00" in query
            else None
        )
        if name is None:
            await self.app(scope, receive, send)
            return
        message = f"{name}: {text.REASON}"
        path = scope["path"]
        response: Response
        if path.startswith("/open311/"):
            fmt = "xml" if path.endswith(".xml") else "json"
            response = open311.error_response(open311.Open311Error(400, message, fmt))
        else:
            response = _error(422, "invalid_text", message, [{"field": name, "reason": message}])
        await response(scope, receive, send)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Counts requests by route template and status, and times them (pure ASGI: no per-request
    task or body buffering as with `@app.middleware`). Label values are bounded: a method
    outside HTTP's usual ones counts as `other`, a path outside every route as `unmatched`."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        # The metric children per (method, route, status), so a request costs no label lookup.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                # Not an API route: the health routes and the mounted /metrics (static paths,
                # so bounded) when they answered 2xx; anything else — 404s, and the redirects
                # to a trailing-slash variant of any path — as one label.
                ok = 200 <= status < 300
                route = (scope.get("root_path") or scope["path"]) if ok else "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            children = self._children.get((method, route, status))
            if children is None:
                children = self._children[(method, route, status)] = (
                    HTTP_REQUESTS.labels(self.service, method, route, str(status)),
                    HTTP_SECONDS.labels(self.service, method, route),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)


def _error(
    status: int,
    error: str,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": error, "message": message, "errors": errors or []},
        status_code=status,
        headers=dict(headers) if headers else None,
    )


def _is_open311(request: Request) -> bool:
    return request.url.path.startswith("/open311/")


def _open311_format(request: Request) -> str:
    return "xml" if request.url.path.endswith(".xml") else "json"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {
                "field": ".".join(
                    str(p) for p in e["loc"] if p not in ("body", "query", "path", "header")
                )
                or "body",
                "reason": e["msg"],
            }
            for e in exc.errors()
        ]
        if _is_open311(request):
            first = errors[0]
            return open311.error_response(
                open311.Open311Error(
                    400, f"{first['field']}: {first['reason']}", _open311_format(request)
                )
            )
        return _error(422, "invalid_request", "the request is not valid", errors)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if _is_open311(request):
            return open311.error_response(
                open311.Open311Error(exc.status_code, str(exc.detail), _open311_format(request))
            )
        errors = [{"field": exc.field, "reason": str(exc.detail)}] if exc.field else []
        return _error(exc.status_code, exc.error, str(exc.detail), errors, exc.headers)

    @app.exception_handler(open311.Open311Error)
    async def open311_error(request: Request, exc: open311.Open311Error) -> Response:
        return open311.error_response(exc)

    async def unavailable(request: Request, exc: Exception) -> Response:
        # Nothing was stored: the client may safely retry (with its Idempotency-Key).
        log.warning("database unavailable: %s", exc, extra=COLLAPSE)  # one per request
        if _is_open311(request):
            response = open311.error_response(
                open311.Open311Error(503, "temporarily unavailable", _open311_format(request))
            )
            response.headers["Retry-After"] = RETRY_AFTER_S
            return response
        return _error(
            503,
            "unavailable",
            "the case store is unavailable; retry shortly",
            headers={"Retry-After": RETRY_AFTER_S},
        )

    for error in DATABASE_AWAY:  # the same net as every service's (shared.web), in our format
        app.add_exception_handler(error, unavailable)

    @app.exception_handler(asyncpg.CharacterNotInRepertoireError)
    @app.exception_handler(asyncpg.UntranslatableCharacterError)
    async def unstorable_text(request: Request, exc: Exception) -> Response:
        # The routes refuse a NUL where they take text; this is the net for any they miss.
        log.warning("text the database cannot store: %s", type(exc).__name__)
        if _is_open311(request):
            return open311.error_response(
                open311.Open311Error(400, text.REASON, _open311_format(request))
            )
        return _error(422, "invalid_text", f"the request's text {text.REASON}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_open311(request):
            return open311.error_response(
                open311.Open311Error(exc.status_code, str(exc.detail), _open311_format(request))
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=exc.headers)


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
)
