"""The names of the catalogue's categories, which messages use ("您反映的问题（暖气不热）"): those
of the packaged catalogue, and those a city imported since (`griddispatch catalogue import`
writes them to `notifier.categories`; every notifier reads them back now and then)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import orjson

from services.notifier import texts
from shared.aio import until_set
from shared.catalogue import Catalogue, Taken
from shared.db import DATABASE_AWAY

log = logging.getLogger(__name__)


async def take_catalogue(
    conn: asyncpg.Connection, catalogue: Catalogue, *, retire_others: bool
) -> Taken:
    """`griddispatch catalogue import`: keep the categories' names (same code: replaced).
    Retired categories keep theirs: messages about their cases still name them."""
    await conn.executemany(
        "INSERT INTO notifier.categories (code, name) VALUES ($1, $2::text::jsonb) "
        "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, updated_at = now()",
        [(c.code, orjson.dumps(c.name).decode()) for c in catalogue.categories],
    )
    return Taken(len(catalogue.categories))


async def refresh_names(pool: asyncpg.Pool) -> int:
    """Read the imported names into the messages' words; returns how many."""
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT code, name::text AS name FROM notifier.categories")
    texts.know_category_names({r["code"]: orjson.loads(r["name"]) for r in rows})
    return len(rows)


class CategoryNames:
    """Keeps this process's category names as imported, every `interval_s`."""

    def __init__(self, pool: asyncpg.Pool, *, interval_s: float = 30.0) -> None:
        self.pool = pool
        self.interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await refresh_names(self.pool)
            except DATABASE_AWAY as exc:  # the names known so far serve meanwhile
                log.warning("category names: database unavailable: %r", exc)
            await until_set(stop, at_most_s=self.interval_s)
