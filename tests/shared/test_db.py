import asyncio
from pathlib import Path

import asyncpg
import pytest

from shared.db import OUTBOX_MIGRATIONS, MigrationError, MigrationSource, migrate


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
