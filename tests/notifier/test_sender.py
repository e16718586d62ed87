"""The webhook sender on the real database: one department's hanging or dead receiver does not
hold up the other departments' webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from services.notifier.delivery import Breaker, WebhookSender
from services.notifier.settings import MIGRATIONS
from services.notifier.subscriptions import SubscriptionIn, add_subscription
from shared.db import migrate
from shared.localstack import LocalStack
from shared.metrics import REGISTRY
from tests.helpers.http import receiving
from tests.notifier.test_webhooks import SECRET_A

LOCAL = frozenset({"127.0.0.1"})


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached: {what}")


@contextlib.asynccontextmanager
async def sending(sender: WebhookSender, release: asyncio.Event) -> AsyncIterator[None]:
    """`sender` running; on the way out, hung receivers are released first (the sender waits
    for what it has in flight)."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        yield
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 30)


async def subscribe(db: asyncpg.Connection, port: int, name: str) -> int:
    await migrate(db, "notifier", MIGRATIONS)
    return await add_subscription(
        db,
        SubscriptionIn(
            owner_kind="department",
            owner=f"{name}-{uuid.uuid4().hex[:6]}",
            url=f"http://127.0.0.1:{port}/{name}",
            secrets=[SECRET_A],
        ),
        LOCAL,
    )


async def queue(db: asyncpg.Connection, sub: int, n: int, due: datetime) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    await db.executemany(
        "INSERT INTO notifier.deliveries (id, event_id, subscription_id, payload, "
        "next_attempt_at) VALUES ($1, $2, $3, $4, $5)",
        [(i, uuid.uuid4(), sub, b'{"case_id":"c-1"}', due) for i in ids],
    )
    return ids


async def delivered(db: asyncpg.Connection, ids: list[uuid.UUID]) -> bool:
    n = await db.fetchval(
        "SELECT count(*) FROM notifier.deliveries WHERE id = ANY($1) AND state = 'delivered'",
        ids,
    )
    return bool(n == len(ids))


async def test_a_hanging_endpoint_does_not_hold_up_other_departments(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    release = asyncio.Event()
    slow_open = asyncio.Event()

    async def hook(request: Request) -> Response:
        await request.body()
        if request.path_params["name"] == "slow":
            slow_open.set()
            await release.wait()  # hangs until the test has seen the others delivered
        return Response(status_code=204)

    async with receiving("/{name}", hook) as port:
        slow_sub, fast_sub = await subscribe(db, port, "slow"), await subscribe(db, port, "fast")
        now = datetime.now(UTC)
        slow = await queue(db, slow_sub, 1, now - timedelta(seconds=10))  # first in line
        fast = await queue(db, fast_sub, 5, now - timedelta(seconds=5))
        sender = WebhookSender(stack.postgres.url, allow=LOCAL, schedule=(0, 1, 1), timeout_s=120)
        async with sending(sender, release):
            await _until(lambda: delivered(db, fast), "the fast department's webhooks recorded")
            later = await queue(db, fast_sub, 3, datetime.now(UTC))  # reports keep coming
            await _until(lambda: delivered(db, later), "later webhooks leased and delivered")
            assert slow_open.is_set()  # all while the slow one hung
            assert not release.is_set()
            assert not await delivered(db, slow)
            release.set()
            await _until(lambda: delivered(db, slow), "the slow one delivered once released")


async def test_once_the_breaker_opens_queued_deliveries_are_held_back_not_attempted(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def hook(request: Request) -> Response:
        calls.append(request.headers["webhook-id"])
        await release.wait()  # a receiver that accepts connections and never answers
        return Response(status_code=204)

    async def settled() -> bool:
        """Nothing leased any more: every delivery attempted and put off, or held back."""
        n = await db.fetchval(
            "SELECT count(*) FROM notifier.deliveries WHERE id = ANY($1) AND state = 'pending' "
            "AND lease_until IS NULL",
            ids,
        )
        return bool(n == len(ids)) and not sender.breaker.allows(url)

    per_endpoint = 4
    held_before = (
        REGISTRY.get_sample_value(
            "griddispatch_deliveries_total", {"channel": "webhook", "result": "held_back"}
        )
        or 0.0
    )
    async with receiving("/{name}", hook) as port:
        url = f"http://127.0.0.1:{port}/dead"
        ids = await queue(db, await subscribe(db, port, "dead"), 40, datetime.now(UTC))
        sender = WebhookSender(
            stack.postgres.url,
            allow=LOCAL,
            schedule=(0, 600, 600),
            timeout_s=1,
            per_endpoint=per_endpoint,
            breaker=Breaker(threshold=2, cooldown_s=600),
        )
        async with sending(sender, release):
            await _until(settled, "the breaker open and every delivery put off or held back")
            await asyncio.sleep(1)  # several more leases, while the breaker stays open
            # the first attempts opened the breaker; the other deliveries, queued behind the
            # endpoint's concurrency limit, were held back instead of each waiting out a
            # timeout, and the ones still in the table are not leased while it is open
            assert per_endpoint <= len(calls) <= 2 * per_endpoint
            assert await settled()
            # what operators see: the open breaker, and the deliveries it held back
            assert REGISTRY.get_sample_value("griddispatch_webhook_breakers_open") == 1
            held = REGISTRY.get_sample_value(
                "griddispatch_deliveries_total", {"channel": "webhook", "result": "held_back"}
            )
            assert held is not None
            assert held - held_before >= 1


async def test_one_endpoint_s_backlog_does_not_fill_the_sender(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    """A department whose receiver hangs, with far more due webhooks than the sender has
    slots, ahead of everyone else's: the others still get theirs."""
    release = asyncio.Event()
    hanging: list[str] = []

    async def hook(request: Request) -> Response:
        await request.body()
        if request.path_params["name"] == "stuck":
            hanging.append(request.headers["webhook-id"])
            await release.wait()
        return Response(status_code=204)

    per_endpoint = 4
    async with receiving("/{name}", hook) as port:
        stuck_sub, other_sub = await subscribe(db, port, "stuck"), await subscribe(db, port, "ok")
        now = datetime.now(UTC)
        await queue(db, stuck_sub, 300, now - timedelta(seconds=10))  # first in line
        others = await queue(db, other_sub, 20, now - timedelta(seconds=5))
        sender = WebhookSender(
            stack.postgres.url,
            allow=LOCAL,
            schedule=(0, 1, 1),
            timeout_s=120,
            per_endpoint=per_endpoint,
            batch=100,
        )
        async with sending(sender, release):
            await _until(lambda: delivered(db, others), "the other department's webhooks delivered")
            assert not release.is_set()  # all while the stuck endpoint hung
            assert len(hanging) == per_endpoint  # its concurrency limit, no more
            leased = await db.fetchval(
                "SELECT count(*) FROM notifier.deliveries WHERE subscription_id = $1 "
                "AND lease_until > now()",
                stuck_sub,
            )
            assert leased <= sender.per_subscription < sender.batch


async def test_an_idle_sender_is_woken_by_new_deliveries_not_by_its_poll(
    stack: LocalStack, db: asyncpg.Connection
) -> None:
    async def hook(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    async with receiving("/{name}", hook) as port:
        sub = await subscribe(db, port, "woken")
        # An hour between polls: only the insert's notification can wake it in this test.
        sender = WebhookSender(
            stack.postgres.url, allow=LOCAL, schedule=(0, 1, 1), idle_poll_s=3600
        )
        async with sending(sender, asyncio.Event()):
            first = await queue(db, sub, 1, datetime.now(UTC))
            await _until(lambda: delivered(db, first), "the first webhook delivered")
            await asyncio.sleep(0.5)  # its loop goes idle
            later = await queue(db, sub, 2, datetime.now(UTC))
            await _until(lambda: delivered(db, later), "webhooks inserted while it slept")
