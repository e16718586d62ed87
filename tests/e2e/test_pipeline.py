"""The whole pipeline: intake, router, escalation and notifier as separate processes on the
real broker and database, with a generated city. Reports go in over HTTP; the department's
feed and signed webhooks come out; a stalled case escalates; acknowledging stops it; a
resident's erasure request reaches the notifier and the department; resolving tells the
resident by SMS, and the case nobody verifies is closed when its verification window ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
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
from services.router.rules import Rule
from shared.ids import case_reference
from shared.localstack import LocalStack, free_port
from tests.helpers.http import receiving
from tests.helpers.kafka import read_feed
from tests.helpers.prometheus import Prometheus, running_prometheus
from tests.helpers.services import migrate_services, running_service
from tests.notifier.test_webhooks import SECRET_A, verify
from tests.ops import monitoring

CITY = democity.generate(seed=21, scale="small")
FAST_RULE = Rule.model_validate(
    {
        "id": "e2e-fast-potholes",
        "match": {"category": "roads.pothole"},
        "route": {"department": "roads", "acknowledge_hours": 0.0008},
    }
)  # about 3 seconds


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], str]]]]:
    calls: list[tuple[dict[str, str], str]] = []

    async def receive(request: Request) -> Response:
        calls.append((dict(request.headers), (await request.body()).decode()))
        return Response(status_code=204)

    async with receiving("/", receive) as port:
        yield f"http://127.0.0.1:{port}/", calls


@pytest.fixture
async def sms_gateway() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP SMS gateway keeping the messages it is asked to send."""
    texts: list[dict[str, Any]] = []

    async def receive(request: Request) -> Response:
        texts.append(await request.json())
        return Response(status_code=202)

    async with receiving("/sms", receive) as port:
        yield f"http://127.0.0.1:{port}/sms", texts


async def test_reports_flow_from_http_to_department_feeds_webhooks_and_escalation(
    stack: LocalStack, hook, sms_gateway, tmp_path
) -> None:
    url, calls = hook
    sms_url, texts = sms_gateway
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await migrate_services(conn)
        await store.load_city(conn, CITY)
        await store.replace_rules(conn, [FAST_RULE, *democity.default_rules()])
        key = (await intake_store.create_key(conn, "e2e", Role.RESIDENT_APP, None)).token
        operator_key = (await intake_store.create_key(conn, "ops", Role.OPERATOR, None)).token
        roads_key = (await intake_store.create_key(conn, "roads", Role.DEPARTMENT, "roads")).token
        await add_subscription(
            conn,
            SubscriptionIn(owner_kind="department", owner="roads", url=url, secrets=[SECRET_A]),
            frozenset({"127.0.0.1"}),
        )
    finally:
        await conn.close()
    ports = {name: free_port() for name in ("intake", "router", "escalation", "notifier")}
    intake_port = ports["intake"]
    env = {
        **stack.env(),
        **{f"GRIDDISPATCH_{name.upper()}__PORT": str(port) for name, port in ports.items()},
        "GRIDDISPATCH_METRICS_INTERVAL_S": "1",
        "GRIDDISPATCH_NOTIFIER__WEBHOOK_ALLOW": "127.0.0.1",
        "GRIDDISPATCH_ESCALATION__STEP_S": "1",
        "GRIDDISPATCH_ESCALATION__MAX_REPEATS": "1000",  # an unanswered case never goes quiet
        "GRIDDISPATCH_ESCALATION__REPEAT_EVERY_S": "0.5",
        "GRIDDISPATCH_INTAKE__VERIFY_WINDOW_S": "2",
        "GRIDDISPATCH_NOTIFIER__SMS_GATEWAY_URL": sms_url,
        "GRIDDISPATCH_NOTIFIER__QUIET_HOURS": "07:00-07:00",  # none: the test runs at any hour
        "GRIDDISPATCH_OUTBOX__POLL_INTERVAL_S": "0.2",
    }
    base = f"http://127.0.0.1:{intake_port}"
    with contextlib.ExitStack() as services:
        prometheus = services.enter_context(
            running_prometheus(
                {f"griddispatch-{name}": port for name, port in ports.items()},
                tmp_path / "prometheus",
            )
        )
        services.enter_context(
            running_service(
                "intake", env, ready_url=f"{base}/health/ready", log=tmp_path / "intake.log"
            )
        )
        for name in ("router", "escalation", "notifier"):
            services.enter_context(running_service(name, env, log=tmp_path / f"{name}.log"))
        grids = [g for g in CITY.grids if g["kind"] == "comprehensive"]
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            ids = []
            for i in range(3):
                lat, lon = democity.point_in(grids[10 + i], 0.9, 0.9)
                r = await client.post(
                    "/v1/cases",
                    headers={"Authorization": f"Bearer {key}"},
                    json={
                        "category": "roads.pothole",
                        "description": f"路面坑洼 {uuid.uuid4()}",
                        "location": {"lat": lat, "lon": lon},
                        "reporter": {"phone": f"1391234567{i}", "consent_to_notify": True},
                    },
                )
                assert r.status_code == 202, r.text
                ids.append(r.json()["case_id"])
            stalled, handled, other = ids

            # every case routed, in intake's read model; the department acknowledges one at once
            for cid in ids:
                for _ in range(300):
                    view = await client.get(
                        f"/v1/cases/{cid}", headers={"Authorization": f"Bearer {roads_key}"}
                    )
                    if view.status_code == 200 and view.json()["status"] == "routed":
                        break
                    await asyncio.sleep(0.1)
                assert view.status_code == 200, view.text
                assert view.json()["department"] == "roads"
                if cid == handled:
                    r = await client.post(
                        f"/v1/cases/{handled}/events",
                        json={"action": "acknowledge"},
                        headers={"Authorization": f"Bearer {roads_key}"},
                    )
                    assert r.status_code == 202

            grace = timedelta(seconds=5)  # the acknowledgement reaches escalation via Kafka

            def at(m: dict[str, Any]) -> datetime:
                return datetime.fromisoformat(m["occurred_at"])

            def complete(seen: list[dict[str, Any]]) -> bool:
                acks = [
                    m
                    for m in seen
                    if m["case_id"] == handled and m["event_type"] == "CaseAcknowledged"
                ]
                if not acks:
                    return False
                later = [
                    m
                    for m in seen
                    if m["case_id"] == other
                    and m["event_type"] == "CaseEscalated"
                    and at(m) > at(acks[0]) + grace
                ]
                types = {(m["case_id"], m["event_type"]) for m in seen}
                return bool(later) and (stalled, "CaseEscalated") in types

            feed = await read_feed(stack.kafka.bootstrap, "roads", set(ids), until=complete)
            by_case: dict[str, list[dict[str, Any]]] = {}
            for m in feed:
                by_case.setdefault(m["case_id"], []).append(m)
            # each case's feed starts with its routing; unanswered cases keep climbing
            assert all(msgs[0]["event_type"] == "CaseRouted" for msgs in by_case.values())
            assert "CaseEscalated" in [m["event_type"] for m in by_case[stalled]]
            # acknowledging stops it: the untouched case still escalates well after the
            # acknowledgement, the acknowledged one no longer does
            [ack] = [m for m in by_case[handled] if m["event_type"] == "CaseAcknowledged"]
            assert [
                m
                for m in by_case[other]
                if m["event_type"] == "CaseEscalated" and at(m) > at(ack) + grace
            ]
            assert not [
                m
                for m in by_case[handled]
                if m["event_type"] == "CaseEscalated" and at(m) > at(ack) + grace
            ]
            # the escalation reaches intake's read model too
            for _ in range(100):
                level = (
                    await client.get(
                        f"/v1/cases/{stalled}", headers={"Authorization": f"Bearer {roads_key}"}
                    )
                ).json()["escalation_level"]
                if level >= 1:
                    break
                await asyncio.sleep(0.1)
            assert level >= 1

            # a resident asks for their data to be erased: every service's copy goes, and the
            # department is told on its feed
            r = await client.post(
                f"/v1/cases/{other}/erasure",
                json={"reason": "12345热线申请"},
                headers={"Authorization": f"Bearer {operator_key}"},
            )
            assert r.status_code == 202, r.text
            erased = await read_feed(
                stack.kafka.bootstrap,
                "roads",
                {other},
                until=lambda seen: any(m["event_type"] == "PersonalDataErased" for m in seen),
            )
            assert [m for m in erased if m["event_type"] == "PersonalDataErased"]
            contacts = await _resident_contacts(stack, ids)
            assert contacts[other] == (None, None)
            assert contacts[handled][1] == "13912345671"

            # the department asks for more time for the case it handles, an operator grants it
            due = datetime.fromisoformat(
                (
                    await client.get(
                        f"/v1/cases/{handled}", headers={"Authorization": f"Bearer {roads_key}"}
                    )
                ).json()["resolve_by"]
            )
            for key, body in (
                (
                    roads_key,
                    {
                        "action": "request_extension",
                        "until": (due + timedelta(days=2)).isoformat(),
                        "reason": "需封路施工，已报交警",
                    },
                ),
                (operator_key, {"action": "extend", "reason": "同意"}),
            ):
                r = await client.post(
                    f"/v1/cases/{handled}/events",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 202, r.text

            # the stalled case is the same pothole: the department merges it into the one
            # it handles, and it stops climbing the ladder
            r = await client.post(
                f"/v1/cases/{stalled}/events",
                json={"action": "merge", "into": handled},
                headers={"Authorization": f"Bearer {roads_key}"},
            )
            assert r.status_code == 202, r.text

            # the department resolves the acknowledged case and nobody verifies it: when the
            # verification window ends (2 s here) escalation says so, intake closes the case,
            # and the department's feed carries the closing, marked automatic; the merged case
            # is resolved with it, and closed the same way
            r = await client.post(
                f"/v1/cases/{handled}/events",
                json={"action": "resolve", "note": "已修补"},
                headers={"Authorization": f"Bearer {roads_key}"},
            )
            assert r.status_code == 202, r.text
            closed = await read_feed(
                stack.kafka.bootstrap,
                "roads",
                {handled, stalled},
                until=lambda seen: (
                    {m["case_id"] for m in seen if m["event_type"] == "CaseClosed"}
                    == {handled, stalled}
                ),
            )
            [merging] = [m for m in closed if m["event_type"] == "CaseMerged"]
            assert (merging["case_id"], merging["details"]["into"]) == (stalled, handled)
            assert not [
                m
                for m in closed
                if m["case_id"] == stalled
                and m["event_type"] == "CaseEscalated"
                and at(m) > at(merging) + grace
            ]
            [follow] = [
                m for m in closed if m["case_id"] == stalled and m["event_type"] == "CaseResolved"
            ]
            assert follow["details"]["follows"] == handled
            closed = [m for m in closed if m["case_id"] == handled]
            [closing] = [m for m in closed if m["event_type"] == "CaseClosed"]
            assert closing["details"] == {"automatic": True}
            resolved_at = next(at(m) for m in closed if m["event_type"] == "CaseResolved")
            assert at(closing) >= resolved_at + timedelta(seconds=2)
            view = await client.get(
                f"/v1/cases/{handled}", headers={"Authorization": f"Bearer {roads_key}"}
            )
            assert view.json()["status"] == "closed"
            # and the resident who consented heard of the extension, the resolution and the
            # closing, by SMS
            told = await _sms_to(texts, "13912345671", handled, until="自动结案")
            assert [t for t in told if "处理完毕" in t], texts
            assert [t for t in told if "需要更多时间" in t], texts
            assert [m for m in closed if m["event_type"] == "CaseDeadlineExtended"]
            # the merged case's resident heard it was merged, and then of the repair
            told = await _sms_to(texts, "13912345670", stalled, until="处理完毕")
            assert [t for t in told if "合并办理" in t], texts
            # while it stalled, whoever it was escalated to up the ladder was texted, at the
            # contact its routing resolved (the demo city's grid leaders and offices)
            ladder = [
                t for t in texts if "上报至您" in t["text"] and case_reference(stalled) in t["text"]
            ]
            assert ladder, texts
            assert not {t["to"] for t in ladder} & {"13912345670", "13912345671"}
        # signed webhooks for every case
        for _ in range(100):
            if {json.loads(b)["case_id"] for _, b in calls} >= set(ids):
                break
            await asyncio.sleep(0.1)
        # Prometheus scraped all four services throughout: the dashboards' queries run and
        # their key panels show this run; the alert rules are loaded and healthy
        await asyncio.to_thread(assert_monitoring_sees_the_run, prometheus)
    assert {json.loads(b)["case_id"] for _, b in calls} >= {stalled, handled, other}
    assert all(verify(SECRET_A, h, b) for h, b in calls)


async def _sms_to(
    texts: list[dict[str, Any]], phone: str, case_id: str, *, until: str
) -> list[str]:
    """The SMS sent to `phone` about `case_id`, once one of them says `until` (10 s at most)."""
    for _ in range(100):
        told = [
            t["text"] for t in texts if t["to"] == phone and case_reference(case_id) in t["text"]
        ]
        if any(until in t for t in told):
            return told
        await asyncio.sleep(0.1)
    raise AssertionError(f"no SMS saying {until!r} to {phone}: {texts}")


async def _resident_contacts(
    stack: LocalStack, case_ids: list[str]
) -> dict[str, tuple[str | None, str | None]]:
    """The notifier's copy of each case's resident contact (email, phone)."""
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        rows = await conn.fetch(
            "SELECT case_id, email, phone FROM notifier.residents WHERE case_id = ANY($1)",
            case_ids,
        )
    finally:
        await conn.close()
    return {r["case_id"]: (r["email"], r["phone"]) for r in rows}


# Panels that must show data after the run above (the others need ratings, resolutions in
# time, dead letters or failures, which this run does not produce).
KEY_PANELS = {
    "Resolved cases closed unverified",
    "Response rate",
    "Reports per minute by channel",
    "Routing outcomes per minute",
    "Dispatch latency by department",
    "Warnings and SLA breaches",
    "Escalations by level",
    "Open backlog per department",
    "Waiting in triage",
    "Services up",
    "Messages processed per second",
    "Consumer lag",
    "Outbox backlog",
    "Timer lateness",
    "Pending timers",
    "Deliveries by result",
}


def assert_monitoring_sees_the_run(prometheus: Prometheus) -> None:
    queries = monitoring.panel_queries()
    deadline = time.monotonic() + 30
    while True:
        # every query of every panel is valid here; a panel shows data when any query does
        shown = {title for _, title, expr in queries if prometheus.query(expr)}
        if shown >= KEY_PANELS or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not KEY_PANELS - shown, f"key panels without data: {sorted(KEY_PANELS - shown)}"
    up = {t["labels"]["job"] for t in prometheus.targets() if t["health"] == "up"}
    assert up == {f"griddispatch-{n}" for n in ("intake", "router", "escalation", "notifier")}
    rules = prometheus.rules()
    alerts = [r["alert"] for g in monitoring.rule_groups()["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in rules) == sorted(alerts)  # every rule of deploy/ loaded
    assert all(r["health"] == "ok" for r in rules), rules
    # over the whole run, not a rate: the three routings are timed in the run's first seconds,
    # and a series first scraped at its final count shows no increase to a rate
    [p99] = prometheus.query(
        "histogram_quantile(0.99, sum by (le) "
        '(griddispatch_dispatch_latency_seconds_bucket{department="roads"}))'
    )
    assert float(p99["value"][1]) > 0
