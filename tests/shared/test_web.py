"""The database away is a 503 with Retry-After on every service's HTTP API, never a 500; other
failures are not mistaken for it (shared.web)."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from shared.kafka import is_transient
from shared.web import answer_database_outages

CUT = asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
AWAY: dict[str, Exception] = {
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "closed": asyncpg.InterfaceError("connection is closed"),
    "gone": asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    "starting": asyncpg.CannotConnectNowError("the database system is starting up"),
    "cut": CUT,
    "slow": TimeoutError(),
}


def _app() -> FastAPI:
    app = FastAPI()
    answer_database_outages(app)

    @app.get("/away/{what}")
    async def away(what: str) -> None:
        raise AWAY[what]

    @app.get("/bug")
    async def bug() -> None:
        raise ValueError("a bug, not an outage")

    return app


@pytest.mark.parametrize("what", sorted(AWAY))
async def test_the_database_away_is_a_503_with_retry_after(what: str) -> None:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        r = await client.get(f"/away/{what}")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "2"
    assert "unavailable" in r.json()["detail"]


async def test_a_bug_is_not_dressed_up_as_an_outage() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        assert (await client.get("/bug")).status_code == 500


def test_a_connection_cut_mid_statement_is_retried_not_dead_lettered() -> None:
    assert is_transient(CUT)
