"""A resident pressing for their case (催办), on a running intake process with the real broker
and database: counted, told to its handlers through the lifecycle, at most once a day."""

from __future__ import annotations

import httpx

from shared.localstack import LocalStack
from tests.intake.conftest import Keys, auth, published, refusal, reported_and_routed


async def test_a_resident_urges_their_case_once_a_day(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    accepted = await reported_and_routed(client, stack, keys, department="heating")
    cid, resident = accepted["case_id"], {"X-Tracking-Token": accepted["tracking_token"]}
    step = f"/v1/cases/{cid}/events"
    r = await client.post(step, json={"action": "urge", "note": "三天了还不热"}, headers=resident)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "routed"
    view = (await client.get(f"/v1/cases/{cid}", headers=auth(keys.heating))).json()
    assert view["urged"] == 1
    assert view["timeline"][-1]["event_type"] == "CaseUrged"
    # again the same day: refused, saying when; nor by the hotline for them
    again = await client.post(step, json={"action": "urge"}, headers=resident)
    assert refusal(again) == (409, "urged_recently", ["action"])
    assert "again from" in again.json()["message"]
    hotline = await client.post(step, json={"action": "urge"}, headers=auth(keys.operator))
    assert refusal(hotline)[:2] == (409, "urged_recently")
    # the handlers are those told, not those who urge
    r = await client.post(step, json={"action": "urge"}, headers=auth(keys.heating))
    assert r.status_code == 403
    urged = await published(stack, "CaseUrged", cid)
    assert [(e["payload"]["times"], e["payload"]["note"]) for e in urged] == [(1, "三天了还不热")]


async def test_the_hotline_urges_for_a_resident_and_a_finished_case_is_not_urged(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    cid = (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
    step = f"/v1/cases/{cid}/events"
    r = await client.post(step, json={"action": "urge"}, headers=auth(keys.operator))
    assert r.status_code == 202, r.text
    for body in ({"action": "acknowledge"}, {"action": "resolve", "note": "已修复"}):
        assert (await client.post(step, json=body, headers=auth(keys.heating))).status_code == 202
    r = await client.post(step, json={"action": "urge"}, headers=auth(keys.operator))
    assert refusal(r)[:2] == (409, "illegal_transition")
