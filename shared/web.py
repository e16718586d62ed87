"""The net under every service's HTTP API for the database being away: such a request is
answered `503` with `Retry-After`, never `500`. Nothing was done (a statement that fails this
way is rolled back), so the client may retry; intake's clients send an Idempotency-Key too."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.logging import COLLAPSE

log = logging.getLogger(__name__)

# How long a 503 asks clients to wait: the pool reconnects within a second or two.
RETRY_AFTER_S = "2"
# The database went away, or the connection broke under a statement. asyncpg may report a
# connection cut mid-statement as an InternalClientError ("cannot switch to state …; another
# operation is in progress", MagicStack/asyncpg#1069): it is the connection, not the request.
DATABASE_AWAY: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)


def answer_database_outages(app: FastAPI) -> None:
    """`503 {"detail": …}` with `Retry-After` for any request the database's absence failed."""

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__, extra=COLLAPSE)
        return JSONResponse(
            {"detail": "the database is unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    for error in DATABASE_AWAY:
        app.add_exception_handler(error, unavailable)
