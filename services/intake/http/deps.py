"""What every route needs: the pool, the catalogue, who is calling, and the rate limit."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request

from services.intake import store
from services.intake.auth import Principal, RateLimiter, Role
from services.intake.reports import ReportWriter
from services.intake.settings import IntakeSettings
from shared.catalogue import Category
from shared.directory import DepartmentDirectory

log = logging.getLogger(__name__)


@dataclass
class CatalogueCache:
    """The catalogue as of the last refresh; edits in the database show up within
    `refresh_s` seconds without a restart."""

    pool: asyncpg.Pool
    refresh_s: float
    categories: store.Categories = field(default_factory=lambda: store.Categories({}, {}))
    loaded_at: float = 0.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> dict[str, Category]:
        """Every category a case may be in (retired ones too): for reading cases."""
        return (await self._current()).every

    async def offered(self) -> dict[str, Category]:
        """The categories new reports and grid tasks may name."""
        return (await self._current()).offered

    async def _current(self) -> store.Categories:
        if time.monotonic() - self.loaded_at > self.refresh_s:
            async with self._lock:
                if time.monotonic() - self.loaded_at > self.refresh_s:
                    async with self.pool.acquire() as conn:
                        self.categories = await store.load_categories(conn)
                    self.loaded_at = time.monotonic()
        return self.categories


class KeyCache:
    """Recently verified API keys, so a busy client costs no database lookup per request.
    A revoked key stops working within `ttl_s` seconds."""

    def __init__(self, pool: asyncpg.Pool, ttl_s: float) -> None:
        self.pool = pool
        self._cache: TTLCache[str, Principal] = TTLCache(maxsize=10_000, ttl=ttl_s)

    async def authenticate(self, token: str) -> Principal | None:
        principal = self._cache.get(token)
        if principal is None:
            async with self.pool.acquire() as conn:
                principal = await store.authenticate(conn, token)
            if principal is not None:
                self._cache[token] = principal
        return principal


@dataclass
class IntakeState:
    settings: IntakeSettings
    pool: asyncpg.Pool
    catalogue: CatalogueCache
    limiter: RateLimiter
    keys: KeyCache
    writer: ReportWriter
    # department names from the department directory (replicas that follow it)
    directory: DepartmentDirectory | None = None

    def department_name(self, code: str | None) -> str | None:
        return self.directory.name(code) if self.directory is not None else None


def state(request: Request) -> IntakeState:
    s: IntakeState = request.app.state.intake
    return s


async def _state_dependency(request: Request) -> IntakeState:  # async: no thread hop
    return state(request)


State = Annotated[IntakeState, Depends(_state_dependency)]


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
        principal = await st.keys.authenticate(token)
        if principal is None:
            raise ApiError(401, "invalid_api_key", "the API key is unknown or revoked")
    wait = await st.limiter.check(
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


@dataclass(frozen=True)
class HeaderParam:
    """A request header the routes read by hand, declared in the OpenAPI document through
    `openapi_extra`: FastAPI inspects every declared parameter's annotation on every request,
    and the three optional headers of `POST /v1/cases` cost a tenth of its CPU that way."""

    name: str
    description: str
    max_length: int
    min_length: int = 0

    def openapi(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": "header",
            "required": False,
            "description": self.description,
            "schema": {
                "type": "string",
                "minLength": self.min_length,
                "maxLength": self.max_length,
            },
        }

    def read(self, request: Request) -> str | None:
        """The header's value, or None; a 422 naming the header if it is out of bounds."""
        value = request.headers.get(self.name)
        if value is not None and not self.min_length <= len(value) <= self.max_length:
            raise ApiError(
                422,
                "invalid_request",
                f"the {self.name} header must have {self.min_length} to {self.max_length} "
                "characters",
                field=self.name,
            )
        return value


AUTHORIZATION = HeaderParam("Authorization", "`Bearer gd_…`: an API key", max_length=200)
X_API_KEY = HeaderParam("X-API-Key", "the API key, instead of Authorization", max_length=200)
CREDENTIALS = (AUTHORIZATION, X_API_KEY)


def documented(*headers: HeaderParam) -> dict[str, Any]:
    """`openapi_extra` for a route that reads `headers` by hand."""
    return {"parameters": [h.openapi() for h in headers]}


async def caller(request: Request, *, required: bool) -> Principal | None:
    """Who is calling, from the Authorization or X-API-Key header (see `identify`)."""
    token = bearer(AUTHORIZATION.read(request), X_API_KEY.read(request))
    principal = await identify(state(request), token, request)
    if principal is None and required:
        raise ApiError(
            401,
            "missing_api_key",
            "this endpoint needs an API key (Authorization: Bearer … or X-API-Key)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


@dataclass(frozen=True)
class CaseScope:
    """Whose cases a caller reads: `department`'s, or `worker_id`'s, or (both None) all."""

    principal: Principal
    department: str | None
    worker_id: str | None


async def case_scope(request: Request, department: str | None, *, reading: str) -> CaseScope:
    """The cases the caller may read (`reading`: what, for the refusal): a department its own
    (naming another's is a 403), a grid worker those assigned to them, operators all or the
    `department` they name; other keys none (403)."""
    principal = await caller(request, required=True)
    assert principal is not None
    if principal.role is Role.DEPARTMENT:
        if department is not None and department != principal.scope:
            raise ApiError(
                403, "forbidden", "a department sees only its own cases", field="department"
            )
        return CaseScope(principal, principal.scope, None)
    if principal.role is Role.WORKER:
        return CaseScope(principal, department, principal.scope)
    if not principal.sees_everything:
        raise ApiError(403, "forbidden", f"this key may not read {reading}")
    return CaseScope(principal, department, None)
