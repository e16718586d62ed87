"""Small asyncio helpers shared by the services' loops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

T = TypeVar("T")


async def until_set(*events: asyncio.Event, at_most_s: float) -> None:
    """Return once any of `events` is set, or after `at_most_s` seconds: a loop's sleep that a
    notification (LISTEN/NOTIFY, a stop request) cuts short."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=at_most_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class Refreshed(Generic[T]):
    """A value read from the database again at most every `every_s` seconds: for settings a
    hot path consults on every batch (a change takes effect within `every_s`)."""

    def __init__(
        self, read: Callable[[asyncpg.Connection], Awaitable[T]], every_s: float, initial: T
    ) -> None:
        self.read = read
        self.every_s = every_s
        self.value = initial
        self._read_at = float("-inf")

    async def get(self, conn: asyncpg.Connection) -> T:
        if time.monotonic() - self._read_at > self.every_s:
            self.value = await self.read(conn)
            self._read_at = time.monotonic()
        return self.value
