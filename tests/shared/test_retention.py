"""The retention runner on the real database: purges in batches until done, only what is past
its retention, counted by service and purge; replicas share the work; the loop waits out the
database going away, raises a failing statement, and stops when told."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
import yaml

from shared.db import create_pool
from shared.localstack import LocalStack
from shared.metrics import REGISTRY
from shared.retention import Purge, Retention, masked, masked_fields
from shared.settings import PROJECT_ROOT, RetentionSettings
from tests.helpers.services import fresh_database

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
OLD_ROWS = "DELETE FROM t WHERE id IN (SELECT id FROM t WHERE at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING 1"  # noqa: E501


async def _table(url: str, ages_days: list[int]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE t (id serial PRIMARY KEY, at timestamptz NOT NULL)")
        await conn.executemany(
            "INSERT INTO t (at) VALUES ($1)", [(NOW - timedelta(days=d),) for d in ages_days]
        )
    finally:
        await conn.close()


def _pruned(service: str, purge: str) -> float:
    value = REGISTRY.get_sample_value(
        "griddispatch_retention_pruned_total", {"service": service, "purge": purge}
    )
    return value or 0.0


async def _ages(pool: asyncpg.Pool) -> list[int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT at FROM t ORDER BY at DESC")
    return [(NOW - r["at"]).days for r in rows]


async def test_purges_in_batches_only_what_is_past_its_retention(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "retention")
    await _table(url, [0, 1, 9, 10, 11, 12, 30, 40, 50, 60, 70, 80])
    pool = await create_pool(url, "public", max_size=2)
    try:
        retention = Retention(
            pool,
            "test",
            [Purge("rows", timedelta(days=10), OLD_ROWS)],
            RetentionSettings(batch_size=3),
        )
        before = _pruned("test", "rows")
        assert await retention.purge(NOW) == {"rows": 8}  # three batches of 3, 3 and 2
        assert await _ages(pool) == [0, 1, 9, 10]  # 10 days old is not older than 10 days
        assert _pruned("test", "rows") - before == 8
        assert await retention.purge(NOW) == {"rows": 0}
    finally:
        await pool.close()


async def test_replicas_share_the_work_without_waiting_for_each_other(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "retention")
    await _table(url, [100] * 500 + [1] * 5)
    pool = await create_pool(url, "public", max_size=4)
    try:
        settings = RetentionSettings(batch_size=50)
        replicas = [
            Retention(pool, "test", [Purge("rows", timedelta(days=10), OLD_ROWS)], settings)
            for _ in range(3)
        ]
        done = await asyncio.gather(*(r.purge(NOW) for r in replicas))
        assert sum(d["rows"] for d in done) == 500  # each old row erased once, by one of them
        assert await _ages(pool) == [1] * 5
    finally:
        await pool.close()


async def test_the_loop_runs_now_and_then_and_stops_when_told(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "retention")
    await _table(url, [100, 100, 1])
    pool = await create_pool(url, "public", max_size=2)
    stop = asyncio.Event()
    try:
        retention = Retention(
            pool,
            "test",
            [Purge("rows", timedelta(days=10), OLD_ROWS)],
            RetentionSettings(check_s=0.05),
        )
        loop = asyncio.create_task(retention.run(stop))
        async with pool.acquire() as conn:
            for _ in range(100):
                if await conn.fetchval("SELECT count(*) FROM t") == 1:
                    break
                await asyncio.sleep(0.05)
            # rows that age while it runs go at a later round
            await conn.execute("UPDATE t SET at = at - interval '30 days'")
            for _ in range(100):
                if await conn.fetchval("SELECT count(*) FROM t") == 0:
                    break
                await asyncio.sleep(0.05)
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        stop.set()
        await asyncio.wait_for(loop, 5)
    finally:
        stop.set()
        await pool.close()


async def test_the_database_away_is_waited_out_but_a_failing_statement_is_raised(
    stack: LocalStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Away: a warning, and the next round. A statement that fails is a bug: it ends the loop,
    for `supervised` to log, count (the GridDispatchBackgroundLoopFailing alert) and restart."""
    url = await fresh_database(stack.postgres.url, "retention")
    await _table(url, [100])
    pool = await create_pool(url, "public", max_size=2)
    stop = asyncio.Event()
    try:
        settings = RetentionSettings(check_s=0.05)
        away = Retention(
            pool,
            "test",
            [Purge("rows", timedelta(days=10), "SELECT pg_terminate_backend(pg_backend_pid())")],
            settings,
        )
        loop = asyncio.create_task(away.run(stop))
        for _ in range(100):
            if caplog.text.count("database unavailable") >= 2:
                break
            await asyncio.sleep(0.05)
        assert caplog.text.count("retention: database unavailable") >= 2  # round after round
        assert not loop.done()
        stop.set()
        await asyncio.wait_for(loop, 5)

        broken = Retention(
            pool,
            "test",
            [Purge("rows", timedelta(days=10), OLD_ROWS.replace(" t ", " gone "))],
            settings,
        )
        with pytest.raises(asyncpg.UndefinedTableError):
            await asyncio.wait_for(broken.run(asyncio.Event()), 5)
    finally:
        stop.set()
        await pool.close()


def test_what_recognises_a_redelivery_outlives_every_topic() -> None:
    """A message a topic can still deliver (a replay from a dead-letter topic, say) must still
    be recognised: the dedup records outlive the longest retention of the Kubernetes topics."""
    manifests = yaml.safe_load_all((PROJECT_ROOT / "deploy/k8s/base/kafka/topics.yaml").read_text())
    longest_ms = max(
        int(m["spec"]["config"].get("retention.ms", 0)) for m in manifests if m
    )  # the compacted directory keeps its records for ever, but they are not case messages
    assert timedelta(days=RetentionSettings().dedup_days) > timedelta(milliseconds=longest_ms)
    assert timedelta(days=14) < timedelta(milliseconds=longest_ms)  # the DLQs' 30 days, read
    with pytest.raises(ValueError, match="dedup_days"):
        RetentionSettings(dedup_days=30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("联系电话13912345678，谢谢", "联系电话***，谢谢"),
        ("座机0452-2712345或04522712345", "座机***或***"),
        ("wang.ayi+x@example.org 写信", "*** 写信"),
        ("身份证号23020219450312002X，独居", "身份证号***，独居"),
        # longer numbers (an order number, a building code) and times stay whole
        ("订单号2026112913912345678, 楼栋Q-0452-12345678901", None),
        ("2026-11-29T04:43:28.834780Z", None),
    ],
)
async def test_contacts_written_into_text_are_masked(
    stack: LocalStack, text: str, expected: str | None
) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        assert await conn.fetchval(f"SELECT {masked('$1::text')}", text) == (expected or text)
        payload = orjson.dumps({"note": text, "rating": 13912345678, "by": "w-1"}).decode()
        fields = await conn.fetchval(
            f"SELECT ({masked_fields('$1::jsonb', ['note', 'reason'])})::text", payload
        )
    finally:
        await conn.close()
    assert orjson.loads(fields) == {"note": expected or text, "rating": 13912345678, "by": "w-1"}
