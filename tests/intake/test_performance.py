"""The period's rates: the arithmetic (pure), and the report over real case timelines (the
running intake, its read model fed through the real broker, the HTTP API and the CLI)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.intake import performance, store
from services.intake.auth import Role
from services.intake.performance import TOTAL, CaseRecord, assess
from shared import events
from shared.citytime import CITY_TIME
from shared.events import wrap
from shared.localstack import LocalStack
from tests.helpers.cli import run_cli
from tests.intake.conftest import (
    Keys,
    auth,
    publish_lifecycle,
    report_body,
    routed_event,
    wait_for,
)

T0 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def _case(key: str | None = "heating", **facts: Any) -> CaseRecord:
    base: dict[str, Any] = {
        "key": key,
        "reported_at": T0,
        "acknowledged_at": None,
        "acknowledge_missed": False,
        "resolved_at": None,
        "resolve_missed": False,
        "rating": None,
        "reopened": 0,
        "closed_unverified": False,
        "open": True,
    }
    return CaseRecord(**{**base, **facts})


def test_the_three_rates_count_what_is_settled_and_leave_what_is_pending() -> None:
    rows = assess(
        [
            _case(acknowledged_at=T0 + timedelta(minutes=10)),  # on time, still open
            _case(  # late acknowledgement: missed, though acknowledged
                acknowledged_at=T0 + timedelta(minutes=90),
                acknowledge_missed=True,
                resolved_at=T0 + timedelta(hours=5),
                rating=5,
                open=False,
            ),
            _case(  # never acknowledged, escalated: missed both
                acknowledge_missed=True, resolve_missed=True
            ),
            _case(  # nothing yet: counted as a case, in no rate
            ),
            _case(
                acknowledged_at=T0 + timedelta(minutes=30),
                resolved_at=T0 + timedelta(hours=3),
                rating=2,
                reopened=2,
                open=False,
            ),
            _case(
                acknowledged_at=T0 + timedelta(minutes=20),
                resolved_at=T0 + timedelta(hours=9),
                resolve_missed=True,
                closed_unverified=True,
                open=False,
            ),
        ]
    )
    assert [r.key for r in rows] == ["heating", TOTAL]
    heating = rows[0]
    assert (heating.cases, heating.open) == (6, 3)
    assert (heating.acknowledged_on_time, heating.acknowledge_missed) == (3, 2)
    assert heating.response_rate == pytest.approx(3 / 5)
    assert (heating.resolved_on_time, heating.resolve_missed) == (2, 2)
    assert heating.resolution_rate == pytest.approx(2 / 4)
    assert (heating.rated, heating.satisfied, heating.satisfaction_rate) == (2, 1, 0.5)
    assert (heating.reopened, heating.closed_unverified) == (2, 1)
    assert heating.median_minutes_to_acknowledge == pytest.approx(25)  # 10, 20, 30, 90
    assert heating.median_hours_to_resolve == pytest.approx(5)  # 3, 5, 9
    assert rows[1].cases == 6


def test_rows_are_sorted_with_unrouted_cases_last_and_a_total() -> None:
    rows = assess([_case("water"), _case(None), _case("gas", rating=4), _case("water")])
    assert [(r.key, r.cases) for r in rows] == [("gas", 1), ("water", 2), (None, 1), (TOTAL, 4)]
    assert rows[0].satisfaction_rate == 1.0
    assert rows[1].response_rate is None  # nothing settled: no rate, not 0 %
    assert rows[1].median_minutes_to_acknowledge is None
    assert assess([]) == [assess([])[0]]  # only the total
    assert assess([])[0].cases == 0


def test_a_period_is_made_of_the_citys_days() -> None:
    start, end = performance.period(date(2026, 11, 1), date(2026, 12, 1))
    assert start == datetime(2026, 10, 31, 16, 0, tzinfo=UTC)  # midnight in Qiqihar
    assert end == datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
    assert performance.month("2026-12") == (date(2026, 12, 1), date(2027, 1, 1))
    with pytest.raises(ValueError, match="ends before it begins"):
        performance.period(date(2026, 11, 2), date(2026, 11, 2))
    with pytest.raises(ValueError, match="at most 366 days"):
        performance.period(date(2025, 1, 1), date(2026, 11, 2))
    with pytest.raises(ValueError, match="lies between"):
        performance.period(date(1, 1, 1), date(1, 1, 2))
    with pytest.raises(ValueError, match="is not a month"):
        performance.month("2026-13")


# --- over real case timelines ---------------------------------------------------------------


def _escalated(case_id: str, deadline: str) -> events.Envelope:
    return wrap(
        events.CaseEscalated(
            deadline=deadline,
            due_at=datetime.now(UTC),
            level=1,
            to=events.EscalationStep(level=1, role="grid_leader", name="李网格长", contact="138"),
        ),
        case_id=case_id,
        producer="escalation",
    )


async def test_a_department_reads_its_own_rates_from_its_cases(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys, tmp_path: Any
) -> None:
    dept = f"perf-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        own = (await store.create_key(conn, "perf test", Role.DEPARTMENT, dept)).token
    finally:
        await conn.close()

    async def report() -> dict[str, Any]:
        r = await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
        assert r.status_code == 202, r.text
        accepted: dict[str, Any] = r.json()
        await publish_lifecycle(stack, routed_event(accepted["case_id"], dept))
        await wait_for(client, accepted["case_id"], own, lambda c: c["status"] == "routed")
        return accepted

    async def step(case_id: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        r = await client.post(f"/v1/cases/{case_id}/events", json=body, headers=headers)
        assert r.status_code == 202, r.text

    smooth, late, pending = await report(), await report(), await report()
    # the same problem as smooth, merged into it: resolved with it, counted for it only
    duplicate = await report()
    await step(duplicate["case_id"], {"action": "merge", "into": smooth["case_id"]}, auth(own))
    # pending's resident presses for it
    await step(
        pending["case_id"], {"action": "urge"}, {"X-Tracking-Token": pending["tracking_token"]}
    )
    # smooth: acknowledged and resolved in time, closed, rated 5
    for body in ({"action": "acknowledge"}, {"action": "resolve", "note": "修好了"}):
        await step(smooth["case_id"], body, auth(own))
    await step(smooth["case_id"], {"action": "close"}, auth(own))
    await step(
        smooth["case_id"],
        {"action": "rate", "rating": 5},
        {"X-Tracking-Token": smooth["tracking_token"]},
    )
    # late: escalated on both deadlines, resolved, then closed as nobody verified it
    await publish_lifecycle(stack, _escalated(late["case_id"], "acknowledge"))
    await wait_for(client, late["case_id"], own, lambda c: c["escalation_level"] >= 1)
    await step(late["case_id"], {"action": "acknowledge"}, auth(own))
    await publish_lifecycle(stack, _escalated(late["case_id"], "resolve"))
    await wait_for(
        client,
        late["case_id"],
        own,
        lambda c: sum(e["event_type"] == "CaseEscalated" for e in c["timeline"]) == 2,
    )
    await step(late["case_id"], {"action": "resolve", "note": "修好了"}, auth(own))
    view = await wait_for(client, late["case_id"], own, lambda c: c["status"] == "resolved")
    [resolution] = [e for e in view["timeline"] if e["event_type"] == "CaseResolved"]
    lapse = wrap(
        events.CaseVerificationLapsed(
            resolved_at=datetime.fromisoformat(resolution["occurred_at"]),
            due_at=datetime.now(UTC),
        ),
        case_id=late["case_id"],
        producer="escalation",
    )
    await publish_lifecycle(stack, lapse)
    await wait_for(client, late["case_id"], own, lambda c: c["status"] == "closed")

    today = datetime.now(CITY_TIME).date()
    period = {"from": str(today), "to": str(today + timedelta(days=1))}
    r = await client.get("/v1/performance", params=period, headers=auth(own))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["department"] == dept
    [row] = body["rows"]
    assert row == {**body["total"], "key": dept}
    assert (row["cases"], row["open"]) == (4, 1)
    assert (row["acknowledged_on_time"], row["acknowledge_missed"]) == (1, 1)
    assert (row["resolved_on_time"], row["resolve_missed"]) == (1, 1)
    assert (row["response_rate"], row["resolution_rate"]) == (0.5, 0.5)
    assert (row["rated"], row["satisfied"], row["satisfaction_rate"]) == (1, 1, 1.0)
    assert row["closed_unverified"] == 1
    assert row["urged"] == 1
    assert pending["case_id"] not in r.text  # figures only, no case ids

    # by category, and for another department (forbidden) or a resident (forbidden)
    by_category = await client.get(
        "/v1/performance", params={**period, "by": "category"}, headers=auth(own)
    )
    assert [(x["key"], x["cases"]) for x in by_category.json()["rows"]] == [("heating.outage", 4)]
    other = await client.get(
        "/v1/performance", params={**period, "department": "heating"}, headers=auth(own)
    )
    assert other.status_code == 403
    assert (
        await client.get("/v1/performance", params=period, headers=auth(keys.resident_app))
    ).status_code == 403
    assert (await client.get("/v1/performance", params=period)).status_code == 401
    backwards = await client.get(
        "/v1/performance", params={"from": period["to"], "to": period["from"]}, headers=auth(own)
    )
    assert backwards.status_code == 422
    assert backwards.json()["errors"][0]["field"] == "to"
    # an operator reads the same department's figures on the command line, as CSV
    done = run_cli(
        stack,
        "performance",
        "show",
        "--from",
        period["from"],
        "--to",
        period["to"],
        "--department",
        dept,
        "--csv",
    )
    assert done.returncode == 0, done.stderr
    lines = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(x["department"], x["cases"], x["response_rate"]) for x in lines] == [
        (dept, "4", "0.5000"),
        (TOTAL, "4", "0.5000"),
    ]
