"""Nothing lost, nothing doubled, nothing leaked: the whole pipeline while its parts crash.

Reports flow in over HTTP, as a resident app sends them (each with its own Idempotency-Key,
retried on any failure until answered); every fourth is a grid worker's proxy report with a
resident's contact details and care flags. Meanwhile, one after the other:
- the router is killed (SIGKILL: no shutdown hook runs) in the middle of a batch — it has
  consumed and decided reports, and waits to record them (the test holds a lock on its
  decisions table) — and started again;
- the notifier is killed while webhooks are in flight (the receiver holds them unanswered),
  and started again: those webhooks are sent again, once their lease ends, with the same ids;
- the broker is killed, and started again after a few seconds;
- intake is killed with requests in flight, and started again;
- PostgreSQL is killed, and started again after a few seconds.
In the end every accepted report is one case, routed once, on its department's feed under one
id, and delivered by webhook under one webhook-id. Duplicates on the wire are allowed only as
the same message again (same ids), which a receiver drops. And no contact detail or care flag
of the proxy reports is on the feed, in a webhook, in a service's log or in its metrics."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from services.intake import store as intake_store
from services.intake.auth import Role
from services.notifier.subscriptions import SubscriptionIn, add_subscription
from services.router import democity, store
from shared import topics
from shared.localstack import LocalStack, free_port
from tests.helpers.http import receiving
from tests.helpers.kafka import read_feed, read_topic
from tests.helpers.services import ServiceProcess, fresh_database, migrate_services
from tests.notifier.test_webhooks import SECRET_A, verify

CITY = democity.generate(seed=33, scale="small")
RATE = 10  # reports/s, sent from before the first fault until after the last one

Webhook = tuple[dict[str, str], str]


class Receiver:
    """The roads department's webhook endpoint. While `holding`, it takes requests and does not
    answer them (a slow receiver): the notifier has them in flight."""

    def __init__(self) -> None:
        self.calls: list[Webhook] = []
        self.held: list[str] = []  # webhook-ids of the requests held unanswered
        self.holding = False
        self.release = asyncio.Event()

    async def receive(self, request: Request) -> Response:
        headers, body = dict(request.headers), (await request.body()).decode()
        self.calls.append((headers, body))
        if self.holding:
            self.held.append(headers["webhook-id"])
            await self.release.wait()
        return Response(status_code=204)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, Receiver]]:
    receiver = Receiver()
    async with receiving("/", receiver.receive) as port:
        yield f"http://127.0.0.1:{port}/", receiver
        receiver.release.set()


async def _prepare(db_url: str, webhook_url: str) -> tuple[str, str]:
    """The city, the roads department's webhook, and the keys of a resident app and of a grid
    worker's patrol app."""
    conn = await asyncpg.connect(db_url)
    try:
        await migrate_services(conn)
        await store.load_city(conn, CITY)
        await store.replace_rules(conn, democity.default_rules())
        await add_subscription(
            conn,
            SubscriptionIn(
                owner_kind="department", owner="roads", url=webhook_url, secrets=[SECRET_A]
            ),
            frozenset({"127.0.0.1"}),
        )
        app = await intake_store.create_key(conn, "app", Role.RESIDENT_APP, None)
        patrol = await intake_store.create_key(conn, "patrol", Role.WORKER, "w-patrol")
        return app.token, patrol.token
    finally:
        await conn.close()


def _personal(i: int) -> dict[str, Any]:
    """What a grid worker's proxy report for an elderly resident carries: the resident's contact
    and care flags. None of it may leave GridDispatch."""
    return {
        "reporter": {"name": f"王秀英{i}", "phone": f"139{i:08d}", "email": f"wang{i}@example.cn"},
        "on_behalf_of": f"CARD-{i:06d}",
        "sensitivity": {
            "care_groups": ["very_old", "lost_only_child"],
            "community_correction": True,
        },
    }


class ResidentApp:
    """Sends reports as a phone app does: a fresh Idempotency-Key per report, and the same
    request again, with the same key, after any failure (connection refused or reset, 429,
    503) until it is answered 202. Every fourth report is a grid worker's proxy report with
    personal data (`_personal`)."""

    def __init__(self, base_url: str, key: str, worker_key: str) -> None:
        self.base_url = base_url
        self.key = key
        self.worker_key = worker_key
        self.personal: list[dict[str, Any]] = []  # what the proxy reports carried
        self.case_of: dict[str, str] = {}  # idempotency key → the case id answered
        self.retries = 0
        self.sent = 0  # reports started so far
        self.refused: dict[int, int] = {}  # answers other than 202, by status

    async def report(self, client: httpx.AsyncClient, body: dict[str, Any], token: str) -> None:
        key = str(uuid.uuid4())
        self.sent += 1
        deadline = time.monotonic() + 90
        while True:
            try:
                r = await client.post(
                    "/v1/cases",
                    json=body,
                    headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key},
                )
                if r.status_code == 202:
                    self.case_of[key] = r.json()["case_id"]
                    return
                assert r.status_code in (429, 503), r.text  # anything else is a bug
                assert int(r.headers["Retry-After"]) >= 1  # says when to come back
                self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
            except httpx.TransportError:
                pass  # intake is down or was killed mid-request: was it stored? ask again
            assert time.monotonic() < deadline, f"report {key} never accepted"
            self.retries += 1
            await asyncio.sleep(0.3)

    async def send(self, rate: float, until: asyncio.Event) -> None:
        """Reports at `rate` until `until` is set; returns once every one is answered."""
        grids = [g for g in CITY.grids if g["kind"] == "comprehensive"]
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as client:
            pending = []
            i = 0
            while not until.is_set():
                i += 1
                lat, lon = democity.point_in(grids[i % len(grids)], 0.4, 0.6)
                body: dict[str, Any] = {
                    "category": "roads.pothole",
                    "description": f"路面坑洼 {i}",
                    "location": {"lat": lat, "lon": lon},
                    "channel": "app",
                }
                token = self.key
                if i % 4 == 0:
                    personal = _personal(i)
                    self.personal.append(personal)
                    body |= personal | {"channel": "proxy"}
                    token = self.worker_key
                pending.append(asyncio.create_task(self.report(client, body, token)))
                await asyncio.sleep(1 / rate)
            await asyncio.gather(*pending)


async def _after(app: ResidentApp, seconds: float) -> int:
    """Let reports flow for `seconds`; returns how many were sent so far."""
    await asyncio.sleep(seconds)
    return app.sent


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.1)


async def _faults(
    app: ResidentApp,
    services: dict[str, ServiceProcess],
    stack: LocalStack,
    db_url: str,
    receiver: Receiver,
) -> dict[str, int]:
    """The faults, one after the other, each after reports flowed for a while (and each
    crashed service started again and ready before the next fault); returns how many
    reports had been sent at each."""
    at: dict[str, int] = {}

    async def restart(name: str) -> None:
        await asyncio.to_thread(services[name].start)

    # the router, mid-batch: decided, not recorded, offsets not committed
    await _after(app, 2)
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE router.decisions IN SHARE MODE")  # no INSERT passes

            async def router_waits() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%router.decisions%'"
                    )
                )

            await _until(router_waits, "the router's batch waiting to be recorded")
            at["router killed mid-batch"] = app.sent
            services["router"].crash()
    finally:
        await conn.close()
    await restart("router")

    # the notifier, with webhooks in flight
    await _after(app, 2)
    receiver.holding = True

    async def webhooks_in_flight() -> bool:
        return bool(receiver.held)

    await _until(webhooks_in_flight, "a webhook in flight")
    at["notifier killed with webhooks in flight"] = app.sent
    services["notifier"].crash()
    receiver.holding = False
    receiver.release.set()
    await restart("notifier")

    at["broker killed"] = await _after(app, 2)
    # no grace: SIGKILL right behind SIGTERM, so the broker restarts from an unclean shutdown
    await asyncio.to_thread(stack.kafka.process.stop, 0)
    await asyncio.sleep(3)
    await asyncio.to_thread(stack.kafka.start, lambda _: None)

    at["intake killed"] = await _after(app, 2)
    services["intake"].crash()
    await restart("intake")
    at["database killed"] = await _after(app, 2)
    await asyncio.to_thread(stack.postgres.process.stop, 0)  # crash recovery at the restart
    await asyncio.sleep(3)
    await asyncio.to_thread(stack.postgres.start, lambda _: None)
    await asyncio.sleep(2)  # and more reports after the last fault
    return at


def _ids_by_case(messages: list[dict[str, Any]], id_field: str) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = collections.defaultdict(set)
    for m in messages:
        ids[m["case_id"]].add(m[id_field])
    return ids


async def test_nothing_is_lost_doubled_or_leaked_when_services_broker_and_database_crash(
    stack: LocalStack, receiver: tuple[str, Receiver], tmp_path: Path
) -> None:
    webhook_url, hook = receiver
    calls = hook.calls
    db_url = await fresh_database(stack.postgres.url, "crashes")
    key, worker_key = await _prepare(db_url, webhook_url)
    ports = {name: free_port() for name in ("intake", "router", "escalation", "notifier")}
    env = {
        **stack.env(),
        "GRIDDISPATCH_DATABASE_URL": db_url,
        **{f"GRIDDISPATCH_{name.upper()}__PORT": str(port) for name, port in ports.items()},
        "GRIDDISPATCH_INTAKE__WORKERS": "2",  # a crash takes the whole server down
        "GRIDDISPATCH_NOTIFIER__WEBHOOK_ALLOW": "127.0.0.1",
        "GRIDDISPATCH_OUTBOX__POLL_INTERVAL_S": "0.2",
        # a killed notifier's deliveries are taken again after 5 s, not the default minute
        "GRIDDISPATCH_NOTIFIER__WEBHOOK_TIMEOUT_S": "2",
        "GRIDDISPATCH_NOTIFIER__DELIVERY_LEASE_S": "5",
    }
    services = {
        name: ServiceProcess(
            name,
            env,
            ready_url=f"http://127.0.0.1:{port}/health/ready",  # consuming, serving
            log=tmp_path / f"{name}.log",
        )
        for name, port in ports.items()
    }
    app = ResidentApp(f"http://127.0.0.1:{ports['intake']}", key, worker_key)
    with contextlib.ExitStack() as running:
        for service in services.values():
            running.callback(service.stop)
            service.start()
        faults_done = asyncio.Event()
        sending = asyncio.create_task(app.send(RATE, until=faults_done))
        try:
            fault_at = await _faults(app, services, stack, db_url, hook)
        finally:
            faults_done.set()
            await sending
        total = app.sent
        # every fault struck while reports were flowing, and more came after it
        assert all(0 < n < total for n in fault_at.values()), fault_at

        # every report accepted once: retries answered with the case they had created
        cases = set(app.case_of.values())
        assert len(app.case_of) == total
        assert len(cases) == total
        conn = await asyncpg.connect(db_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM intake.cases") == total
        finally:
            await conn.close()
        assert app.refused.get(503)  # the database's outage was answered, with a Retry-After

        def webhooks_by_case() -> dict[str, set[str]]:
            by_case: dict[str, set[str]] = collections.defaultdict(set)
            for headers, body in list(calls):
                message = json.loads(body)
                if message["event_type"] == "CaseRouted":
                    by_case[message["case_id"]].add(headers["webhook-id"])
            return by_case

        def complete(feed: list[dict[str, Any]]) -> bool:
            routed = {m["case_id"] for m in feed if m["event_type"] == "CaseRouted"}
            return routed >= cases and webhooks_by_case().keys() >= cases

        feed = await read_feed(stack.kafka.bootstrap, "roads", cases, complete, timeout_s=180)
        await asyncio.sleep(3)  # a late repeat would show now
        feed = await read_feed(stack.kafka.bootstrap, "roads", cases, complete, timeout_s=30)
        async with httpx.AsyncClient(follow_redirects=True) as client:
            metrics = {
                f"{name} /metrics": (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                for name, port in ports.items()
            }

    # routed once each: one CaseRouted event per case on the lifecycle topic, whatever was
    # published again after a crash
    lifecycle = [
        json.loads(r.value)
        for r in await read_topic(stack.kafka.bootstrap, topics.CASES_LIFECYCLE, expected=1)
    ]
    routed = [m for m in lifecycle if m["case_id"] in cases and m["event_type"] == "CaseRouted"]
    routed_ids = _ids_by_case(routed, "event_id")
    assert routed_ids.keys() == cases
    assert all(len(ids) == 1 for ids in routed_ids.values())
    reported = [
        json.loads(r.value)
        for r in await read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1)
    ]
    reported_ids = _ids_by_case([m for m in reported if m["case_id"] in cases], "event_id")
    assert reported_ids.keys() == cases
    assert all(len(ids) == 1 for ids in reported_ids.values())

    # on the department's feed under one id each
    feed_routed = [m for m in feed if m["event_type"] == "CaseRouted"]
    feed_ids = _ids_by_case(feed_routed, "feed_id")
    assert feed_ids.keys() == cases
    assert all(len(ids) == 1 for ids in feed_ids.values())
    assert {m["event_id"] for m in feed_routed} == {i for ids in routed_ids.values() for i in ids}

    # one webhook-id per case's routing, whatever was sent again; every one signed
    hooks = webhooks_by_case()
    assert hooks.keys() == cases
    assert all(len(ids) == 1 for ids in hooks.values())
    assert all(verify(SECRET_A, headers, body) for headers, body in calls)
    # the webhooks in flight when the notifier died came again, under their ids
    sent = collections.Counter(headers["webhook-id"] for headers, _ in calls)
    assert hook.held
    assert all(sent[held] >= 2 for held in hook.held), [sent[h] for h in hook.held]
    print(  # what the run went through, for the log
        f"faults at {fault_at}; {app.retries} retried requests ({app.refused} answered); "
        f"{len(routed)} CaseRouted records for {len(cases)} cases on the lifecycle topic; "
        f"{len(feed_routed)} feed messages; {len(calls)} webhooks"
    )

    # every line each service wrote, faults included, is a JSON log record of that service
    for name in ports:
        for line in (tmp_path / f"{name}.log").read_text().splitlines():
            assert json.loads(line)["service"] == name, line

    # nothing personal of the proxy reports left GridDispatch (feed, webhooks) or reached a log
    # line or a metric, faults and retries included
    personal = {"very_old", "lost_only_child", "community_correction"}
    for p in app.personal:
        personal |= {p["on_behalf_of"], *p["reporter"].values()}
    assert len(personal) > 3 * 4
    outputs = {
        **metrics,
        **{f"{name}.log": (tmp_path / f"{name}.log").read_text() for name in ports},
        "feed": json.dumps(feed, ensure_ascii=False),
        "webhooks": "\n".join(body for _, body in calls),
    }
    assert all(outputs.values())
    leaks = [
        (where, value)
        for where, text in outputs.items()
        for value in personal
        if value in text or json.dumps(value)[1:-1] in text  # also as escaped JSON
    ]
    assert not leaks, leaks[:10]
