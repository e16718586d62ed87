"""PostgreSQL: the asyncpg pool and the migration runner.

Each service owns one schema. Its migrations are numbered SQL files in one or more
*components* (the service's own folder, plus shared ones such as the outbox), applied with
`search_path` set to the schema, each file once, in its own transaction, and recorded in
`<schema>.schema_migrations`. A checksum guards against editing a file that was applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson

log = logging.getLogger(__name__)

T = TypeVar("T")
# The database went away, or the connection broke under a statement: says nothing of the work
# itself, which may be tried again. asyncpg may report a connection cut mid-statement as an
# InternalClientError ("cannot switch to state …; another operation is in progress",
# MagicStack/asyncpg#1069). HTTP answers these 503 (shared.web), consumers retry them
# (shared.kafka.TRANSIENT_ERRORS).
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
# What a loop that holds a connection of its own (a relay, a scheduler, a reloader) survives by
# connecting again: the database away, or any failed statement.
CONNECTION_LOST: tuple[type[Exception], ...] = (*DATABASE_AWAY, asyncpg.PostgresError)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise ValueError(f"not a schema name: {schema!r}")
    return schema


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class _NoResetConnection(asyncpg.Connection):  # type: ignore[misc]
    """Pool connections are not reset on release: our code leaves no session state behind
    (no LISTEN, advisory locks or SET outside a transaction), and the reset costs a round trip
    per request."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A pool whose connections see `schema` first, with JSON columns as Python values."""
    check_schema_name(schema)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        connection_class=_NoResetConnection,
        server_settings={"search_path": f"{schema},public", "application_name": schema},
        **kwargs,
    )
    return pool


async def with_own_pool(
    dsn: str,
    schema: str,
    stop: asyncio.Event,
    work: Callable[[asyncpg.Pool], Awaitable[None]],
    *,
    what: str,
    max_size: int = 4,
) -> None:
    """Run `work` with a pool of its own until `stop`. When the database goes away, say so and
    start over a second later with a new pool: a background loop's rows wait in PostgreSQL."""
    while not stop.is_set():
        try:
            pool = await create_pool(dsn, schema, min_size=1, max_size=max_size)
            try:
                await work(pool)
            finally:
                await pool.close()
        except CONNECTION_LOST as exc:
            log.warning("%s lost the database: %s", what, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationSource:
    """A folder of numbered SQL files: `0001_create_cases.sql`, `0002_…`."""

    component: str
    directory: Path

    def migrations(self) -> list[Migration]:
        found: list[Migration] = []
        for path in sorted(self.directory.glob("*.sql")):
            match = _FILE.match(path.name)
            if not match:
                raise ValueError(f"{path}: migration files are named NNNN_name.sql")
            found.append(
                Migration(self.component, int(match[1]), match[2], path.read_text("utf-8"))
            )
        versions = [m.version for m in found]
        if len(set(versions)) != len(versions):
            raise ValueError(f"{self.directory}: two migrations share a number")
        return found


SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
OUTBOX_MIGRATIONS = MigrationSource("outbox", SHARED_MIGRATIONS / "outbox")


class MigrationError(RuntimeError):
    pass


async def migrate(
    conn: asyncpg.Connection, schema: str, sources: Sequence[MigrationSource]
) -> list[str]:
    """Apply what is missing of `sources` to `schema`; returns the names applied.

    Safe to run from several replicas at once: an advisory lock serialises them.
    """
    check_schema_name(schema)
    applied_now: list[str] = []
    lock_key = int.from_bytes(
        hashlib.sha256(f"migrate:{schema}".encode()).digest()[:8], "big", signed=True
    )
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                    component text NOT NULL,
                    version int NOT NULL,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (component, version))"""
        )
        rows = await conn.fetch(
            f"SELECT component, version, checksum FROM {schema}.schema_migrations"
        )
        done = {(r["component"], r["version"]): r["checksum"] for r in rows}
        for source in sources:
            for m in source.migrations():
                label = f"{schema}:{m.component}/{m.version:04d}_{m.name}"
                if (m.component, m.version) in done:
                    if done[(m.component, m.version)] != m.checksum:
                        raise MigrationError(f"{label} was changed after it was applied")
                    continue
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                    await conn.execute(m.sql)
                    await conn.execute(
                        f"""INSERT INTO {schema}.schema_migrations
                            (component, version, name, checksum) VALUES ($1, $2, $3, $4)""",
                        m.component,
                        m.version,
                        m.name,
                        m.checksum,
                    )
                applied_now.append(label)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    return applied_now


def run_in_schema(
    schema: str,
    sources: Sequence[MigrationSource],
    fn: Callable[[asyncpg.Connection], Awaitable[T]],
    dsn: str | None = None,
) -> T:
    """For command-line tools: connect, bring `schema` up to date, run `fn`, disconnect."""
    from shared.settings import get_settings

    async def run() -> T:
        conn = await asyncpg.connect(dsn or get_settings().database_url)
        try:
            await migrate(conn, schema, sources)
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())
