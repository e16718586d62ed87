"""Webhook deliveries per second against a bare async HTTP client, in the same run.

    .venv/bin/python bench/notifier.py [--deliveries 20000] [--concurrency 32]

A local keep-alive receiver (uvicorn, separate process) answers 204. The notifier's
`WebhookSender` works a delivery log of `--deliveries` rows in PostgreSQL (lease, sign, post,
record); the baseline posts the same payloads with one `aiohttp.ClientSession` and the same
concurrency, with no signing and no database. Then a quiet evening's latency (10 webhooks/s
to an idle sender, insert → recorded delivered), and the cost of one lease (the query that
picks due deliveries, each subscription its share) with `--quiet-subscriptions` subscriptions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import aiohttp
import asyncpg
import httpx

from bench._tools import bench_stack
from services.notifier.delivery import LEASE_SQL, WebhookSender
from services.notifier.settings import MIGRATIONS
from services.notifier.subscriptions import SubscriptionIn, add_subscription
from shared.db import migrate
from shared.localstack import free_port
from shared.settings import PROJECT_ROOT

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECEIVER = """
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def hook(request):
    await request.body()
    return Response(status_code=204)
app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
"""
PAYLOAD = (
    b'{"event_id":"%s","event_type":"CaseRouted","case_id":"%s","department":"heating",'
    b'"category":"heating.outage","details":{"grid_id":"longsha-g00042","priority":"high"}}'
)


async def run(dsn: str, url: str, n: int, concurrency: int) -> None:
    conn = await asyncpg.connect(dsn)
    await migrate(conn, "notifier", MIGRATIONS)
    sub = await add_subscription(
        conn,
        SubscriptionIn(owner_kind="department", owner="heating", url=url, secrets=[SECRET]),
        frozenset({"127.0.0.1"}),
    )
    payloads = [
        PAYLOAD % (str(uuid.uuid4()).encode(), str(uuid.uuid4()).encode()) for _ in range(n)
    ]
    await conn.copy_records_to_table(
        "deliveries",
        schema_name="notifier",
        columns=("id", "event_id", "subscription_id", "payload", "department"),
        records=[(uuid.uuid4(), uuid.uuid4(), sub, p, "heating") for p in payloads],
    )
    sender = WebhookSender(
        dsn, allow=frozenset({"127.0.0.1"}), schedule=(0, 1, 1), per_endpoint=concurrency, batch=200
    )
    stop = asyncio.Event()
    t = time.perf_counter()
    task = asyncio.create_task(sender.run(stop))
    while True:
        left = await conn.fetchval(
            "SELECT count(*) FROM notifier.deliveries WHERE state = 'pending'"
        )
        if left == 0:
            break
        await asyncio.sleep(0.05)
    sender_s = time.perf_counter() - t
    stop.set()
    await task
    # baseline: the same client library, payloads and concurrency; no signing, no database
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def post_all(bodies: list[bytes]) -> None:
            todo = list(bodies)

            async def worker() -> None:
                while todo:
                    body = todo.pop()
                    async with s.post(
                        url, data=body, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        assert r.status == 204

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        await post_all(payloads[:500])  # warm-up
        t = time.perf_counter()
        await post_all(payloads)
        bare_s = time.perf_counter() - t
    delivered = await conn.fetchval(
        "SELECT count(*) FROM notifier.deliveries WHERE state = 'delivered'"
    )
    await conn.close()
    print(f"deliveries {n:,}, concurrency {concurrency}, keep-alive receiver on loopback")
    print(
        f"notifier (lease, sign, post, record)  {n / sender_s:>8,.0f} /s  ({delivered:,} delivered)"
    )
    print(f"bare aiohttp client                   {n / bare_s:>8,.0f} /s")
    print(f"ratio notifier / bare                 {bare_s / sender_s:>8.2f}")


async def quiet_latency(dsn: str, url: str, rate: int = 10, n: int = 100) -> None:
    """A quiet evening: deliveries inserted one by one at `rate`/s (as the feed writer inserts
    each batch's) while the sender idles; how long from the insert until recorded delivered."""
    conn = await asyncpg.connect(dsn)
    sub = await add_subscription(
        conn,
        SubscriptionIn(owner_kind="department", owner="quiet", url=url, secrets=[SECRET]),
        frozenset({"127.0.0.1"}),
    )
    sender = WebhookSender(dsn, allow=frozenset({"127.0.0.1"}), schedule=(0, 1, 1))
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(1)  # idle
    ids = [uuid.uuid4() for _ in range(n)]
    for i in ids:
        await conn.execute(
            "INSERT INTO notifier.deliveries (id, event_id, subscription_id, payload, department)"
            " VALUES ($1, $2, $3, $4, 'quiet')",
            i,
            uuid.uuid4(),
            sub,
            PAYLOAD % (str(i).encode(), str(i).encode()),
        )
        await asyncio.sleep(1 / rate)
    await asyncio.sleep(2)
    stop.set()
    await task
    ms = sorted(
        await conn.fetchval(
            "SELECT array_agg(extract(epoch FROM delivered_at - created_at) * 1000) "
            "FROM notifier.deliveries WHERE id = ANY($1) AND state = 'delivered'",
            ids,
        )
        or []
    )
    await conn.close()
    print(
        f"quiet: {rate} webhooks/s to an idle sender, insert → recorded delivered: "
        f"p50 {ms[len(ms) // 2]:.1f} ms, p99 {ms[int(len(ms) * 0.99)]:.1f} ms "
        f"({len(ms)} of {n} delivered)"
    )


async def lease_cost(dsn: str, subscriptions: int) -> None:
    """One lease (the sender's query that picks due deliveries, each subscription its share)
    with many subscriptions: quiet, then with 2,000 deliveries due for ten of them."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("DELETE FROM notifier.deliveries")
    await conn.execute(
        "INSERT INTO notifier.subscriptions (owner_kind, owner, channel, url, secrets) "
        "SELECT 'worker', 'w-' || g, 'webhook', 'http://127.0.0.1:9/w-' || g, ARRAY[$2] "
        "FROM generate_series(1, $1::int) g",
        subscriptions,
        SECRET,
    )
    subs = [r["id"] for r in await conn.fetch("SELECT id FROM notifier.subscriptions LIMIT 10")]
    await conn.execute("ANALYZE notifier.subscriptions")

    async def p50() -> float:
        times = []
        for _ in range(21):
            tx = conn.transaction()  # rolled back: every round leases the same rows
            await tx.start()
            t = time.perf_counter()
            await conn.fetch(LEASE_SQL, 100, datetime.now(UTC), 32, [], [], [], ["webhook"], 60.0)
            times.append(time.perf_counter() - t)
            await tx.rollback()
        return sorted(times)[10] * 1000

    quiet = await p50()
    await conn.executemany(
        "INSERT INTO notifier.deliveries (id, event_id, subscription_id, payload) "
        "VALUES ($1, $2, $3, $4)",
        [(uuid.uuid4(), uuid.uuid4(), subs[i % len(subs)], b"{}") for i in range(2000)],
    )
    await conn.execute("ANALYZE notifier.deliveries")
    busy = await p50()
    await conn.close()
    print(
        f"one lease of 100, {subscriptions:,} subscriptions: {quiet:.2f} ms with nothing due, "
        f"{busy:.2f} ms with 2,000 due for ten of them (p50 of 21)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--quiet-subscriptions", type=int, default=20_000)
    args = parser.parse_args()
    port = free_port()
    receiver_file = PROJECT_ROOT / ".local" / "bench_receiver.py"
    receiver_file.parent.mkdir(parents=True, exist_ok=True)
    receiver_file.write_text(RECEIVER)
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench_receiver:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=receiver_file.parent,
        env={**os.environ},
    )
    try:
        for _ in range(100):
            try:
                httpx.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        with bench_stack() as stack:
            asyncio.run(
                run(
                    stack.postgres.url,
                    f"http://127.0.0.1:{port}/hook",
                    args.deliveries,
                    args.concurrency,
                )
            )
            asyncio.run(quiet_latency(stack.postgres.url, f"http://127.0.0.1:{port}/hook"))
            asyncio.run(lease_cost(stack.postgres.url, args.quiet_subscriptions))
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    main()
