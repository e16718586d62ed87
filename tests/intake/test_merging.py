"""Merging a report into another case of the same problem, on a running intake process with
the real broker and database: who may, into what, and what the merged reports become when the
case they joined is resolved."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from shared.ids import derived_event_id
from shared.localstack import LocalStack
from tests.intake.conftest import Keys, auth, published, refusal, reported_and_routed, wait_for


async def _step(
    client: httpx.AsyncClient, case_id: str, key: str, **body: object
) -> httpx.Response:
    return await client.post(f"/v1/cases/{case_id}/events", json=body, headers=auth(key))


async def _view(client: httpx.AsyncClient, case_id: str, keys: Keys) -> dict[str, Any]:
    r = await client.get(f"/v1/cases/{case_id}", headers=auth(keys.operator))
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


async def test_merged_reports_are_resolved_with_the_case_they_joined(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    accepted = [await reported_and_routed(client, stack, keys) for _ in range(3)]
    a, b, c = (x["case_id"] for x in accepted)
    r = await _step(client, b, keys.heating, action="merge", into=a, note="同一楼栋，已受理")
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "merged"
    merged = await _view(client, b, keys)
    assert (merged["status"], merged["merged_into"]) == ("merged", a)
    assert merged["timeline"][-1]["event_type"] == "CaseMerged"
    assert merged["timeline"][-1]["details"]["into"] == a
    # Open311 shows it open, and why nothing happens on it
    [public] = (await client.get(f"/open311/v2/requests/{b}.json")).json()
    assert public["status"] == "open"
    assert a in public["status_notes"]

    # into a merged case: refused, naming the case that carries the work
    r = await _step(client, c, keys.heating, action="merge", into=b)
    assert refusal(r) == (409, "merge_refused", ["into"])
    assert a in r.json()["message"]
    assert (await _step(client, c, keys.heating, action="merge", into=a)).status_code == 202
    # a merged case takes no other step but reopening
    r = await _step(client, b, keys.heating, action="acknowledge")
    assert r.status_code == 409
    assert "merged" in r.json()["message"]

    assert (await _step(client, a, keys.heating, action="acknowledge")).status_code == 202
    r = await _step(client, a, keys.heating, action="resolve", note="阀门已更换")
    assert r.status_code == 202, r.text
    resolution_id = r.json()["event_id"]
    original = await _view(client, a, keys)
    assert original["merged_cases"] == [b, c]  # in the order they were reported
    for follower in (b, c):
        view = await _view(client, follower, keys)
        assert view["status"] == "resolved"
        assert view["closes_at"] == original["closes_at"]
        last = view["timeline"][-1]
        assert (last["event_type"], last["details"]["follows"]) == ("CaseResolved", a)
        assert last["details"]["note"] == "阀门已更换"
        assert last["event_id"] == str(derived_event_id(resolution_id, f"follow:{follower}"))

    # published once each, through the outbox, for the other services
    follows = await published(stack, "CaseResolved", b, c)
    assert sorted(e["case_id"] for e in follows) == sorted([b, c])
    assert {e["payload"]["follows"] for e in follows} == {a}

    # the resident of a merged report may still say it is not fixed for them
    r = await client.post(
        f"/v1/cases/{b}/events",
        json={"action": "reopen", "reason": "我家还是不热"},
        headers={"X-Tracking-Token": accepted[1]["tracking_token"]},
    )
    assert r.status_code == 202, r.text
    reopened = await _view(client, b, keys)
    assert (reopened["status"], reopened["merged_into"]) == ("routed", None)
    assert (await _view(client, a, keys))["merged_cases"] == [c]


async def test_a_merge_is_refused_with_the_field_and_the_reason(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    accepted = await reported_and_routed(client, stack, keys, department="heating")
    mine = accepted["case_id"]
    theirs = (await reported_and_routed(client, stack, keys, department="water"))["case_id"]
    # a department merges only into a case it can see; an unknown case reads the same
    for into in (theirs, str(uuid.uuid4())):
        r = await _step(client, mine, keys.heating, action="merge", into=into)
        assert refusal(r) == (422, "unknown_case", ["into"])
    r = await _step(client, mine, keys.heating, action="merge", into=mine)
    assert refusal(r)[:2] == (409, "merge_refused")
    assert (await _step(client, mine, keys.heating, action="merge")).status_code == 422
    assert (
        await _step(client, mine, keys.heating, action="acknowledge", into=theirs)
    ).status_code == 422
    # nor can a resident, even of their own case
    token = accepted["tracking_token"]
    r = await client.post(
        f"/v1/cases/{mine}/events",
        json={"action": "merge", "into": theirs},
        headers={"X-Tracking-Token": token},
    )
    assert r.status_code == 403
    # a resolved case has no resolution left to share
    done = (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
    await _step(client, done, keys.heating, action="acknowledge")
    await _step(client, done, keys.heating, action="resolve", note="已修复")
    r = await _step(client, mine, keys.heating, action="merge", into=done)
    assert refusal(r)[:2] == (409, "merge_refused")
    assert "resolved" in r.json()["message"]
    assert (await _view(client, mine, keys))["status"] == "routed"  # nothing changed


async def test_an_operator_merges_across_departments_and_merged_reports_move_along(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    first = (await reported_and_routed(client, stack, keys, department="water"))["case_id"]
    second = (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
    root = (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
    assert (await _step(client, first, keys.operator, action="merge", into=second)).status_code == (
        202
    )
    # the case the first joined is merged in turn: the first follows it to the open case
    assert (await _step(client, second, keys.operator, action="merge", into=root)).status_code == (
        202
    )
    assert (await _view(client, first, keys))["merged_into"] == root
    await _step(client, root, keys.heating, action="acknowledge")
    await _step(client, root, keys.heating, action="resolve", note="已修复")
    for follower in (first, second):
        view = await wait_for(client, follower, keys.operator, lambda v: v["status"] != "merged")
        assert view["status"] == "resolved"
    # the department sees the resolution of its own case, merged from another department's
    water = await client.get(f"/v1/cases/{first}", headers=auth(keys.water))
    assert water.status_code == 200
    assert water.json()["status"] == "resolved"


async def test_two_merges_crossing_each_other_leave_one_case_carrying_the_work(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    """A into B and B into A at once (two desks seeing the same pair): both cases are locked
    in one order, so one merge wins and the other is refused — never a deadlock, never a cycle."""
    for _ in range(5):
        a = (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
        b = (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
        answers = await asyncio.gather(
            _step(client, a, keys.heating, action="merge", into=b),
            _step(client, b, keys.operator, action="merge", into=a),
        )
        assert sorted(r.status_code for r in answers) == [202, 409], [r.text for r in answers]
        views = {cid: await _view(client, cid, keys) for cid in (a, b)}
        merged = [cid for cid, v in views.items() if v["status"] == "merged"]
        assert len(merged) == 1
        [carrier] = {a, b} - set(merged)
        assert views[merged[0]]["merged_into"] == carrier
        assert views[carrier]["status"] == "routed"
        assert views[carrier]["merged_into"] is None
