"""How intake answers errors: `ErrorBody` JSON on the native API (field, reason, status),
the GeoReport v2 error bodies under /open311/, and 503 with Retry-After while the database
is away. Never a 500 for bad input."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import asyncpg
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.intake.http import open311
from services.intake.http.deps import ApiError
from shared import text
from shared.db import DATABASE_AWAY
from shared.logging import COLLAPSE
from shared.web import RETRY_AFTER_S

log = logging.getLogger(__name__)


def json_error(
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
        return json_error(422, "invalid_request", "the request is not valid", errors)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if _is_open311(request):
            return open311.error_response(
                open311.Open311Error(exc.status_code, str(exc.detail), _open311_format(request))
            )
        errors = [{"field": exc.field, "reason": str(exc.detail)}] if exc.field else []
        return json_error(exc.status_code, exc.error, str(exc.detail), errors, exc.headers)

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
        return json_error(
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
        return json_error(422, "invalid_text", f"the request's text {text.REASON}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if _is_open311(request):
            return open311.error_response(
                open311.Open311Error(exc.status_code, str(exc.detail), _open311_format(request))
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return json_error(exc.status_code, code, str(exc.detail), headers=exc.headers)
