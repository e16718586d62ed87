"""Open311 GeoReport v2 on a running intake: JSON and XML round trips, the spec's errors,
and two off-the-shelf client libraries from PyPI (civicbot's Open311Client, georeport)."""

from __future__ import annotations

import asyncio
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from civicbot import Open311Client
from civicbot.http import HttpTransport, RateLimiter
from civicbot.registry import Endpoint
from georeport import GeoReport

from shared.localstack import LocalStack
from tests.intake.conftest import (
    Keys,
    auth,
    publish_department,
    publish_lifecycle,
    routed_event,
    wait_for,
)

FORM = {"content-type": "application/x-www-form-urlencoded"}


def _form(keys: Keys, **fields: str) -> dict[str, str]:
    data = {
        "api_key": keys.resident_app,
        "service_code": "streetlight.out",
        "lat": "47.3421",
        "long": "123.9577",
        "address_string": "龙沙区 中华路 12号",
        "description": "路灯不亮已经三天",
        "first_name": "Li",
        "last_name": "Wei",
        "phone": "13800001111",
        "attribute[pole_number]": "LS-0421",
    }
    data.update(fields)
    if data["service_code"] != "streetlight.out":
        del data["attribute[pole_number]"]  # a question only street lights ask
    return data


async def test_services_and_definitions_in_json_and_xml(client: httpx.AsyncClient) -> None:
    services = (await client.get("/open311/v2/services.json")).json()
    heating = next(s for s in services if s["service_code"] == "heating.outage")
    assert heating["service_name"] == "暖气不热/停暖"
    assert heating["metadata"] is True
    english = (await client.get("/open311/v2/services.json", params={"locale": "en"})).json()
    assert (
        next(s for s in english if s["service_code"] == "heating.outage")["service_name"]
        == "No heating"
    )

    xml = await client.get("/open311/v2/services.xml")
    assert xml.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(xml.content)
    assert root.tag == "services"
    assert len(root.findall("service")) == len(services)

    definition = (await client.get("/open311/v2/services/heating.outage.json")).json()
    codes = {a["code"]: a for a in definition["attributes"]}
    assert codes["whole_building"]["required"] is True
    assert {v["key"] for v in codes["whole_building"]["values"]} == {"yes", "no"}
    xml_def = ET.fromstring((await client.get("/open311/v2/services/heating.outage.xml")).content)
    assert xml_def.tag == "service_definition"
    assert xml_def.findtext("service_code") == "heating.outage"

    discovery = (await client.get("/open311/v2/discovery.json")).json()
    assert discovery["endpoints"][0]["url"].endswith("/open311/v2")


async def test_post_and_read_back_in_json_and_xml(
    client: httpx.AsyncClient, stack: LocalStack, keys: Keys
) -> None:
    posted = await client.post("/open311/v2/requests.json", data=_form(keys))
    assert posted.status_code == 201, posted.text
    [created] = posted.json()
    rid, token = created["service_request_id"], created["token"]

    [req] = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
    assert req["status"] == "open"
    assert req["service_code"] == "streetlight.out"
    assert req["description"] == "路灯不亮已经三天"
    assert req["lat"] == pytest.approx(47.3421)
    assert "13800001111" not in str(req)  # no personal data

    # the router's decision shows as agency_responsible and expected_datetime: the
    # department's code while the department directory does not know it …
    department = "lights-" + uuid.uuid4().hex[:6]
    await publish_lifecycle(stack, routed_event(rid, department))
    await wait_for(client, rid, keys.operator, lambda c: c["status"] == "routed")
    [req] = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
    assert req["agency_responsible"] == department
    assert req["expected_datetime"] is not None
    # … and its name once the router has published it there
    await publish_department(stack, department, "市路灯管理处")
    await wait_for(client, rid, keys.operator, lambda c: c["department_name"] == "市路灯管理处")
    [req] = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
    assert req["agency_responsible"] == "市路灯管理处"

    xml = ET.fromstring((await client.get(f"/open311/v2/requests/{rid}.xml")).content)
    node = xml.find("request")
    assert node is not None
    assert node.findtext("service_request_id") == rid
    assert node.findtext("status") == "open"

    [tok] = (await client.get(f"/open311/v2/tokens/{token}.json")).json()
    assert tok["service_request_id"] == rid

    # a resolution note becomes status_notes; closing makes it "closed"
    step = f"/v1/cases/{rid}/events"
    for body in (
        {"action": "acknowledge"},
        {"action": "resolve", "note": "灯泡已更换，已电话13912345678告知居民"},
        {"action": "close"},
    ):
        assert (await client.post(step, json=body, headers=auth(keys.operator))).status_code == 202
    [req] = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
    assert req["status"] == "closed"
    assert req["status_notes"] == "灯泡已更换，已电话***告知居民"  # public: the number masked


async def test_get_requests_filters(client: httpx.AsyncClient, keys: Keys) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = []
    for _ in range(3):
        r = await client.post(
            "/open311/v2/requests.json", data=_form(keys, service_code="sanitation.garbage")
        )
        ids.append(r.json()[0]["service_request_id"])
    listed = (
        await client.get(
            "/open311/v2/requests.json",
            params={"service_code": "sanitation.garbage", "status": "open"},
        )
    ).json()
    assert set(ids) <= {r["service_request_id"] for r in listed}
    assert all(r["service_code"] == "sanitation.garbage" for r in listed)
    by_id = (
        await client.get(
            "/open311/v2/requests.json", params={"service_request_id": ",".join(ids[:2])}
        )
    ).json()
    assert {r["service_request_id"] for r in by_id} == set(ids[:2])
    updated = (
        await client.get(
            "/open311/v2/requests.json",
            params={
                "updated_after": before.isoformat().replace("+00:00", "Z"),
                "service_code": "sanitation.garbage",
            },
        )
    ).json()
    assert set(ids) <= {r["service_request_id"] for r in updated}
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert (
        await client.get("/open311/v2/requests.json", params={"updated_after": future})
    ).json() == []
    closed = (
        await client.get(
            "/open311/v2/requests.json",
            params={"service_code": "sanitation.garbage", "status": "closed"},
        )
    ).json()
    assert not set(ids) & {r["service_request_id"] for r in closed}


async def test_personal_matters_are_not_published(client: httpx.AsyncClient, keys: Keys) -> None:
    r = await client.post(
        "/open311/v2/requests.json",
        data=_form(
            keys,
            service_code="civil-affairs.subsistence-allowance",
            description="家里困难，申请低保",
        ),
    )
    rid = r.json()[0]["service_request_id"]
    [req] = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
    assert req["description"] is None
    assert req["address"] is None


async def test_public_reads_mask_what_a_resident_wrote_of_themselves(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    written = "Li Wei反映路灯不亮，联系13912345678，身份证23020219450312002X"
    r = await client.post("/open311/v2/requests.json", data=_form(keys, description=written))
    rid = r.json()[0]["service_request_id"]
    [req] = (await client.get(f"/open311/v2/requests/{rid}.json")).json()
    # the reporter's own name too (first_name and last_name of the form: "Li Wei")
    assert req["description"] == "***反映路灯不亮，联系***，身份证***"
    xml = (await client.get(f"/open311/v2/requests/{rid}.xml")).text
    assert "13912345678" not in xml
    assert "路灯不亮，联系***" in xml


@pytest.mark.parametrize("fmt", ["json", "xml"])
async def test_open311_errors_use_the_spec_body(
    client: httpx.AsyncClient, keys: Keys, fmt: str
) -> None:
    def errors(resp: httpx.Response) -> list[tuple[int, str]]:
        if fmt == "json":
            return [(e["code"], e["description"]) for e in resp.json()]
        root = ET.fromstring(resp.content)
        assert root.tag == "errors"
        return [
            (int(e.findtext("code", "")), e.findtext("description", ""))
            for e in root.findall("error")
        ]

    no_key = await client.post(
        f"/open311/v2/requests.{fmt}", data={k: v for k, v in _form(keys).items() if k != "api_key"}
    )
    assert no_key.status_code == 403
    assert errors(no_key)[0][0] == 403

    bad_key = await client.post(f"/open311/v2/requests.{fmt}", data=_form(keys, api_key="x"))
    assert bad_key.status_code == 403

    unknown = await client.post(
        f"/open311/v2/requests.{fmt}", data=_form(keys, service_code="nope")
    )
    assert unknown.status_code == 400
    assert "service_code" in errors(unknown)[0][1]

    bad_lat = await client.post(f"/open311/v2/requests.{fmt}", data=_form(keys, lat="north"))
    assert bad_lat.status_code == 400
    assert errors(bad_lat)[0][1].startswith("lat")

    out_of_range = await client.post(f"/open311/v2/requests.{fmt}", data=_form(keys, lat="95"))
    assert out_of_range.status_code == 400

    long_text = await client.post(
        f"/open311/v2/requests.{fmt}", data=_form(keys, description="x" * 4001)
    )
    assert long_text.status_code == 400
    assert "description" in errors(long_text)[0][1]

    nul = await client.post(f"/open311/v2/requests.{fmt}", data=_form(keys, description="a\x00"))
    assert nul.status_code == 400
    assert "description" in errors(nul)[0][1]
    nul_filter = await client.get(f"/open311/v2/requests.{fmt}", params={"service_code": "\x00"})
    assert nul_filter.status_code == 400
    assert "service_code" in errors(nul_filter)[0][1]

    missing = await client.get(f"/open311/v2/requests/0190aaaa-0000-7000-8000-000000000000.{fmt}")
    assert missing.status_code == 404
    assert errors(missing)[0][0] == 404

    no_service = await client.get(f"/open311/v2/services/no.such.{fmt}")
    assert no_service.status_code == 404

    bad_date = await client.get(f"/open311/v2/requests.{fmt}", params={"start_date": "yesterday"})
    assert bad_date.status_code == 400


async def test_off_the_shelf_open311_clients(intake_url: str, keys: Keys) -> None:
    """civicbot (PyPI) lists services, posts a request and reads it back; georeport (PyPI)
    reads the same request back through the XML format."""
    endpoint = Endpoint(
        id="griddispatch", name="GridDispatch test", write=True, base_url=f"{intake_url}/open311/v2"
    )
    civic = Open311Client(endpoint, HttpTransport(rate_limiter=RateLimiter(min_interval=0)))

    def run() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None, list[Any]]:
        services = civic.list_services()
        prepared = civic.create_request(
            "heating.outage",
            dry_run=False,
            confirm="SEND",
            api_key=keys.resident_app,
            validate_remote=True,  # the client checks our service definition first
            lat=47.3543,
            lng=123.9182,
            description="Radiators cold since Monday",
            attributes={"whole_building": "no"},
            email="resident@example.org",
        )
        [created] = prepared.response
        read = civic.get_request(created["service_request_id"])
        xml_client = GeoReport(f"{intake_url}/open311/v2", output_format="xml")
        xml_read = xml_client.get_service_request(created["service_request_id"])
        return services, created, read, [xml_read, xml_client.get_service_list()]

    services, created, read, (xml_read, xml_services) = await asyncio.to_thread(run)
    assert any(s["service_code"] == "heating.outage" for s in services)
    assert read is not None
    assert read["service_request_id"] == created["service_request_id"]
    assert read["description"] == "Radiators cold since Monday"
    assert read["status"] == "open"
    assert xml_read["service_request_id"] == created["service_request_id"]
    assert xml_read["service_code"] == "heating.outage"
    assert len(xml_services) == len(services)


async def test_a_request_naming_only_a_poles_number_is_located_by_it(
    client: httpx.AsyncClient, keys: Keys
) -> None:
    """Open311 has no field for a facility: the service asks for the pole's number as an
    attribute, and the answer locates the request (without lat/long or an address)."""
    pole = f"SL-{uuid.uuid4().hex[:8]}"
    form = _form(keys, **{"attribute[pole_number]": pole})
    for field in ("lat", "long", "address_string"):
        del form[field]
    posted = await client.post("/open311/v2/requests.json", data=form)
    assert posted.status_code == 201, posted.text
    [created] = posted.json()
    case = (
        await client.get(f"/v1/cases/{created['service_request_id']}", headers=auth(keys.operator))
    ).json()
    assert case["location"]["facility_code"] == pole
    # an answer that is no facility's number stays an answer, and locates nothing
    vague = _form(keys, **{"attribute[pole_number]": "小区门口第三根"})
    for field in ("lat", "long", "address_string"):
        del vague[field]
    refused = await client.post("/open311/v2/requests.json", data=vague)
    assert refused.status_code == 400
    assert "lat" in refused.json()[0]["description"]
