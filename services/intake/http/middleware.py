"""Intake's ASGI middleware: request metrics by route template, the body size limit, and
the refusal of NUL characters in query strings (PostgreSQL cannot store them)."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Response
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.intake.http import open311
from services.intake.http.errors import json_error
from shared import text
from shared.metrics import REGISTRY

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
            response = json_error(
                422, "invalid_text", message, [{"field": name, "reason": message}]
            )
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
