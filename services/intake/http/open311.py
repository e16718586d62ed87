"""Open311 GeoReport v2 (https://wiki.open311.org/GeoReport_v2/), in JSON and XML.

Existing 311 apps and tools post here. Reads are public when `open311_public_read` is on (as
the spec expects) and carry no personal data: phone numbers, e-mail addresses and identity
numbers written into a description or a status note are masked, and for personal-matter
categories (social services, disputes) the description, notes and address are withheld
altogether.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import ValidationError

from services.intake import store
from services.intake.http.cases import accept_report
from services.intake.http.deps import ApiError, IntakeState, State, client_address
from services.intake.lifecycle import Status
from services.intake.models import ReportIn
from shared import text
from shared.catalogue import TASK_GROUP, Category
from shared.events import Channel
from shared.privacy import mask_in_text

router = APIRouter(prefix="/open311/v2", tags=["open311"])

Format = Annotated[Literal["json", "xml"], Path(description="json or xml")]
PRIVATE_GROUPS = {"services", "disputes"}  # personal matters: no description in public reads
MAX_RESULTS = 1000


class Open311Error(Exception):
    """Rendered as the spec's error list: [{"code": 400, "description": "…"}]."""

    def __init__(self, code: int, description: str, fmt: str = "json") -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.fmt = fmt


# --- rendering ----------------------------------------------------------------------------


def _xml_value(parent: ET.Element, key: str, value: Any) -> None:
    el = ET.SubElement(parent, key)
    if isinstance(value, bool):
        el.text = "true" if value else "false"
    elif value is not None:
        el.text = str(value)


def _xml_list(root_name: str, item_name: str, items: Sequence[Mapping[str, Any]]) -> bytes:
    root = ET.Element(root_name)
    for item in items:
        node = ET.SubElement(root, item_name)
        _xml_fill(node, item)
    return _xml_bytes(root)


def _xml_bytes(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body


def _xml_fill(node: ET.Element, item: Mapping[str, Any]) -> None:
    for key, value in item.items():
        if isinstance(value, list):
            holder = ET.SubElement(node, key)
            for sub in value:
                child = ET.SubElement(holder, key.rstrip("s") if key != "values" else "value")
                if isinstance(sub, Mapping):
                    _xml_fill(child, sub)
                else:
                    child.text = str(sub)
        elif isinstance(value, Mapping):
            _xml_fill(ET.SubElement(node, key), value)
        else:
            _xml_value(node, key, value)


def render(
    fmt: str,
    root: str,
    item: str,
    data: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    status: int = 200,
) -> Response:
    if fmt == "xml":
        if isinstance(data, Mapping):
            node = ET.Element(root)
            _xml_fill(node, data)
            body = _xml_bytes(node)
        else:
            body = _xml_list(root, item, data)
        return Response(body, status_code=status, media_type="text/xml; charset=utf-8")
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(exc: Open311Error) -> Response:
    return render(
        exc.fmt,
        "errors",
        "error",
        [{"code": exc.code, "description": exc.description}],
        status=exc.code,
    )


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _name(category: Category | None, code: str, locale: str) -> str:
    return category.display_name(locale) if category else code


# --- discovery and services ---------------------------------------------------------------


@router.get("/discovery.{fmt}")
async def discovery(fmt: Format, request: Request, st: State) -> Response:
    base = st.settings.public_base_url or str(request.base_url).rstrip("/")
    data: dict[str, Any] = {
        "changeset": "2026-11-27T00:00:00Z",
        "contact": "GridDispatch operators",
        "key_service": "Ask the city's operators for an API key (griddispatch keys create).",
        "endpoints": [
            {
                "specification": "http://wiki.open311.org/GeoReport_v2",
                "url": f"{base}/open311/v2",
                "changeset": "2026-11-27T00:00:00Z",
                "type": "production",
                "formats": ["application/json", "text/xml"],
            }
        ],
    }
    if fmt == "xml":
        root = ET.Element("discovery")
        for key in ("changeset", "contact", "key_service"):
            _xml_value(root, key, data[key])
        endpoints = ET.SubElement(root, "endpoints")
        endpoint = ET.SubElement(endpoints, "endpoint")
        ep = data["endpoints"][0]
        for key in ("specification", "url", "changeset", "type"):
            _xml_value(endpoint, key, ep[key])
        formats = ET.SubElement(endpoint, "formats")
        for f in ep["formats"]:
            _xml_value(formats, "format", f)
        return Response(_xml_bytes(root), media_type="text/xml; charset=utf-8")
    return render(fmt, "discovery", "", data)


@router.get("/services.{fmt}")
async def services(
    fmt: Format,
    st: State,
    jurisdiction_id: Annotated[str | None, Query(max_length=64)] = None,
    locale: Annotated[str, Query(max_length=10)] = "zh-CN",
) -> Response:
    items = [
        {
            "service_code": c.code,
            "service_name": c.display_name(locale),
            "description": c.display_name("en" if locale.startswith("zh") else "zh-CN"),
            "metadata": bool(c.attributes),
            "type": "realtime",
            "keywords": ",".join(c.keywords),
            "group": c.group,
        }
        for c in (await st.catalogue.offered()).values()
        if c.group != TASK_GROUP
    ]
    return render(fmt, "services", "service", items)


@router.get("/services/{service_code}.{fmt}")
async def service_definition(
    service_code: Annotated[str, Path(max_length=64)],
    fmt: Format,
    st: State,
    jurisdiction_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    category = (await st.catalogue.offered()).get(service_code)
    if category is None:
        raise Open311Error(404, f"service_code {service_code} not found", fmt)
    data = {
        "service_code": category.code,
        "attributes": [
            {
                "variable": True,
                "code": a.code,
                "datatype": a.datatype,
                "required": a.required,
                "datatype_description": None,
                "order": i + 1,
                "description": a.description,
                "values": [{"key": v.key, "name": v.name} for v in a.values],
            }
            for i, a in enumerate(category.attributes)
        ],
    }
    return render(fmt, "service_definition", "", data)


# --- requests -----------------------------------------------------------------------------


def _report_from_form(
    form: dict[str, str], attributes: dict[str, str], fmt: str, facility_code: str | None = None
) -> ReportIn:
    def num(key: str) -> float | None:
        raw = form.get(key)
        if raw in (None, ""):
            return None
        try:
            return float(raw)
        except ValueError as exc:
            raise Open311Error(400, f"{key}: must be a number", fmt) from exc

    name = " ".join(p for p in (form.get("first_name"), form.get("last_name")) if p) or None
    reporter = None
    if name or form.get("email") or form.get("phone"):
        reporter = {
            "name": name,
            "email": form.get("email") or None,
            "phone": form.get("phone") or None,
        }
    payload = {
        "category": form.get("service_code", ""),
        "description": form.get("description") or "",
        "location": {
            "lat": num("lat"),
            "lon": num("long"),
            "address": form.get("address_string") or None,
            "building_code": form.get("address_id") or None,
            "facility_code": facility_code,
        },
        "channel": Channel.OPEN311.value,
        "reporter": reporter,
        "media_urls": [form["media_url"]] if form.get("media_url") else [],
        "attributes": attributes,
    }
    try:
        return ReportIn.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = open311_field(".".join(str(p) for p in first["loc"]) or "request")
        raise Open311Error(400, f"{field}: {first['msg']}", fmt) from exc


def open311_field(field: str) -> str:
    """Our field names in the words of the Open311 form."""
    if field.startswith("attributes."):
        return f"attribute[{field.removeprefix('attributes.')}]"
    return {
        "category": "service_code",
        "location": "lat",
        "location.lat": "lat",
        "location.lon": "long",
        "location.address": "address_string",
        "location.building_code": "address_id",
        "media_urls": "media_url",
        "media_urls.0": "media_url",
        "reporter.phone": "phone",
        "reporter.email": "email",
        "reporter.name": "first_name",
    }.get(field, field)


@router.post("/requests.{fmt}")
async def post_request(fmt: Format, request: Request, st: State) -> Response:
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        raise Open311Error(
            400, "send the request form-encoded (application/x-www-form-urlencoded)", fmt
        )
    raw = await request.body()
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise Open311Error(400, "the form is not UTF-8", fmt) from exc
    nul = text.nul_in_pairs(pairs)
    if nul is not None:
        raise Open311Error(400, f"{nul}: {text.REASON}", fmt)
    form: dict[str, str] = {}
    attributes: dict[str, str] = {}
    for key, value in pairs:
        if key.startswith("attribute[") and "]" in key:
            code = key[len("attribute[") : key.index("]")]
            attributes[code] = (attributes[code] + "," + value) if code in attributes else value
        else:
            form[key] = value
    api_key = form.get("api_key")
    if not api_key:
        raise Open311Error(403, "api_key is required to post a request", fmt)
    principal = await st.keys.authenticate(api_key)
    if principal is None:
        raise Open311Error(403, "api_key is unknown or revoked", fmt)
    wait = await st.limiter.check(key_id=str(principal.key_id), address=client_address(request))
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests",
            headers={"Retry-After": str(int(wait + 0.999))},
        )
    # the number on a pole, asked as one of the service's attributes, is a location of its
    # own: a request may give it instead of lat/long or an address
    category = (await st.catalogue.offered()).get(form.get("service_code", ""))
    facility = category.facility_code(attributes) if category else None
    body = _report_from_form(form, attributes, fmt, facility)
    try:
        accepted = await accept_report(request, body, principal, None, raw)
    except ApiError as exc:
        field = open311_field(exc.field or "request")
        message = str(exc.detail).replace("unknown category", "unknown service_code")
        raise Open311Error(
            400 if exc.status_code == 422 else exc.status_code, f"{field}: {message}", fmt
        ) from exc
    notice = (
        f"possible duplicate of {accepted.possible_duplicate_of}"
        if accepted.possible_duplicate_of
        else "Your report was received."
    )
    return render(
        fmt,
        "service_requests",
        "request",
        [
            {
                "service_request_id": accepted.case_id,
                "token": accepted.tracking_token,
                "service_notice": notice,
                "account_id": None,
            }
        ],
        status=201,
    )


def _open311_request(
    row: Mapping[str, Any],
    category: Category | None,
    locale: str,
    notes: str | None,
    st: IntakeState,
) -> dict[str, Any]:
    public = category is not None and category.group not in PRIVATE_GROUPS
    media = row["media_urls"]
    if isinstance(media, str):
        media = orjson.loads(media)
    names = (store.reporter_name(row),)  # a note ("已联系王秀兰") or the text may name them
    notes = mask_in_text(notes, names=names) if notes and public else None
    if row["status"] == Status.MERGED.value and row["merged_into"]:
        merged = (
            f"与问题 {row['merged_into']} 合并处理" if locale.startswith("zh")
            else f"merged with request {row['merged_into']} (the same problem)"
        )  # fmt: skip
        notes = f"{merged}: {notes}" if notes else merged
    return {
        "service_request_id": row["case_id"],
        "status": "closed" if row["status"] == Status.CLOSED.value else "open",
        # a worker's note may name the resident's number too
        "status_notes": notes,
        "service_name": _name(category, row["category"], locale),
        "service_code": row["category"],
        # public: what a resident wrote of themselves into it (a phone number, an id) is masked
        "description": mask_in_text(row["description"], names=names) if public else None,
        # the department's name, as the directory says; its code until the directory knows it
        "agency_responsible": st.department_name(row["department"]) or row["department"],
        "service_notice": None,
        "requested_datetime": _iso(row["reported_at"]),
        "updated_datetime": _iso(row["updated_at"]),
        "expected_datetime": _iso(row["resolve_by"]),
        "address": row["address"] if public else None,
        "address_id": row["building_code"] if public else None,
        "zipcode": None,
        "lat": row["lat"],
        "long": row["lon"],
        "media_url": (media[0] if media else None) if public else None,
    }


async def _latest_notes(conn: Any, case_ids: list[str]) -> dict[str, str]:
    rows = await conn.fetch(
        """SELECT DISTINCT ON (case_id) case_id, payload->>'note' AS note FROM intake.case_events
           WHERE case_id = ANY($1) AND payload ? 'note' AND payload->>'note' IS NOT NULL
           ORDER BY case_id, occurred_at DESC""",
        case_ids,
    )
    return {r["case_id"]: r["note"] for r in rows}


def _parse_time(value: str | None, name: str, fmt: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Open311Error(400, f"{name}: not a W3C date-time", fmt) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_public_read(st: State, fmt: str) -> None:
    if not st.settings.open311_public_read:
        raise Open311Error(403, "reading requests needs an api_key on this server", fmt)


@router.get("/requests.{fmt}")
async def get_requests(
    fmt: Format,
    st: State,
    service_request_id: Annotated[str | None, Query(max_length=4000)] = None,
    service_code: Annotated[str | None, Query(max_length=2000)] = None,
    start_date: Annotated[str | None, Query(max_length=40)] = None,
    end_date: Annotated[str | None, Query(max_length=40)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    updated_after: Annotated[str | None, Query(max_length=40)] = None,
    updated_before: Annotated[str | None, Query(max_length=40)] = None,
    locale: Annotated[str, Query(max_length=10)] = "zh-CN",
    jurisdiction_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    _check_public_read(st, fmt)
    if service_request_id:
        filters = store.CaseFilter(
            case_ids=[s for s in service_request_id.split(",") if s][:MAX_RESULTS],
            reported_only=True,
        )
    else:
        statuses = None
        if status:
            wanted = {s.strip() for s in status.split(",")}
            if not wanted <= {"open", "closed"}:
                raise Open311Error(400, "status: must be open, closed or both", fmt)
            if wanted == {"closed"}:
                statuses = [Status.CLOSED.value]
            elif wanted == {"open"}:
                statuses = [s.value for s in Status if s is not Status.CLOSED]
        start = _parse_time(start_date, "start_date", fmt)
        end = _parse_time(end_date, "end_date", fmt)
        if start is None and end is None and updated_after is None and updated_before is None:
            start = datetime.now(UTC) - timedelta(days=90)  # the spec's default window
        if start and end and end < start:
            raise Open311Error(400, "end_date: is before start_date", fmt)
        filters = store.CaseFilter(
            status=statuses,
            category=[c for c in service_code.split(",") if c] if service_code else None,
            reported_after=start,
            reported_before=end,
            updated_after=_parse_time(updated_after, "updated_after", fmt),
            updated_before=_parse_time(updated_before, "updated_before", fmt),
            reported_only=True,
        )
    categories = await st.catalogue.get()
    async with st.pool.acquire() as conn:
        rows = await store.list_cases(conn, filters, limit=MAX_RESULTS)
        notes = await _latest_notes(conn, [r["case_id"] for r in rows])
    items = [
        _open311_request(r, categories.get(r["category"]), locale, notes.get(r["case_id"]), st)
        for r in rows
    ]
    return render(fmt, "service_requests", "request", items)


@router.get("/requests/{service_request_id}.{fmt}")
async def get_request(
    service_request_id: Annotated[str, Path(max_length=64)],
    fmt: Format,
    st: State,
    locale: Annotated[str, Query(max_length=10)] = "zh-CN",
    jurisdiction_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    _check_public_read(st, fmt)
    async with st.pool.acquire() as conn:
        row = await store.get_case(conn, service_request_id)
        if row is None or row["task_id"] is not None:  # grid tasks' cases are not requests
            raise Open311Error(404, f"service_request_id {service_request_id} not found", fmt)
        notes = await _latest_notes(conn, [service_request_id])
    category = (await st.catalogue.get()).get(row["category"])
    return render(
        fmt,
        "service_requests",
        "request",
        [_open311_request(row, category, locale, notes.get(service_request_id), st)],
    )


@router.get("/tokens/{token}.{fmt}")
async def get_token(
    token: Annotated[str, Path(max_length=64)],
    fmt: Format,
    st: State,
    jurisdiction_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    async with st.pool.acquire() as conn:
        row = await store.find_by_token(conn, token)
    if row is None:
        raise Open311Error(404, f"token {token} not found", fmt)
    return render(
        fmt,
        "service_requests",
        "request",
        [{"service_request_id": row["case_id"], "token": token}],
    )
