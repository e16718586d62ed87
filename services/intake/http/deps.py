"""What every route needs: the pool, the catalogue, who is calling, and the rate limit."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated

import asyncpg
from fastapi import Depends, Header, HTTPException, Request

from services.intake import store
from services.intake.auth import Principal, RateLimiter
from services.intake.catalogue import Category
from services.intake.settings import IntakeSettings

log = logging.getLogger(__name__)


@dataclass
class CatalogueCache:
    """The catalogue as of the last refresh; edits in the database show up within
    `refresh_s` seconds without a restart."""

    pool: asyncpg.Pool
    refresh_s: float
    categories: dict[str, Category] = field(default_factory=dict)
    loaded_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> dict[str, Category]:
        if time.monotonic() - self.loaded_at > self.refresh_s:
            async with self._lock:
                if time.monotonic() - self.loaded_at > self.refresh_s:
                    async with self.pool.acquire() as conn:
                        self.categories = await store.load_categories(conn)
                    self.loaded_at = time.monotonic()
        return self.categories


@dataclass
class IntakeState:
    settings: IntakeSettings
    pool: asyncpg.Pool
    catalogue: CatalogueCache
    limiter: RateLimiter


def state(request: Request) -> IntakeState:
    s: IntakeState = request.app.state.intake
    return s


State = Annotated[IntakeState, Depends(state)]


class ApiError(HTTPException):
    """An error with a machine-readable code, rendered as `ErrorBody`."""

    def __init__(
        self,
        status_code: int,
        error: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.error = error
        self.field = field


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def bearer(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


async def identify(st: IntakeState, token: str | None, request: Request) -> Principal | None:
    """The caller's principal (None: anonymous), after the rate limit. Raises 401 for a key
    that is malformed, unknown or revoked, and 429 over the limit."""
    principal = None
    if token:
        async with st.pool.acquire() as conn:
            principal = await store.authenticate(conn, token)
        if principal is None:
            raise ApiError(401, "invalid_api_key", "the API key is unknown or revoked")
    wait = st.limiter.check(
        key_id=str(principal.key_id) if principal else None, address=client_address(request)
    )
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests; slow down",
            headers={"Retry-After": str(int(wait + 0.999))},
        )
    return principal


async def optional_principal(
    request: Request,
    st: State,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Principal | None:
    return await identify(st, bearer(authorization, x_api_key), request)


async def required_principal(
    principal: Annotated[Principal | None, Depends(optional_principal)],
) -> Principal:
    if principal is None:
        raise ApiError(
            401,
            "missing_api_key",
            "this endpoint needs an API key (Authorization: Bearer … or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]
RequiredPrincipal = Annotated[Principal, Depends(required_principal)]
