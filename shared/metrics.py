"""Prometheus metrics and the `/metrics`, `/health/live`, `/health/ready` endpoints.

Label values never carry personal data: only codes (department, channel, category, outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

if TYPE_CHECKING:  # a type only: the command line, which imports this, need not load FastAPI
    from fastapi.telemetry import TelemetryConfig

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

# For `FastAPI(telemetry=...)`. FastAPI's native OpenTelemetry hooks look for configured
# providers on every request (~3% of a report's CPU in intake); GridDispatch exports Prometheus
# metrics and ships no OpenTelemetry SDK, so its apps turn the hooks off.
NO_OPENTELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

OUTBOX_BACKLOG = Gauge(
    "griddispatch_outbox_backlog",
    "Rows waiting in an outbox to be published",
    ["schema"],
    registry=REGISTRY,
)
OUTBOX_OLDEST_AGE = Gauge(
    "griddispatch_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row",
    ["schema"],
    registry=REGISTRY,
)
OUTBOX_PUBLISHED = Counter(
    "griddispatch_outbox_published_total",
    "Outbox rows published to Kafka and acknowledged by the broker",
    ["schema", "topic"],
    registry=REGISTRY,
)
OUTBOX_BATCH_SECONDS = Histogram(
    "griddispatch_outbox_batch_seconds",
    "Time to publish and delete one outbox batch",
    ["schema"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)

ReadinessCheck = Callable[[], Awaitable[bool]]


def health_routes(checks: dict[str, ReadinessCheck] | None = None) -> list[BaseRoute]:
    """`/health/live` answers while the process runs; `/health/ready` runs every check
    (database reachable, consumer started, …) and answers 503 naming the ones that fail;
    `/metrics` is the Prometheus text format."""
    checks = checks or {}

    async def live(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> JSONResponse:
        failed = []
        for name, check in checks.items():
            try:
                ok = await check()
            except Exception:
                ok = False
            if not ok:
                failed.append(name)
        if failed:
            return JSONResponse({"status": "unavailable", "failed": failed}, status_code=503)
        return JSONResponse({"status": "ok", "checks": sorted(checks)})

    return [
        Route("/health/live", live),
        Route("/health/ready", ready),
        Mount("/metrics", make_asgi_app(registry=REGISTRY)),
    ]


def health_app(checks: dict[str, ReadinessCheck] | None = None) -> Starlette:
    """The health and metrics endpoints as an app of their own (for non-HTTP services)."""
    return Starlette(routes=health_routes(checks))


async def sample_every(
    interval_s: float, sample: Callable[[], Awaitable[None]], stop: asyncio.Event, what: str
) -> None:
    """Run `sample` now and every `interval_s` until `stop`, for metrics that are sampled
    rather than counted (consumer lag, open cases). A failed sample is logged and skipped: a
    metric must never take the service down."""
    while not stop.is_set():
        try:
            await sample()
        except Exception as exc:
            log.debug("%s: sample failed: %s", what, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
