"""More time to resolve a case, on a running intake process with the real broker and
database: a department or worker asks, an operator grants or refuses, before the deadline
passes."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import httpx

from services.intake.readmodel import OpenCaseGauge
from shared.db import create_pool
from shared.localstack import LocalStack
from shared.metrics import REGISTRY
from tests.helpers.cli import run_cli
from tests.intake.conftest import (
    Keys,
    auth,
    publish_lifecycle,
    published,
    refusal,
    report_body,
    reported_and_routed,
    routed_event,
    wait_for,
)


async def _step(
    client: httpx.AsyncClient, case_id: str, headers: dict[str, str], **body: object
) -> httpx.Response:
    return await client.post(f"/v1/cases/{case_id}/events", json=body, headers=headers)


async def _view(client: httpx.AsyncClient, case_id: str, key: str) -> dict[str, Any]:
    r = await client.get(f"/v1/cases/{case_id}", headers=auth(key))
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


async def _asked(client: httpx.AsyncClient, key: str) -> set[str]:
    r = await client.get(
        "/v1/cases", params={"extension_asked": "true", "limit": 200}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    return {c["case_id"] for c in r.json()["items"]}


async def _waiting_gauges(stack: LocalStack) -> tuple[float, float]:
    """The waiting-extension gauges as intake's refresher sets them from the cases."""
    pool = await create_pool(stack.postgres.url, "intake", max_size=1)
    try:
        await OpenCaseGauge(pool).refresh()
    finally:
        await pool.close()
    count = REGISTRY.get_sample_value("griddispatch_extensions_waiting")
    age = REGISTRY.get_sample_value("griddispatch_extension_oldest_wait_seconds")
    assert count is not None
    assert age is not None
    return count, age


async def test_a_department_asks_for_more_time_and_an_operator_grants_it(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    accepted = await reported_and_routed(client, stack, keys, department="heating")
    cid, resident = accepted["case_id"], {"X-Tracking-Token": accepted["tracking_token"]}
    heating, operator = auth(keys.heating), auth(keys.operator)
    due = datetime.fromisoformat((await _view(client, cid, keys.operator))["resolve_by"])
    asked = (due + timedelta(days=3)).isoformat()
    reason = "需更换主管道，配件已订购"

    # asked once the case is taken, not before
    r = await _step(client, cid, heating, action="request_extension", until=asked, reason=reason)
    assert refusal(r)[:2] == (409, "illegal_transition")
    assert (await _step(client, cid, heating, action="acknowledge")).status_code == 202
    # what is wrong with a request is named
    for body, expected in (
        ({"until": asked}, (422, "invalid_request")),  # no reason
        ({"reason": reason}, (422, "invalid_request")),  # no deadline
        (
            {"until": (due - timedelta(hours=1)).isoformat(), "reason": reason},
            (409, "extension_not_allowed"),
        ),
        (
            {"until": (due + timedelta(days=120)).isoformat(), "reason": reason},
            (409, "extension_not_allowed"),
        ),
    ):
        r = await _step(client, cid, heating, action="request_extension", **body)
        assert refusal(r)[:2] == expected, (body, r.text)
    r = await _step(client, cid, resident, action="request_extension", until=asked, reason=reason)
    assert r.status_code == 403
    # nothing to refuse yet
    r = await _step(client, cid, operator, action="refuse_extension", reason="不同意")
    assert refusal(r) == (409, "extension_not_allowed", ["until"])

    r = await _step(client, cid, heating, action="request_extension", until=asked, reason=reason)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "acknowledged"  # the state does not move
    view = await _view(client, cid, keys.heating)
    assert view["extension_request"]["reason"] == reason
    assert datetime.fromisoformat(view["extension_request"]["until"]) == datetime.fromisoformat(
        asked
    )
    assert datetime.fromisoformat(view["resolve_by"]) == due  # the deadline stands meanwhile
    assert cid in await _asked(client, keys.operator)
    assert cid in await _asked(client, keys.heating)
    waiting = await _waiting_gauges(stack)
    assert waiting[0] >= 1
    assert 0 <= waiting[1] < 600
    # the resident sees the case, not the department's reasons
    mine = await client.get(f"/v1/cases/{cid}", headers=resident)
    assert mine.json()["extension_request"] is None
    # the department cannot grant its own request, whatever it names (who may comes first)
    r = await _step(client, cid, heating, action="extend", reason="自批")
    assert r.status_code == 403
    r = await _step(client, cid, heating, action="extend", reason="自批", until=due.isoformat())
    assert r.status_code == 403

    # the operator grants what was asked
    r = await _step(client, cid, operator, action="extend", reason="同意延期")
    assert r.status_code == 202, r.text
    view = await _view(client, cid, keys.operator)
    assert datetime.fromisoformat(view["resolve_by"]) == datetime.fromisoformat(asked)
    assert view["extension_request"] is None
    assert cid not in await _asked(client, keys.operator)
    assert (await _waiting_gauges(stack))[0] == waiting[0] - 1
    extended = await published(stack, "CaseDeadlineExtended", cid)
    assert len(extended) == 1
    assert datetime.fromisoformat(extended[0]["payload"]["resolve_by"]) == datetime.fromisoformat(
        asked
    )
    # Open311 expects it then
    [public] = (await client.get(f"/open311/v2/requests/{cid}.json")).json()
    assert datetime.fromisoformat(public["expected_datetime"]) == datetime.fromisoformat(asked)


async def test_an_operator_refuses_and_a_resolution_ends_a_request(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    heating = auth(keys.heating)
    first, second = [
        (await reported_and_routed(client, stack, keys, department="heating"))["case_id"]
        for _ in range(2)
    ]
    for cid in (first, second):
        await _step(client, cid, heating, action="acknowledge")
        due = datetime.fromisoformat((await _view(client, cid, keys.operator))["resolve_by"])
        r = await _step(
            client,
            cid,
            heating,
            action="request_extension",
            until=(due + timedelta(days=1)).isoformat(),
            reason="等待配件",
        )
        assert r.status_code == 202, r.text
    # an operator at the command line sees both waiting, and refuses the first's
    listed = run_cli(stack, "extensions", "list")
    assert listed.returncode == 0, listed.stderr
    assert first in listed.stdout
    assert second in listed.stdout
    assert "等待配件" in listed.stdout
    done = run_cli(stack, "extensions", "refuse", first, "--reason", "请按原时限办结")
    assert done.returncode == 0, done.stderr
    again = run_cli(stack, "extensions", "refuse", first, "--reason", "再拒")
    assert again.returncode == 1
    assert "no extension was asked" in again.stderr
    refused = await _view(client, first, keys.operator)
    assert refused["extension_request"] is None
    assert [e["event_type"] for e in refused["timeline"]][-2:] == [
        "CaseExtensionRequested",
        "CaseExtensionRefused",
    ]
    assert refused["timeline"][-1]["details"]["by"].startswith("cli:")
    # resolved anyway: the request is moot
    r = await _step(client, second, heating, action="resolve", note="已修复")
    assert r.status_code == 202, r.text
    assert (await _view(client, second, keys.operator))["extension_request"] is None
    assert not {first, second} & await _asked(client, keys.operator)


async def test_an_extension_comes_before_the_deadline_passes(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    r = await client.post("/v1/cases", json=report_body(), headers=auth(keys.resident_app))
    cid = r.json()["case_id"]
    await publish_lifecycle(stack, routed_event(cid, "heating", resolve_in=timedelta(seconds=2)))
    await wait_for(client, cid, keys.operator, lambda c: c["status"] == "routed")
    await _step(client, cid, auth(keys.heating), action="acknowledge")
    await asyncio.sleep(2.5)
    r = await _step(
        client,
        cid,
        auth(keys.operator),
        action="extend",
        until=(datetime.now().astimezone() + timedelta(days=1)).isoformat(),
        reason="补批",
    )
    assert refusal(r) == (409, "extension_not_allowed", ["until"])
    assert "passed" in r.json()["message"]
