"""API keys and rate limits.

A key looks like `gd_<prefix>_<secret>`; only SHA-256(secret) is stored (the secret is 32
random bytes, so a fast hash is enough) and the comparison is constant-time. A key has a role
and, for departments and workers, a scope: the department code or the worker id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter


class Role(StrEnum):
    RESIDENT_APP = "resident_app"  # apps and channels that submit residents' reports
    DEPARTMENT = "department"
    WORKER = "worker"
    OPERATOR = "operator"
    ADMIN = "admin"


SCOPED_ROLES = {Role.DEPARTMENT, Role.WORKER}


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    key_id: uuid.UUID
    name: str
    role: Role
    scope: str | None

    @property
    def sees_everything(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)


@dataclass(frozen=True)
class NewKey:
    id: uuid.UUID
    prefix: str
    token: str  # shown once, never stored
    secret_hash: bytes


def generate_key() -> NewKey:
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    return NewKey(uuid.uuid4(), prefix, f"gd_{prefix}_{secret}", hash_secret(secret))


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_token(token: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != "gd" or len(parts[1]) != 8 or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


class RateLimiter:
    """Sliding-window limits per API key and per client address, in process memory (the
    asyncio flavour of `limits`: no timer threads on the request path).

    Each intake replica enforces its own share; with N replicas behind a balancer the
    effective limit is about N times the setting.
    """

    def __init__(self, per_key: str, per_address: str) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._per_key: RateLimitItem = parse(per_key)
        self._per_address: RateLimitItem = parse(per_address)

    async def check(self, *, key_id: str | None, address: str) -> float | None:
        """None if allowed, else the seconds to wait before retrying."""
        for item, ident in ((self._per_address, f"a:{address}"), (self._per_key, f"k:{key_id}")):
            if ident == "k:None":
                continue
            if not await self._limiter.hit(item, ident):
                stats = await self._limiter.get_window_stats(item, ident)
                return max(1.0, stats.reset_time - time.time())
        return None
