"""Personal data at intake, on the real service, broker and database: a case closed longer ago
than the retention keeps its history but loses its reporter's contact, whom it was reported for
and its care flags; an open or recently closed case keeps them; a retried Idempotency-Key past
its retention is a new request; an operator erases a resident's data on request, and the other
services are told."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import orjson

from services.intake.retention import purges
from shared import events, topics
from shared.db import create_pool
from shared.events import wrap
from shared.localstack import LocalStack
from shared.retention import Retention
from shared.settings import RetentionSettings
from tests.helpers.cli import run_cli
from tests.helpers.kafka import first_on_topic
from tests.intake.conftest import (
    Keys,
    auth,
    publish_lifecycle,
    report_body,
    routed_event,
    wait_for,
)

PROXY_REPORT = report_body(
    description="王阿姨家暖气不热，室温只有12度。女儿电话13900000007，楼号2026112913912345678",
    channel="patrol",
    on_behalf_of="QQHR-CARD-0042",
    sensitivity={"care_groups": ["elderly_alone"], "community_correction": True},
)


async def _closed_case(client: httpx.AsyncClient, stack: LocalStack, keys: Keys) -> dict[str, Any]:
    r = await client.post("/v1/cases", json=PROXY_REPORT, headers=auth(keys.worker))
    assert r.status_code == 202, r.text
    case_id = r.json()["case_id"]
    await publish_lifecycle(
        stack,
        routed_event(case_id, "heating"),
        wrap(
            events.CaseResolved(by="w-1", note="修好了，回访王阿姨 wang@example.org"),
            case_id=case_id,
            producer="intake",
        ),
        wrap(events.CaseClosed(by="op-1"), case_id=case_id, producer="intake"),
    )
    await wait_for(client, case_id, keys.operator, lambda c: c["status"] == "closed")
    return dict(r.json())


async def _age(stack: LocalStack, sql: str, *args: object) -> None:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _purge(stack: LocalStack) -> dict[str, int]:
    pool = await create_pool(stack.postgres.url, "intake", max_size=2)
    try:
        settings = RetentionSettings(personal_data_days=180, batch_size=2)
        return await Retention(pool, "intake", purges(settings), settings).purge()
    finally:
        await pool.close()


async def test_personal_data_of_long_closed_cases_is_erased(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    old = await _closed_case(client, stack, keys)
    recent = await _closed_case(client, stack, keys)
    r = await client.post("/v1/cases", json=PROXY_REPORT, headers=auth(keys.worker))
    still_open = r.json()["case_id"]
    await _age(
        stack,
        "UPDATE intake.cases SET updated_at = now() - interval '200 days' WHERE case_id = ANY($1)",
        [old["case_id"], still_open],
    )
    await _age(
        stack,
        "UPDATE intake.cases SET updated_at = now() - interval '170 days' WHERE case_id = $1",
        recent["case_id"],
    )

    assert (await _purge(stack))["personal data"] >= 1

    erased = (await client.get(f"/v1/cases/{old['case_id']}", headers=auth(keys.operator))).json()
    assert erased["reporter"] is None
    assert erased["personal_data_erased_at"] is not None
    assert erased["status"] == "closed"  # the case and its history stay
    # contacts and the name the resident gave, written into the texts, go too; other numbers
    # stay
    assert (
        erased["description"] == "***家暖气不热，室温只有12度。女儿电话***，楼号2026112913912345678"
    )
    assert [e["event_type"] for e in erased["timeline"]][-1] == "CaseClosed"
    [resolved] = [e for e in erased["timeline"] if e["event_type"] == "CaseResolved"]
    assert resolved["details"]["note"] == "修好了，回访*** ***"
    by_token = await client.get(
        f"/v1/cases/{old['case_id']}", headers={"X-Tracking-Token": old["tracking_token"]}
    )
    assert by_token.json()["reporter"] is None
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        row = await conn.fetchrow(
            "SELECT reporter, on_behalf_of, sensitivity::text AS s FROM intake.cases "
            "WHERE case_id = $1",
            old["case_id"],
        )
        kept = await conn.fetch(
            "SELECT reporter, on_behalf_of, sensitivity::text AS s, personal_data_erased_at "
            "FROM intake.cases WHERE case_id = ANY($1)",
            [recent["case_id"], still_open],
        )
    finally:
        await conn.close()
    assert (row["reporter"], row["on_behalf_of"], row["s"]) == (None, None, "{}")
    assert len(kept) == 2
    for k in kept:
        assert k["on_behalf_of"] == "QQHR-CARD-0042"
        assert "13912345678" in k["reporter"]
        assert "community_correction" in k["s"]
        assert k["personal_data_erased_at"] is None

    for case_id in (recent["case_id"], still_open):
        view = (await client.get(f"/v1/cases/{case_id}", headers=auth(keys.operator))).json()
        assert view["reporter"]["phone"] == "13912345678"
        assert view["personal_data_erased_at"] is None
        assert "13900000007" in view["description"]
    kept_notes = (
        await client.get(f"/v1/cases/{recent['case_id']}", headers=auth(keys.operator))
    ).json()["timeline"]
    assert any("wang@example.org" in str(e["details"]) for e in kept_notes)


async def test_an_idempotency_key_past_its_retention_is_a_new_request(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}", **auth(keys.resident_app)}
    first = await client.post("/v1/cases", json=report_body(), headers=key)
    again = await client.post("/v1/cases", json=report_body(), headers=key)
    assert again.json()["case_id"] == first.json()["case_id"]

    await _age(
        stack,
        "UPDATE intake.idempotency_keys SET created_at = now() - interval '25 hours' "
        "WHERE idem_key = $1",
        key["Idempotency-Key"],
    )
    assert (await _purge(stack))["idempotency keys"] >= 1
    later = await client.post("/v1/cases", json=report_body(), headers=key)
    assert later.status_code == 202
    assert later.json()["case_id"] != first.json()["case_id"]


async def _announced(stack: LocalStack, case_id: str) -> dict[str, Any]:
    """The PersonalDataErased event of `case_id` on cases.lifecycle."""
    record = await first_on_topic(
        stack.kafka.bootstrap,
        topics.CASES_LIFECYCLE,
        lambda r: (
            r.key == case_id.encode()
            and orjson.loads(r.value)["event_type"] == "PersonalDataErased"
        ),
    )
    return dict(orjson.loads(record.value))


async def test_an_operator_erases_a_residents_personal_data_on_request(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    r = await client.post("/v1/cases", json=PROXY_REPORT, headers=auth(keys.worker))
    case_id = r.json()["case_id"]
    await publish_lifecycle(stack, routed_event(case_id, "heating"))
    await wait_for(client, case_id, keys.operator, lambda c: c["status"] == "routed")
    url = f"/v1/cases/{case_id}/erasure"
    body = {"reason": "王阿姨（13900000002）经12345热线申请删除，2026-11-29"}

    assert (await client.post(url, json=body)).status_code == 401
    wrong_token = await client.post(
        url, json=body, headers={"X-Tracking-Token": "not-the-right-token-0000"}
    )
    assert wrong_token.status_code == 403
    for key in (keys.heating, keys.worker, keys.resident_app):
        refused = await client.post(url, json=body, headers=auth(key))
        assert refused.status_code == 403, refused.text
    unknown = await client.post(
        "/v1/cases/no-such-case/erasure", json=body, headers=auth(keys.operator)
    )
    assert unknown.status_code == 404
    blank = await client.post(url, json={"reason": "  "}, headers=auth(keys.operator))
    assert blank.status_code == 422
    assert blank.json()["errors"][0]["field"] == "reason"
    view = (await client.get(f"/v1/cases/{case_id}", headers=auth(keys.operator))).json()
    assert view["reporter"]["phone"] == "13912345678"  # nothing erased by the refusals

    accepted = await client.post(url, json=body, headers=auth(keys.operator))
    assert accepted.status_code == 202, accepted.text
    view = (await client.get(f"/v1/cases/{case_id}", headers=auth(keys.operator))).json()
    assert view["reporter"] is None
    assert view["personal_data_erased_at"] == accepted.json()["erased_at"]
    assert view["status"] == "routed"  # the case goes on
    last = view["timeline"][-1]
    assert last["event_type"] == "PersonalDataErased"
    assert last["details"]["reason"] == "***（***）经12345热线申请删除，2026-11-29"
    assert "13900000007" not in view["description"]
    # the department sees that it happened, not the request's words
    seen = (await client.get(f"/v1/cases/{case_id}", headers=auth(keys.heating))).json()
    assert seen["timeline"][-1]["event_type"] == "PersonalDataErased"
    assert seen["timeline"][-1]["details"] == {}
    assert seen["reporter"] is None
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        row = await conn.fetchrow(
            "SELECT on_behalf_of, sensitivity::text AS s FROM intake.cases WHERE case_id = $1",
            case_id,
        )
    finally:
        await conn.close()
    assert (row["on_behalf_of"], row["s"]) == (None, "{}")
    # the other services' copies follow the event
    event = await _announced(stack, case_id)
    assert event["event_id"] == accepted.json()["event_id"]
    assert event["payload"]["by"]
    assert "13912345678" not in orjson.dumps(event).decode()
    assert "13900000002" not in orjson.dumps(event).decode()  # the request quoted it


async def test_griddispatch_privacy_erase_does_the_same_from_the_command_line(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    r = await client.post("/v1/cases", json=PROXY_REPORT, headers=auth(keys.worker))
    case_id = r.json()["case_id"]

    missing = run_cli(stack, "privacy", "erase", "no-such-case", "--reason", "申请")
    assert missing.returncode == 1
    assert "no case no-such-case" in missing.stderr
    blank = run_cli(stack, "privacy", "erase", case_id, "--reason", " ")
    assert blank.returncode == 2

    done = run_cli(stack, "privacy", "erase", case_id, "--reason", "窗口申请, 2026-11-29")
    assert done.returncode == 0, done.stderr
    view = (await client.get(f"/v1/cases/{case_id}", headers=auth(keys.operator))).json()
    assert view["reporter"] is None
    assert view["timeline"][-1]["details"]["by"].startswith("cli:")
    event = await _announced(stack, case_id)
    assert event["payload"]["reason"] == "窗口申请, 2026-11-29"


async def test_a_resident_erases_their_own_data_with_the_tracking_token(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    r = await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
    case_id, token = r.json()["case_id"], r.json()["tracking_token"]
    other = await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
    body = {"reason": "在应用内申请删除"}
    # another case's token erases nothing
    refused = await client.post(
        f"/v1/cases/{other.json()['case_id']}/erasure",
        json=body,
        headers={"X-Tracking-Token": token},
    )
    assert refused.status_code == 403
    department = await client.post(
        f"/v1/cases/{case_id}/erasure",
        json=body,
        headers={"X-Tracking-Token": token, **auth(keys.heating)},
    )
    assert department.status_code == 403  # a department's key is no resident's
    done = await client.post(  # through the resident's app, which passes the token on
        f"/v1/cases/{case_id}/erasure",
        json=body,
        headers={"X-Tracking-Token": token, **auth(keys.resident_app)},
    )
    assert done.status_code == 202, done.text
    mine = (await client.get(f"/v1/cases/{case_id}", headers={"X-Tracking-Token": token})).json()
    assert mine["reporter"] is None
    assert mine["timeline"][-1]["details"]["by"] == "resident"
    theirs = await client.get(f"/v1/cases/{other.json()['case_id']}", headers=auth(keys.operator))
    assert theirs.json()["reporter"]["phone"] == "13912345678"
    assert (await _announced(stack, case_id))["payload"]["by"] == "resident"
