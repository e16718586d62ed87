"""The net under every service's HTTP API for the database being away: such a request is
answered `503` with `Retry-After`, never `500`. Nothing was done (a statement that fails this
way is rolled back), so the client may retry; intake's clients send an Idempotency-Key too."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from shared.db import DATABASE_AWAY
from shared.logging import COLLAPSE

log = logging.getLogger(__name__)

# How long a 503 asks clients to wait: the pool reconnects within a second or two.
RETRY_AFTER_S = "2"


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
