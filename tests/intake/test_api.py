"""The JSON API of a running intake process, on the real broker and database."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.intake import store
from shared import topics
from shared.catalogue import Catalogue, Category, CategoryDeadlines
from shared.localstack import LocalStack
from tests.helpers.kafka import read_topic
from tests.intake.conftest import (
    Keys,
    auth,
    publish_lifecycle,
    report_body,
    reported_and_routed,
    routed_event,
    wait_for,
)


def _for_case(records, case_id: str) -> list[dict[str, Any]]:
    return [json.loads(r.value) for r in records if r.key == case_id.encode()]


async def test_report_is_accepted_durably_and_published_to_cases_intake(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    r = await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "reported"
    assert body["status_url"].endswith(f"/v1/cases/{body['case_id']}")
    assert len(body["tracking_token"]) >= 20

    records = await read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1, settle_s=2)
    [env] = _for_case(records, body["case_id"])
    assert env["event_type"] == "CaseReported"
    assert env["producer"] == "intake"
    assert env["payload"]["category"] == "heating.outage"
    assert env["payload"]["attributes"] == {"whole_building": "yes"}

    # the resident follows the case with the tracking token, and sees their own contact
    mine = await client.get(
        f"/v1/cases/{body['case_id']}", headers={"X-Tracking-Token": body["tracking_token"]}
    )
    assert mine.status_code == 200
    assert mine.json()["reporter"]["phone"] == "13912345678"
    assert [e["event_type"] for e in mine.json()["timeline"]] == ["CaseReported"]


async def test_idempotent_retry_returns_the_first_answer_and_creates_nothing(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    headers = {**auth(keys.resident_app), "Idempotency-Key": "retry-7f3a"}
    first = await client.post("/v1/cases", json=report_body(), headers=headers)
    second = await client.post("/v1/cases", json=report_body(), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    records = await read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1, settle_s=2)
    assert len(_for_case(records, first.json()["case_id"])) == 1

    changed = await client.post(
        "/v1/cases", json=report_body(description="another issue"), headers=headers
    )
    assert changed.status_code == 422
    assert changed.json()["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (report_body(description="x" * 4001), "description", "at most 4000"),
        (report_body(description="   "), "description", "at least 1"),
        (
            report_body(media_urls=[f"https://img.example/{i}.jpg" for i in range(6)]),
            "media_urls",
            "at most 5",
        ),
        (report_body(media_urls=["not a url"]), "media_urls.0", "URL"),
        (report_body(location={"lat": 91, "lon": 123.9}), "location.lat", "less than or equal"),
        (report_body(location={"lat": 47.3}), "location", "lat and lon must be given together"),
        (report_body(location={}), "location", "give a coordinate"),
        (report_body(category="no.such-thing"), "category", "unknown category"),
        (
            report_body(attributes={"whole_building": "maybe"}),
            "attributes.whole_building",
            "must be one of",
        ),
        (report_body(attributes={}), "attributes.whole_building", "required"),
        (report_body(channel="pigeon"), "channel", "Input should be"),
        (report_body(reporter={"phone": "call me"}), "reporter.phone", "pattern"),
        (report_body(unexpected=1), "unexpected", "Extra inputs"),
        # PostgreSQL cannot store a NUL character: said at the door, not a 500 from the database
        (report_body(description="暖气\x00不热"), "description", "NUL"),
        (report_body(reporter={"name": "王\x00"}), "reporter.name", "NUL"),
        (report_body(location={"address": "龙沙区\x00"}), "location.address", "NUL"),
        (report_body(attributes={"whole_building": "\x00"}), "attributes.whole_building", "NUL"),
        (report_body(on_behalf_of="\x00card"), "on_behalf_of", "NUL"),
    ],
)
async def test_bad_input_gets_422_naming_the_field(
    client: httpx.AsyncClient, keys: Keys, body: dict[str, Any], field: str, reason: str
) -> None:
    r = await client.post("/v1/cases", json=body, headers=auth(keys.resident_app))
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert any(e["field"] == field and reason in e["reason"] for e in errors), errors


@pytest.mark.parametrize("param", ["district", "grid", "department", "category", "cursor"])
async def test_a_nul_character_in_a_filter_gets_422_naming_it(
    client: httpx.AsyncClient, keys: Keys, param: str
) -> None:
    r = await client.get("/v1/cases", params={param: "a\x00b"}, headers=auth(keys.operator))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == param
    assert "NUL" in r.json()["errors"][0]["reason"]


async def test_malformed_and_oversized_bodies(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.post(
        "/v1/cases",
        content=b"{not json",
        headers={**auth(keys.resident_app), "content-type": "application/json"},
    )
    assert r.status_code == 422
    big = report_body(description="x" * 4000, attributes={"whole_building": "yes"})
    big["padding"] = "y" * 70_000
    r = await client.post("/v1/cases", json=big, headers=auth(keys.resident_app))
    assert r.status_code == 413
    assert r.json()["error"] == "body_too_large"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Idempotency-Key", ""),
        ("Idempotency-Key", "k" * 256),
        ("Authorization", "Bearer gd_" + "x" * 200),
        ("X-API-Key", "gd_" + "x" * 200),
    ],
)
async def test_out_of_bounds_headers_get_422_naming_the_header(
    client: httpx.AsyncClient, keys: Keys, header: str, value: str
) -> None:
    headers = {**auth(keys.resident_app), header: value}
    r = await client.post("/v1/cases", json=report_body(), headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == header


async def test_headers_read_by_hand_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    report = {p["name"]: p for p in doc["paths"]["/v1/cases"]["post"]["parameters"]}
    assert report["Idempotency-Key"]["schema"]["maxLength"] == 255
    assert {"Authorization", "X-API-Key"} <= report.keys()
    case = {p["name"] for p in doc["paths"]["/v1/cases/{case_id}"]["get"]["parameters"]}
    assert {"case_id", "Authorization", "X-API-Key", "X-Tracking-Token"} == case


async def test_credentials_are_required_and_checked(client: httpx.AsyncClient, keys: Keys) -> None:
    assert (await client.post("/v1/cases", json=report_body())).status_code == 401
    bad = await client.post("/v1/cases", json=report_body(), headers=auth("gd_deadbeef_nope"))
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_api_key"
    assert (await client.get("/v1/cases")).status_code == 401
    # a resident app may report but not list
    assert (await client.get("/v1/cases", headers=auth(keys.resident_app))).status_code == 403
    # care flags come from grid workers and operators only
    r = await client.post(
        "/v1/cases",
        json=report_body(sensitivity={"care_groups": ["elderly_alone"]}),
        headers=auth(keys.resident_app),
    )
    assert r.status_code == 403
    assert r.json()["errors"][0]["field"] == "sensitivity"
    r = await client.post(
        "/v1/cases",
        json=report_body(
            channel="proxy",
            on_behalf_of="card-0042",
            sensitivity={"care_groups": ["elderly_alone"]},
        ),
        headers=auth(keys.worker),
    )
    assert r.status_code == 202


async def test_the_lifecycle_is_enforced_with_409s(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    case = await reported_and_routed(client, stack, keys, department="heating")
    cid, token = case["case_id"], case["tracking_token"]
    step = f"/v1/cases/{cid}/events"

    # resolving before acknowledging is out of order
    r = await client.post(
        step, json={"action": "resolve", "note": "fixed"}, headers=auth(keys.heating)
    )
    assert r.status_code == 409
    assert "routed" in r.json()["message"]

    assert (
        await client.post(step, json={"action": "acknowledge"}, headers=auth(keys.heating))
    ).status_code == 202
    again = await client.post(step, json={"action": "acknowledge"}, headers=auth(keys.heating))
    assert again.status_code == 409
    assert "acknowledged" in again.json()["message"]

    for body in (
        {"action": "progress", "note": "engineer on the way"},
        {"action": "resolve", "note": "valve replaced"},
        {"action": "close", "note": "verified with the resident"},
    ):
        r = await client.post(step, json=body, headers=auth(keys.heating))
        assert r.status_code == 202, r.text
    # the resident rates once, with the tracking token
    resident = {"X-Tracking-Token": token}
    assert (
        await client.post(step, json={"action": "rate", "rating": 5}, headers=resident)
    ).status_code == 202
    assert (
        await client.post(step, json={"action": "rate", "rating": 1}, headers=resident)
    ).status_code == 409
    # a department cannot rate, a resident cannot acknowledge
    assert (
        await client.post(step, json={"action": "rate", "rating": 3}, headers=auth(keys.heating))
    ).status_code == 403
    # reopening sends it back to routed
    r = await client.post(step, json={"action": "reopen", "reason": "cold again"}, headers=resident)
    assert r.status_code == 202
    assert r.json()["status"] == "routed"

    view = (await client.get(f"/v1/cases/{cid}", headers=auth(keys.operator))).json()
    assert view["rating"] == 5
    assert [e["event_type"] for e in view["timeline"]] == [
        "CaseReported",
        "CaseRouted",
        "CaseAcknowledged",
        "CaseProgressed",
        "CaseResolved",
        "CaseClosed",
        "CaseRated",
        "CaseReopened",
    ]
    # the steps were published on cases.lifecycle, in order
    records = await read_topic(
        stack.kafka.bootstrap, topics.CASES_LIFECYCLE, expected=1, settle_s=2
    )
    types = [e["event_type"] for e in _for_case(records, cid) if e["producer"] == "intake"]
    assert types == [
        "CaseAcknowledged",
        "CaseProgressed",
        "CaseResolved",
        "CaseClosed",
        "CaseRated",
        "CaseReopened",
    ]


async def test_a_department_cannot_read_or_update_another_departments_case(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    case = await reported_and_routed(client, stack, keys, department="heating")
    cid = case["case_id"]
    assert (await client.get(f"/v1/cases/{cid}", headers=auth(keys.water))).status_code == 403
    r = await client.post(
        f"/v1/cases/{cid}/events", json={"action": "acknowledge"}, headers=auth(keys.water)
    )
    assert r.status_code == 403
    # the right department sees it, with the phone number masked
    mine = await client.get(f"/v1/cases/{cid}", headers=auth(keys.heating))
    assert mine.status_code == 200
    assert mine.json()["reporter"]["phone"] == "13912345678"  # heating needs the phone
    # listing as a department is limited to its own cases
    listed = await client.get("/v1/cases", headers=auth(keys.water), params={"limit": 200})
    assert cid not in {c["case_id"] for c in listed.json()["items"]}
    assert all(c["department"] == "water" for c in listed.json()["items"])
    forbidden = await client.get(
        "/v1/cases", headers=auth(keys.water), params={"department": "heating"}
    )
    assert forbidden.status_code == 403
    # the worker it was assigned to sees it, no other
    assert (await client.get(f"/v1/cases/{cid}", headers=auth(keys.worker))).status_code == 200


async def test_sensitive_data_never_reaches_a_department(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    r = await client.post(
        "/v1/cases",
        json=report_body(
            category="noise.neighbourhood",
            attributes={},
            channel="proxy",
            on_behalf_of="card-0042",
            sensitivity={"care_groups": ["very_old"], "community_correction": True},
            description=WRITTEN,
        ),
        headers=auth(keys.worker),
    )
    cid = r.json()["case_id"]
    await publish_lifecycle(stack, routed_event(cid, "water"))
    view = await wait_for(client, cid, keys.water, lambda c: c["status"] == "routed")
    text = json.dumps(view, ensure_ascii=False)
    assert "community_correction" not in text
    assert "very_old" not in text
    assert view["reporter"]["phone"] == "139****5678"  # noise: the department gets it masked
    # and so is what the resident wrote of themselves into the description
    assert view["description"] == "楼上装修太吵，联系我***或***，老人身份证***"
    for secret in ("13912345678", "wang@example.org", "23020219450312002X"):
        assert secret not in text
    # the grid worker as the department; an operator sees it as written
    as_worker = await client.get(f"/v1/cases/{cid}", headers=auth(keys.worker))
    assert as_worker.json()["description"] == view["description"]
    as_operator = await client.get(f"/v1/cases/{cid}", headers=auth(keys.operator))
    assert as_operator.json()["description"] == WRITTEN


WRITTEN = "楼上装修太吵，联系我13912345678或wang@example.org，老人身份证23020219450312002X"


async def test_a_department_that_calls_back_sees_the_number_but_never_an_id(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    case = await reported_and_routed(client, stack, keys, department="heating")
    cid, token = case["case_id"], case["tracking_token"]
    for step in ({"action": "acknowledge"}, {"action": "resolve", "note": "已修复"}):
        r = await client.post(f"/v1/cases/{cid}/events", json=step, headers=auth(keys.heating))
        assert r.status_code == 202, r.text
    # the resolution says when the case closes unless the resident acts: the window after it
    resolved = (await client.get(f"/v1/cases/{cid}", headers=auth(keys.heating))).json()
    [resolution] = [e for e in resolved["timeline"] if e["event_type"] == "CaseResolved"]
    closes_at = datetime.fromisoformat(resolved["closes_at"])
    assert closes_at == datetime.fromisoformat(resolution["details"]["closes_at"])
    assert closes_at - datetime.fromisoformat(resolution["occurred_at"]) == timedelta(hours=72)
    # the resident reopens, writing their number and id into the reason
    reason = "还是不热，请打13912345678，身份证23020219450312002X"
    r = await client.post(
        f"/v1/cases/{cid}/events",
        json={"action": "reopen", "reason": reason},
        headers={"X-Tracking-Token": token},
    )
    assert r.status_code == 202, r.text

    def reopened(c: dict[str, Any]) -> bool:
        return any(e["event_type"] == "CaseReopened" for e in c["timeline"])

    mine = await wait_for(client, cid, keys.heating, reopened)
    assert mine["closes_at"] is None  # reopened: no longer closing itself
    [entry] = [e for e in mine["timeline"] if e["event_type"] == "CaseReopened"]
    # heating's categories need the resident's phone: the number stays, the id does not
    assert entry["details"]["reason"] == "还是不热，请打13912345678，身份证***"
    resident = await client.get(f"/v1/cases/{cid}", headers={"X-Tracking-Token": token})
    [own] = [e for e in resident.json()["timeline"] if e["event_type"] == "CaseReopened"]
    assert own["details"]["reason"] == reason


async def test_unknown_case_is_404(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.get(
        "/v1/cases/0190aaaa-0000-7000-8000-000000000000", headers=auth(keys.operator)
    )
    assert r.status_code == 404
    r = await client.post(
        "/v1/cases/0190aaaa-0000-7000-8000-000000000000/events",
        json={"action": "acknowledge"},
        headers=auth(keys.operator),
    )
    assert r.status_code == 404


async def test_transfer_request_goes_back_to_the_router(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    case = await reported_and_routed(client, stack, keys, department="heating")
    cid = case["case_id"]
    r = await client.post(
        f"/v1/cases/{cid}/events",
        json={"action": "request_transfer", "reason": "this is a gas leak"},
        headers=auth(keys.heating),
    )
    assert r.status_code == 202
    assert r.json()["status"] == "transfer_requested"
    records = await read_topic(stack.kafka.bootstrap, topics.CASES_INTAKE, expected=1, settle_s=2)
    reroute = [e for e in _for_case(records, cid) if e["event_type"] == "RerouteRequested"]
    assert len(reroute) == 1
    assert reroute[0]["payload"]["exclude_departments"] == ["heating"]
    # the router's new decision lands in the read model
    await publish_lifecycle(stack, routed_event(cid, "gas"))
    view = await wait_for(client, cid, keys.operator, lambda c: c["department"] == "gas")
    assert view["status"] == "routed"


async def test_listing_filters_and_cursor_pagination(client: httpx.AsyncClient, keys: Keys) -> None:
    ids = set()
    for i in range(5):
        r = await client.post(
            "/v1/cases",
            json=report_body(
                category="streetlight.out",
                attributes={},
                location={"lat": 47.30 + i * 0.01, "lon": 123.95},
            ),
            headers=auth(keys.resident_app),
        )
        ids.add(r.json()["case_id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {
            "category": "streetlight.out",
            "limit": 2,
            "status": "reported",
        }
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/cases", params=params, headers=auth(keys.operator))).json()
        seen += [c["case_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids <= set(seen)
    assert len(seen) == len(set(seen))  # no page repeats a case
    bad = await client.get("/v1/cases", params={"cursor": "garbage!"}, headers=auth(keys.operator))
    assert bad.status_code == 422


async def test_the_hotline_finds_a_case_by_its_reference(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    made = [
        (await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))).json()
        for _ in range(3)
    ]
    # reported within one second: distinct references all the same
    assert len({m["reference"] for m in made}) == 3
    wanted = made[1]
    assert wanted["reference"] == wanted["case_id"][-8:].upper()
    for asked in (wanted["reference"], wanted["reference"].lower()):
        page = (
            await client.get("/v1/cases", params={"reference": asked}, headers=auth(keys.operator))
        ).json()
        assert [c["case_id"] for c in page["items"]] == [wanted["case_id"]]
        assert page["items"][0]["reference"] == wanted["reference"]
    bad = await client.get(
        "/v1/cases", params={"reference": "not-hex!"}, headers=auth(keys.operator)
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "reference"


async def test_possible_duplicates_are_named_but_accepted(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    base = {"lat": 47.4001, "lon": 123.7001}
    body = report_body(category="roads.pothole", attributes={}, location=base)
    first = (await client.post("/v1/cases", json=body, headers=auth(keys.resident_app))).json()
    near = report_body(
        category="roads.pothole", attributes={}, location={"lat": 47.4003, "lon": 123.7002}
    )  # about 24 m away
    second = await client.post("/v1/cases", json=near, headers=auth(keys.resident_app))
    assert second.status_code == 202
    assert second.json()["possible_duplicate_of"] == first["case_id"]
    far = report_body(
        category="roads.pothole", attributes={}, location={"lat": 47.4030, "lon": 123.7001}
    )  # about 320 m away
    assert (await client.post("/v1/cases", json=far, headers=auth(keys.resident_app))).json()[
        "possible_duplicate_of"
    ] is None
    other = report_body(category="streetlight.out", attributes={}, location=base)
    assert (await client.post("/v1/cases", json=other, headers=auth(keys.resident_app))).json()[
        "possible_duplicate_of"
    ] is None


async def test_reports_naming_the_same_facility_or_building_are_duplicates(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Every passer-by reports the same street light by its number; every flat of a block
    without heating by the building's code: no coordinates to compare."""
    light, block = f"SL-{uuid.uuid4().hex[:8]}", f"B-{uuid.uuid4().hex[:8]}"

    async def post(category: str, **location: str) -> dict[str, Any]:
        answers = {"whole_building": "yes"} if category == "heating.outage" else {}
        body = report_body(category=category, attributes=answers, location=location)
        r = await client.post("/v1/cases", json=body, headers=auth(keys.resident_app))
        assert r.status_code == 202, r.text
        return dict(r.json())

    first = await post("streetlight.out", facility_code=light)
    assert first["possible_duplicate_of"] is None
    again = await post("streetlight.out", facility_code=light)
    assert again["possible_duplicate_of"] == first["case_id"]
    # a third names the original, not the duplicate
    third = await post("streetlight.out", facility_code=light, address="中华路路口")
    assert third["possible_duplicate_of"] == first["case_id"]
    assert (await post("roads.pothole", facility_code=light))["possible_duplicate_of"] is None
    flat_1 = await post("heating.outage", building_code=block)
    flat_2 = await post("heating.outage", building_code=block)
    assert flat_1["possible_duplicate_of"] is None
    assert flat_2["possible_duplicate_of"] == flat_1["case_id"]


async def test_categories_and_health(client: httpx.AsyncClient) -> None:
    cats = (await client.get("/v1/categories")).json()
    codes = {c["code"] for c in cats}
    assert {
        "heating.outage",
        "water.outage",
        "power.outage",
        "gas.leak",
        "dispute.neighbour",
        "streetlight.out",
        "sanitation.garbage",
        "safety.public-order",
    } <= codes
    assert len(codes) >= 50
    assert (await client.get("/health/ready")).status_code == 200
    metrics = (await client.get("/metrics/")).text
    assert "griddispatch_cases_reported_total" in metrics
    assert "griddispatch_outbox_backlog" in metrics


async def test_requests_are_counted_by_route_template_with_bounded_labels(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/v1/categories")
    odd = await client.request("PROPFIND", "/v1/categories")
    lost = await client.get("/no/such/path/4f1c")
    assert (odd.status_code, lost.status_code) == (405, 404)
    assert (await client.get("/health/live")).status_code == 200
    redirected = await client.get("/v1/cases/c-7e2d9/", follow_redirects=False)
    assert redirected.status_code == 307  # to /v1/cases/c-7e2d9: not a label per case id
    await client.get("/metrics/")  # counted in the next scrape
    families = text_string_to_metric_families((await client.get("/metrics/")).text)
    counted = {
        (s.labels["method"], s.labels["route"], s.labels["status"])
        for f in families
        if f.name == "griddispatch_http_requests"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert ("GET", "/v1/categories", "200") in counted
    assert ("other", "/v1/categories", "405") in counted  # not a label per invented method
    assert ("GET", "unmatched", "404") in counted  # not a label per invented path
    assert ("GET", "/health/live", "200") in counted  # probes are not "unmatched"
    assert ("GET", "/metrics", "200") in counted
    assert not any(m == "PROPFIND" or "4f1c" in r or "7e2d9" in r for m, r, _ in counted)


async def test_a_department_lists_its_overdue_cases(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    """Open and past the resolve deadline: what a department's duty officer (or an operator
    following a grid task) chases first."""
    ids = []
    for _ in range(3):
        r = await client.post(
            "/v1/cases",
            json=report_body(category="water.outage", attributes={}),
            headers=auth(keys.resident_app),
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["case_id"])
    late, on_time, resolved_late = ids
    await publish_lifecycle(
        stack,
        routed_event(late, "water", resolve_in=timedelta(hours=-1)),
        routed_event(on_time, "water"),
        routed_event(resolved_late, "water", resolve_in=timedelta(hours=-1)),
    )
    for cid in ids:
        await wait_for(client, cid, keys.operator, lambda c: c["status"] == "routed")
    for step in ({"action": "acknowledge"}, {"action": "resolve", "note": "修好了"}):
        r = await client.post(
            f"/v1/cases/{resolved_late}/events", json=step, headers=auth(keys.water)
        )
        assert r.status_code == 202, r.text

    async def listed(**params: str) -> set[str]:
        r = await client.get("/v1/cases", params={"limit": 200, **params}, headers=auth(keys.water))
        assert r.status_code == 200, r.text
        return {c["case_id"] for c in r.json()["items"]} & set(ids)

    assert await listed(overdue="true") == {late}
    assert await listed(overdue="false") == {on_time, resolved_late}
    assert await listed() == set(ids)
    r = await client.get("/v1/cases", params={"overdue": "maybe"}, headers=auth(keys.water))
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "overdue")


async def test_a_report_may_name_a_facility_instead_of_a_place(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """The number on a street light's plate is all a passer-by may know."""
    body = report_body(
        category="streetlight.out",
        attributes={},
        location={"facility_code": "SL-longsha-g00001"},
    )
    r = await client.post("/v1/cases", json=body, headers=auth(keys.resident_app))
    assert r.status_code == 202, r.text
    view = (
        await client.get(f"/v1/cases/{r.json()['case_id']}", headers=auth(keys.operator))
    ).json()
    assert view["location"]["facility_code"] == "SL-longsha-g00001"
    r = await client.post(
        "/v1/cases",
        json=report_body(location={"facility_code": "SL 1; DROP"}),
        headers=auth(keys.resident_app),
    )
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "location.facility_code")
    r = await client.post(
        "/v1/cases", json=report_body(location={}), headers=auth(keys.resident_app)
    )
    assert r.status_code == 422
    assert "facility_code" in r.json()["errors"][0]["reason"]


async def test_a_retired_category_takes_no_report_but_its_cases_stay_readable(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    """`catalogue import --retire-others` leaves a category's row in place, no longer
    offered: reports, grid tasks and the service lists refuse or omit it; its cases read on."""
    code = f"test.retired-{uuid.uuid4().hex[:8]}"
    category = Category(
        code=code,
        name={"zh-CN": "旧事项", "en": "Old item"},
        group="utilities",
        department="heating",
        deadlines=CategoryDeadlines(acknowledge_hours=1, resolve_hours=8),
    )
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await store.take_catalogue(conn, Catalogue(categories=[category]), retire_others=False)
        await asyncio.sleep(1.2)  # the test server refreshes its catalogue every second
        case = await reported_and_routed(client, stack, keys, category=code, attributes={})
        await conn.execute("UPDATE intake.categories SET active = false WHERE code = $1", code)
    finally:
        await conn.close()
    await asyncio.sleep(1.2)

    refused = await client.post(
        "/v1/cases", json=report_body(category=code, attributes={}), headers=auth(keys.resident_app)
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "unknown_category"
    [problem] = refused.json()["errors"]
    assert problem["field"] == "category"
    assert "no longer offered" in problem["reason"]
    task = await client.post(
        "/v1/tasks",
        json={"area": "city", "category": code, "title": "检查", "instructions": "入户"},
        headers=auth(keys.operator),
    )
    assert task.status_code == 422, task.text
    assert "no longer offered" in task.text
    assert code not in {c["code"] for c in (await client.get("/v1/categories")).json()}
    services = (await client.get("/open311/v2/services.json")).json()
    assert code not in {s["service_code"] for s in services}
    assert (await client.get(f"/open311/v2/services/{code}.json")).status_code == 404
    # the case made before keeps its category, for the resident and the department alike
    view = await client.get(f"/v1/cases/{case['case_id']}", headers=auth(keys.heating))
    assert view.status_code == 200
    assert view.json()["category"] == code
    request = await client.get(f"/open311/v2/requests/{case['case_id']}.json")
    assert request.status_code == 200
    assert request.json()[0]["service_code"] == code


async def test_an_answer_naming_a_facility_locates_the_report(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    pole = f"SL-{uuid.uuid4().hex[:8]}"
    r = await client.post(
        "/v1/cases",
        json=report_body(category="streetlight.out", attributes={"pole_number": pole}),
        headers=auth(keys.resident_app),
    )
    assert r.status_code == 202, r.text
    case = (
        await client.get(f"/v1/cases/{r.json()['case_id']}", headers=auth(keys.operator))
    ).json()
    assert case["location"]["facility_code"] == pole
    assert case["location"]["lat"] is not None  # the coordinate stays, the router tries both


async def test_the_hotline_finds_a_residents_cases_by_their_phone_number(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """A resident calls without their reference: the operator looks their cases up by the
    number they gave (however it was written); nobody else may look people up."""
    number = "139" + str(uuid.uuid4().int)[:8]
    written = f"+86 {number[:3]}-{number[3:7]}-{number[7:]}"
    mine = []
    for phone in (written, number):
        body = report_body(reporter={"name": "赵大爷", "phone": phone})
        r = await client.post("/v1/cases", json=body, headers=auth(keys.resident_app))
        assert r.status_code == 202, r.text
        mine.append(r.json()["case_id"])
    other = await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
    assert other.status_code == 202

    found = await client.get(
        "/v1/cases", params={"reporter_phone": number}, headers=auth(keys.operator)
    )
    assert found.status_code == 200, found.text
    assert sorted(c["case_id"] for c in found.json()["items"]) == sorted(mine)
    also = await client.get(
        "/v1/cases", params={"reporter_phone": f"+86{number}"}, headers=auth(keys.operator)
    )
    assert sorted(c["case_id"] for c in also.json()["items"]) == sorted(mine)
    for key in (keys.heating, keys.worker):
        refused = await client.get(
            "/v1/cases", params={"reporter_phone": number}, headers=auth(key)
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["errors"][0]["field"] == "reporter_phone"
    too_short = await client.get(
        "/v1/cases", params={"reporter_phone": "(((---)))"}, headers=auth(keys.operator)
    )
    assert too_short.status_code == 422
    assert too_short.json()["errors"][0]["field"] == "reporter_phone"
    # an elderly resident without a phone: their card's code finds the grid worker's reports
    card = f"QQHR-CARD-{uuid.uuid4().hex[:6]}"
    proxy = await client.post(
        "/v1/cases",
        json=report_body(channel="proxy", on_behalf_of=card, reporter=None),
        headers=auth(keys.worker),
    )
    assert proxy.status_code == 202, proxy.text
    by_card = await client.get(
        "/v1/cases", params={"on_behalf_of": card}, headers=auth(keys.operator)
    )
    assert [c["case_id"] for c in by_card.json()["items"]] == [proxy.json()["case_id"]]
