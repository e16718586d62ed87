"""The notifier as a process on the real broker and database: department feeds that a
department reads with Kafka's own console consumer, signed webhooks with retries, 410 and a
dead letter that can be replayed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from starlette.requests import Request
from starlette.responses import Response

from services.notifier.delivery import replay
from services.notifier.settings import MIGRATIONS
from services.notifier.subscriptions import SubscriptionIn, add_subscription
from shared import events, topics
from shared.db import migrate
from shared.events import wrap
from shared.feed import FEED_MESSAGE
from shared.localstack import LocalStack, free_port
from shared.settings import PROJECT_ROOT
from tests.helpers.http import receiving
from tests.helpers.kafka import topic_config
from tests.notifier.test_webhooks import SECRET_A, verify


class Receiver:
    """A local webhook endpoint that records what it gets and answers as told per path."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[dict[str, str], str]]] = {}
        self.port = free_port()

    async def handle(self, request: Request) -> Response:
        path = request.path_params["name"]
        body = (await request.body()).decode()
        self.calls.setdefault(path, []).append((dict(request.headers), body))
        n = len(self.calls[path])
        if path in ("ok", "worker", "gateway") or (path == "flaky" and n > 1):
            return Response(status_code=204)
        if path == "flaky":
            return Response(status_code=503, headers={"Retry-After": "1"})
        if path == "gone":
            return Response(status_code=410)
        return Response(status_code=500)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    async with receiving("/{name}", r.handle, port=r.port):
        yield r


def routed(department: str, worker_id: str = "w-1") -> events.Envelope:
    now = datetime.now(UTC)
    return wrap(
        events.CaseRouted(
            category="heating.outage",
            grid_id="g-1",
            district="longsha",
            department=department,
            worker_id=worker_id,
            priority=events.Priority.HIGH,
            deadlines=events.Deadlines(
                acknowledge_by=now + timedelta(hours=1),
                resolve_by=now + timedelta(hours=12),
                warn_before_s=900,
            ),
            escalation_chain=(
                events.EscalationStep(level=0, role="worker", name="张三", contact="13900000000"),
            ),
            reported_at=now - timedelta(seconds=1),
        ),
        case_id=str(uuid.uuid4()),
        producer="router",
    )


async def wait_until(predicate, timeout_s: float = 30) -> None:
    for _ in range(int(timeout_s * 10)):
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


async def test_feeds_and_webhooks(stack: LocalStack, receiver: Receiver, tmp_path) -> None:
    dept_a, dept_b = "heat-" + uuid.uuid4().hex[:6], "water-" + uuid.uuid4().hex[:6]
    conn = await asyncpg.connect(stack.postgres.url)
    await migrate(conn, "notifier", MIGRATIONS)
    subs = {}
    for name, dept in (("ok", dept_a), ("flaky", dept_a), ("gone", dept_a), ("down", dept_b)):
        subs[name] = await add_subscription(
            conn,
            SubscriptionIn(
                owner_kind="department", owner=dept, url=receiver.url(name), secrets=[SECRET_A]
            ),
            frozenset({"127.0.0.1"}),
        )
    # grid workers: the case's own worker, a worker-app gateway for every worker, another worker
    worker = "w-" + uuid.uuid4().hex[:6]
    for name, owner in (("worker", worker), ("gateway", "*"), ("other-worker", "w-nobody")):
        subs[name] = await add_subscription(
            conn,
            SubscriptionIn(
                owner_kind="worker", owner=owner, url=receiver.url(name), secrets=[SECRET_A]
            ),
            frozenset({"127.0.0.1"}),
        )
    env = {
        **os.environ,
        **stack.env(),
        "GRIDDISPATCH_NOTIFIER__PORT": str(free_port()),
        "GRIDDISPATCH_NOTIFIER__WEBHOOK_ALLOW": "127.0.0.1",
        "GRIDDISPATCH_NOTIFIER__RETRY_SCHEDULE_S": "0,1,1",
    }
    log = open(tmp_path / "notifier.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", "notifier"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        a, b = routed(dept_a, worker), routed(dept_b)
        ack = wrap(events.CaseAcknowledged(by="w-1"), case_id=a.case_id, producer="intake")
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
        await producer.start()
        for e in (a, b, ack):
            await producer.send_and_wait(
                topics.CASES_LIFECYCLE, e.to_json(), key=e.case_id.encode()
            )
        await producer.stop()

        async def settled() -> bool:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE state = 'pending') AS p, count(*) AS n "
                "FROM notifier.deliveries WHERE subscription_id = ANY($1)",
                list(subs.values()),
            )
            return row["n"] >= 4 and row["p"] == 0 and len(receiver.calls.get("flaky", [])) >= 3

        await wait_until(settled, 60)

        async def workers_told() -> bool:
            return (
                len(receiver.calls.get("worker", [])) >= 2
                and len(receiver.calls.get("gateway", [])) >= 3
            )

        await wait_until(workers_told, 30)
        # a department reading its feed with Kafka's console consumer sees its cases only
        libs = next(stack.kafka.cache.glob("kafka-*/libs"))
        out = await asyncio.to_thread(
            subprocess.run,
            [
                "java",
                "-Xmx128m",
                "-cp",
                f"{libs}/*",
                f"-Dlog4j2.configurationFile={PROJECT_ROOT}/deploy/local/kafka/log4j2.properties",
                "org.apache.kafka.tools.consumer.ConsoleConsumer",
                "--bootstrap-server",
                stack.kafka.bootstrap,
                "--topic",
                topics.department_feed(dept_a),
                "--from-beginning",
                "--max-messages",
                "2",
                "--timeout-ms",
                "20000",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        log.close()
    feed = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [(m["case_id"], m["event_type"]) for m in feed] == [
        (a.case_id, "CaseRouted"),
        (a.case_id, "CaseAcknowledged"),
    ]
    assert b.case_id not in out.stdout
    assert "13900000000" not in out.stdout  # no phone numbers in a feed
    feed_config = await topic_config(stack.kafka.bootstrap, topics.department_feed(dept_a))
    assert feed_config["retention.ms"] == topics.FEED_CONFIG["retention.ms"]  # 14 days
    assert feed[0]["details"]["priority"] == "high"
    # each is the published feed message (docs/schemas/DepartmentFeedMessage.json) …
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            FEED_MESSAGE.validate_json(line)

    # signed webhooks: both events to the healthy endpoint, verifiable by the receiver
    ok = receiver.calls["ok"]
    # (webhooks promise no order between events: an endpoint gets several at once)
    assert sorted(json.loads(body)["event_type"] for _, body in ok) == [
        "CaseAcknowledged",
        "CaseRouted",
    ]
    assert all(verify(SECRET_A, headers, body) for headers, body in ok)
    for _, body in ok:  # … and so is each webhook's body
        FEED_MESSAGE.validate_json(body)
    # the case's grid worker hears of its case only; a gateway hears of every worker's cases
    worker_calls = [json.loads(body) for _, body in receiver.calls["worker"]]
    assert sorted((m["case_id"], m["event_type"]) for m in worker_calls) == [
        (a.case_id, "CaseAcknowledged"),
        (a.case_id, "CaseRouted"),
    ]
    assert all(verify(SECRET_A, h, body) for h, body in receiver.calls["gateway"])
    gateway = {(json.loads(body)["case_id"]) for _, body in receiver.calls["gateway"]}
    assert gateway >= {a.case_id, b.case_id}  # (and other tests' cases on the shared topic)
    assert "other-worker" not in receiver.calls
    # the flaky endpoint: retried after its Retry-After, with the same webhook-id
    flaky_ids = [h["webhook-id"] for h, _ in receiver.calls["flaky"]]
    # the first call got 503 + Retry-After; its retry carried the same webhook-id
    assert len(flaky_ids) == 3
    assert sorted(flaky_ids.count(i) for i in set(flaky_ids)) == [1, 2]
    assert flaky_ids.count(flaky_ids[0]) == 2
    # 410 disables the endpoint
    assert not await conn.fetchval(
        "SELECT active FROM notifier.subscriptions WHERE id = $1", subs["gone"]
    )
    # the dead endpoint: three attempts, then a dead letter an operator can replay
    dead = await conn.fetchrow(
        "SELECT id, attempts, state, last_status FROM notifier.deliveries"
        " WHERE subscription_id = $1",
        subs["down"],
    )
    assert (dead["state"], dead["attempts"], dead["last_status"]) == ("dead", 3, 500)
    assert await replay(conn, dead["id"])
    assert (
        await conn.fetchval("SELECT state FROM notifier.deliveries WHERE id = $1", dead["id"])
        == "pending"
    )
    await conn.close()
