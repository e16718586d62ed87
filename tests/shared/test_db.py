import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import OUTBOX_MIGRATIONS, MigrationError, MigrationSource, migrate, with_own_pool
from shared.localstack import LocalStack


def _source(tmp_path: Path) -> MigrationSource:
    d = tmp_path / "m"
    d.mkdir()
    (d / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
    (d / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN name text;")
    return MigrationSource("svc", d)


async def test_migrations_apply_once_and_are_idempotent(
    db: asyncpg.Connection, schema: str, tmp_path: Path
) -> None:
    src = _source(tmp_path)
    first = await migrate(db, schema, [OUTBOX_MIGRATIONS, src])
    assert first == [
        f"{schema}:outbox/0001_outbox",
        f"{schema}:svc/0001_things",
        f"{schema}:svc/0002_more",
    ]
    assert await migrate(db, schema, [OUTBOX_MIGRATIONS, src]) == []
    # tables landed in the service's own schema
    cols = await db.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = 'things' ORDER BY ordinal_position",
        schema,
    )
    assert [c["column_name"] for c in cols] == ["id", "name"]
    assert await db.fetchval(f"SELECT count(*) FROM {schema}.outbox") == 0

    # a new file is applied alone
    (src.directory / "0003_index.sql").write_text("CREATE INDEX ON things (name);")
    assert await migrate(db, schema, [src]) == [f"{schema}:svc/0003_index"]


async def test_a_changed_migration_is_refused(
    db: asyncpg.Connection, schema: str, tmp_path: Path
) -> None:
    src = _source(tmp_path)
    await migrate(db, schema, [src])
    (src.directory / "0001_things.sql").write_text("CREATE TABLE things (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(db, schema, [src])


async def test_a_failing_migration_leaves_nothing_half_done(
    db: asyncpg.Connection, schema: str, tmp_path: Path
) -> None:
    src = _source(tmp_path)
    (src.directory / "0003_broken.sql").write_text(
        "CREATE TABLE half (id int); SELECT no_such_function();"
    )
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await migrate(db, schema, [src])
    assert await db.fetchval("SELECT to_regclass($1)", f"{schema}.half") is None
    versions = await db.fetch(f"SELECT version FROM {schema}.schema_migrations")
    assert sorted(v["version"] for v in versions) == [1, 2]


async def test_concurrent_migrations_apply_each_file_once(
    stack, schema: str, tmp_path: Path
) -> None:
    src = _source(tmp_path)
    conns = [await asyncpg.connect(stack.postgres.url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c, schema, [src]) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert sorted(len(r) for r in results) == [0, 0, 2]


async def test_a_loop_with_its_own_pool_starts_over_when_the_database_goes_away(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    pools: list[asyncpg.Pool] = []

    async def work(pool: asyncpg.Pool) -> None:
        pools.append(pool)
        assert await pool.fetchval("SELECT 1") == 1
        if len(pools) == 1:
            raise ConnectionResetError("the database went away")  # as a lost connection
        stop.set()

    await asyncio.wait_for(
        with_own_pool(stack.postgres.url, "public", stop, work, what="test sender"), 10
    )
    assert len(pools) == 2
    assert pools[0] is not pools[1]  # a new pool the second time
    assert all(p.is_closing() for p in pools)
    assert any(
        r.getMessage() == "test sender lost the database: the database went away"
        for r in caplog.records
    )
