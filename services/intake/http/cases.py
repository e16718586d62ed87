"""The native JSON API: `/v1/categories` and `/v1/cases`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from prometheus_client import Counter

from services.intake import reports, store
from services.intake.auth import Principal, Role
from services.intake.http.deps import (
    CREDENTIALS,
    ApiError,
    HeaderParam,
    caller,
    case_scope,
    documented,
    state,
)
from services.intake.lifecycle import (
    Action,
    ExtensionNotAllowed,
    IllegalTransition,
    MergeRefused,
    NotPermitted,
    Status,
    UrgedRecently,
)
from services.intake.models import (
    CasePage,
    CaseView,
    CategoryView,
    ErasureAccepted,
    ErasureIn,
    ErrorBody,
    ReportAccepted,
    ReportIn,
    StepAccepted,
    StepIn,
)
from services.intake.views import case_view
from shared import text
from shared.catalogue import TASK_GROUP, Category, check_attributes
from shared.ids import case_reference
from shared.metrics import REGISTRY

router = APIRouter(prefix="/v1", tags=["cases"])

CASES_REPORTED = Counter(
    "griddispatch_cases_reported_total",
    "Reports accepted by intake",
    ["channel", "category"],
    registry=REGISTRY,
)

CASE_STEPS_ON_TIME = Counter(
    "griddispatch_case_steps_total",
    "Acknowledgements and resolutions taken, by whether they kept their deadline",
    ["department", "step", "on_time"],
    registry=REGISTRY,
)
CASE_RATINGS = Counter(
    "griddispatch_case_ratings_total",
    "Residents' ratings of closed cases (1-5 stars)",
    ["department", "rating"],
    registry=REGISTRY,
)

CASES_MERGED = Counter(
    "griddispatch_cases_merged_total",
    "Reports merged into another case of the same problem, and cases resolved with the case "
    "they were merged into",
    ["department", "step"],
    registry=REGISTRY,
)

CASES_URGED = Counter(
    "griddispatch_cases_urged_total",
    "Cases their resident (or the hotline for them) pressed for (催办)",
    ["department"],
    registry=REGISTRY,
)
CASE_EXTENSIONS = Counter(
    "griddispatch_case_extensions_total",
    "Extensions of a resolve deadline asked for by departments and workers, and operators' answers",
    ["department", "step"],
    registry=REGISTRY,
)
_EXTENSION_STEPS = {
    Action.REQUEST_EXTENSION: "requested",
    Action.EXTEND: "granted",
    Action.REFUSE_EXTENSION: "refused",
}

CaseId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
TRACKING_TOKEN = HeaderParam("X-Tracking-Token", "the resident's tracking token", max_length=64)
IDEMPOTENCY_KEY = HeaderParam(
    "Idempotency-Key",
    "a retry with the same key returns the first answer and creates nothing",
    min_length=1,
    max_length=255,
)
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody},
    403: {"model": ErrorBody},
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody},
    429: {"model": ErrorBody},
}


def refuse_nul(raw: bytes) -> None:
    """422 naming the field of a JSON body whose text holds a NUL character (see `text`)."""
    at = text.nul_in_json(raw)
    if at is not None:
        raise ApiError(422, "invalid_text", f"{at}: {text.REASON}", field=at)


@router.get("/categories", response_model=list[CategoryView])
async def list_categories(request: Request) -> list[CategoryView]:
    """The service catalogue: what can be reported, and how fast it is handled."""
    st = state(request)
    return [
        CategoryView(
            code=c.code,
            name=c.name,
            group=c.group,
            department=c.department,
            priority=c.priority,
            acknowledge_hours=c.deadlines.acknowledge_hours,
            resolve_hours=c.deadlines.resolve_hours,
            working_time=c.deadlines.working_time,
        )
        for c in (await st.catalogue.offered()).values()
    ]


def unknown_category(code: str, every: Mapping[str, Category]) -> ApiError:
    """422 for a category that takes no new report or task (unknown, or retired)."""
    reason = (
        f"category {code!r} is no longer offered (retired from the catalogue)"
        if code in every
        else f"unknown category {code!r}"
    )
    return ApiError(422, "unknown_category", reason, field="category")


def idempotency_key_reused() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request body",
        field="Idempotency-Key",
    )


async def accept_report(
    request: Request,
    body: ReportIn,
    principal: Principal | None,
    idempotency_key: str | None,
    raw: bytes,
) -> reports.Accepted:
    """Shared by the JSON API and Open311: validate against the catalogue, then store."""
    st = state(request)
    category = (await st.catalogue.offered()).get(body.category)
    if category is None:
        raise unknown_category(body.category, await st.catalogue.get())
    if category.group == TASK_GROUP:
        raise ApiError(
            422,
            "unknown_category",
            f"{body.category!r} is a grid task's category: operators issue those with "
            "POST /v1/tasks",
            field="category",
        )
    problems = check_attributes(category, body.attributes)
    if problems:
        field, reason = problems[0]
        raise ApiError(422, "invalid_attribute", reason, field=field)
    facility = category.facility_code(body.attributes)
    if facility is not None and body.location.facility_code is None:
        # a pole's number given as the category asks for it locates the report like
        # `location.facility_code` (Open311 clients have no other way to give it)
        body = body.model_copy(
            update={"location": body.location.model_copy(update={"facility_code": facility})}
        )
    if body.sensitivity is not None and (
        principal is None or principal.role not in (Role.WORKER, Role.OPERATOR, Role.ADMIN)
    ):
        raise ApiError(
            403,
            "forbidden_field",
            "only grid workers and operators may set care flags",
            field="sensitivity",
        )
    idem = None
    if idempotency_key is not None:
        owner = store.new_idempotency_owner(
            principal, request.client.host if request.client else ""
        )
        idem = (owner, idempotency_key, store.request_fingerprint(raw))
    accepted = await st.writer.submit(reports.prepare(body, principal, idempotency=idem))
    if accepted.conflict:
        raise idempotency_key_reused()
    if not accepted.replayed:
        CASES_REPORTED.labels(body.channel.value, body.category).inc()
    return accepted


@router.post(
    "/cases",
    status_code=202,
    response_model=ReportAccepted,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS, IDEMPOTENCY_KEY),
)
async def report_case(body: ReportIn, request: Request) -> Response:
    """Report an issue. Answers 202 once the case is durably stored; a retry with the same
    `Idempotency-Key` returns the first answer and creates nothing."""
    principal = await caller(request, required=True)
    raw = await request.body()
    refuse_nul(raw)
    accepted = await accept_report(request, body, principal, IDEMPOTENCY_KEY.read(request), raw)
    base = state(request).settings.public_base_url
    # Built by hand: validating our own answer against the response model costs CPU per request.
    return Response(
        orjson.dumps(
            {
                "case_id": accepted.case_id,
                "tracking_token": accepted.tracking_token,
                "status": Status.REPORTED.value,
                "status_url": f"{base}/v1/cases/{accepted.case_id}",
                "possible_duplicate_of": accepted.possible_duplicate_of,
                "reference": case_reference(accepted.case_id),
            }
        ),
        status_code=202,
        media_type="application/json",
    )


@router.get(
    "/cases/{case_id}",
    response_model=CaseView,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS, TRACKING_TOKEN),
)
async def get_case(case_id: CaseId, request: Request) -> CaseView:
    """One case with its timeline: for its department or worker, operators, or the resident
    holding its tracking token."""
    st = state(request)
    principal = await caller(request, required=False)
    tracking_token = TRACKING_TOKEN.read(request)
    async with st.pool.acquire() as conn:
        row = await store.get_case(conn, case_id)
        if row is None:
            raise ApiError(404, "not_found", f"no case {case_id}")
        resident = tracking_token is not None and store.may_see(None, row, tracking_token)
        if not (resident or store.may_see(principal, row, None)):
            if principal is None and tracking_token is None:
                raise ApiError(401, "missing_api_key", "an API key or a tracking token is needed")
            raise ApiError(403, "forbidden", "this case is not assigned to you")
        events = await store.timeline(conn, case_id)
        merged = await store.merged_into(conn, case_id)
    categories = await st.catalogue.get()
    view = case_view(
        row,
        viewer=None if resident else principal,
        resident=resident,
        category=categories.get(row["category"]),
        timeline=events,
        department_name=st.department_name(row["department"]),
    )
    view.merged_cases = merged
    return view


@router.get(
    "/cases", response_model=CasePage, responses=ERRORS, openapi_extra=documented(*CREDENTIALS)
)
async def list_cases(
    request: Request,
    status: Annotated[list[Status] | None, Query()] = None,
    category: Annotated[list[str] | None, Query(max_length=50)] = None,
    department: Annotated[str | None, Query(max_length=64)] = None,
    grid: Annotated[str | None, Query(max_length=64)] = None,
    district: Annotated[str | None, Query(max_length=64)] = None,
    reported_after: datetime | None = None,
    reported_before: datetime | None = None,
    updated_after: datetime | None = None,
    updated_before: datetime | None = None,
    escalation_level: Annotated[int | None, Query(ge=0, le=10, description="at least")] = None,
    reference: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9A-Fa-f]{8}$",
            description="the short reference in the resident's messages (last 8 hex digits "
            "of the case id)",
        ),
    ] = None,
    task: Annotated[
        str | None, Query(max_length=64, description="a grid task's cases (GET /v1/tasks)")
    ] = None,
    overdue: Annotated[
        bool | None,
        Query(
            description="true: only open cases past their resolve deadline (a task's `overdue`); "
            "false: only those that are not"
        ),
    ] = None,
    extension_asked: Annotated[
        bool | None,
        Query(
            description="true: only cases whose department or worker asked for more time and "
            "wait for an operator's answer (`extend` or `refuse_extension`); false: the others"
        ),
    ] = None,
    reporter_phone: Annotated[
        str | None,
        Query(
            pattern=r"^\+?[0-9 ()-]{7,20}$",
            description="operators only: cases whose reporter gave this phone number (a "
            "resident calling the hotline without their reference; +86, spaces and dashes "
            "as they come)",
        ),
    ] = None,
    on_behalf_of: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            description="operators only: proxy reports for this resident id or card code",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CasePage:
    """Cases visible to the caller, newest first. Departments see only their own, workers
    only those assigned to them, operators all."""
    st = state(request)
    scope = await case_scope(request, department, reading="cases")
    principal = scope.principal
    for field, given in (("reporter_phone", reporter_phone), ("on_behalf_of", on_behalf_of)):
        if given is not None and not principal.sees_everything:
            raise ApiError(
                403, "forbidden", "only operators look cases up by who reported them", field=field
            )
    phone = store.phone_digits(reporter_phone) if reporter_phone else None
    if phone is not None and len(phone) < 7:
        raise ApiError(
            422, "invalid_request", "give at least 7 digits of the number", field="reporter_phone"
        )
    try:
        after = store.decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise ApiError(422, "invalid_cursor", str(exc), field="cursor") from exc
    filters = store.CaseFilter(
        status=[s.value for s in status] if status else None,
        category=category,
        department=scope.department,
        grid_id=grid,
        district=district,
        worker_id=scope.worker_id,
        reported_after=reported_after,
        reported_before=reported_before,
        updated_after=updated_after,
        updated_before=updated_before,
        min_escalation_level=escalation_level,
        reference=reference,
        task_id=task,
        overdue=overdue,
        extension_asked=extension_asked,
        reporter_phone=phone,
        on_behalf_of=on_behalf_of,
    )
    async with st.pool.acquire() as conn:
        rows = await store.list_cases(conn, filters, limit=limit + 1, cursor=after)
    categories = await st.catalogue.get()
    page = rows[:limit]
    return CasePage(
        items=[
            case_view(
                r,
                viewer=principal,
                resident=False,
                category=categories.get(r["category"]),
                department_name=st.department_name(r["department"]),
            )
            for r in page
        ],
        next_cursor=store.encode_cursor(page[-1]["reported_at"], page[-1]["case_id"])
        if len(rows) > limit
        else None,
    )


@router.post(
    "/cases/{case_id}/events",
    status_code=202,
    response_model=StepAccepted,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS, TRACKING_TOKEN),
)
async def take_step(case_id: CaseId, body: StepIn, request: Request) -> StepAccepted:
    """Acknowledge, add a progress note, resolve, request a transfer, verify and close, merge
    into another case of the same problem, ask for more time (departments, workers,
    operators); grant or refuse more time (operators); reopen, rate or urge (the resident, with
    the tracking token; the hotline's operator may urge for them)."""
    refuse_nul(await request.body())
    st = state(request)
    principal = await caller(request, required=False)
    tracking_token = TRACKING_TOKEN.read(request)
    if principal is None and tracking_token is None:
        raise ApiError(401, "missing_api_key", "an API key or a tracking token is needed")
    try:
        taken = await store.apply_step(
            st.pool,
            case_id,
            body.action,
            principal=principal,
            tracking_token=tracking_token,
            note=body.note,
            reason=body.reason,
            photo_urls=tuple(str(u) for u in body.photo_urls),
            rating=body.rating,
            into=body.into,
            until=body.until,
            verify_window_s=st.settings.verify_window_s,
            urge_interval_s=st.settings.urge_interval_s,
        )
    except store.CaseNotFound as exc:
        raise ApiError(404, "not_found", f"no case {case_id}") from exc
    except store.Forbidden as exc:
        raise ApiError(403, "forbidden", "this case is not assigned to you") from exc
    except NotPermitted as exc:
        raise ApiError(403, "forbidden", str(exc), field="action") from exc
    except IllegalTransition as exc:
        raise ApiError(409, "illegal_transition", str(exc), field="action") from exc
    except store.MergeTargetUnknown as exc:
        raise ApiError(
            422, "unknown_case", f"no case {body.into} among those you can see", field="into"
        ) from exc
    except MergeRefused as exc:
        raise ApiError(409, "merge_refused", str(exc), field="into") from exc
    except ExtensionNotAllowed as exc:
        raise ApiError(409, "extension_not_allowed", str(exc), field="until") from exc
    except UrgedRecently as exc:
        raise ApiError(409, "urged_recently", str(exc), field="action") from exc
    _count_step(body.action, body.rating, taken)
    return StepAccepted(case_id=case_id, status=taken.status, event_id=str(taken.envelope.event_id))


@router.post(
    "/cases/{case_id}/erasure",
    status_code=202,
    response_model=ErasureAccepted,
    responses=ERRORS,
    openapi_extra=documented(*CREDENTIALS, TRACKING_TOKEN),
)
async def erase_personal_data(
    case_id: CaseId, body: ErasureIn, request: Request
) -> ErasureAccepted:
    """Erase the reporter's personal data at their request: the resident themselves (with the
    case's tracking token) or an operator acting on it. The contact, whom it was reported for
    and the care flags are erased here at once, and by the other services when they read the
    `PersonalDataErased` event. The case stays."""
    refuse_nul(await request.body())
    st = state(request)
    principal = await caller(request, required=False)
    tracking_token = TRACKING_TOKEN.read(request)
    if principal is None and tracking_token is None:
        raise ApiError(
            401, "missing_api_key", "an operator's API key or a tracking token is needed"
        )
    try:
        async with st.pool.acquire() as conn:
            env = await store.erase_personal_data(
                conn,
                case_id,
                reason=body.reason,
                principal=principal,
                tracking_token=tracking_token,
            )
    except store.CaseNotFound as exc:
        raise ApiError(404, "not_found", f"no case {case_id}") from exc
    except store.Forbidden as exc:
        raise ApiError(403, "forbidden", "this case is not yours") from exc
    except NotPermitted as exc:
        raise ApiError(403, "forbidden", str(exc)) from exc
    return ErasureAccepted(case_id=case_id, erased_at=env.occurred_at, event_id=str(env.event_id))


def _count_step(action: Action, rating: int | None, taken: store.StepTaken) -> None:
    """The counters behind the dashboards' response, resolution and satisfaction rates."""
    department = taken.department or "none"
    if taken.met_deadline is not None:
        CASE_STEPS_ON_TIME.labels(department, action.value, str(taken.met_deadline).lower()).inc()
    if action is Action.RATE and rating is not None:
        CASE_RATINGS.labels(department, str(rating)).inc()
    if action is Action.MERGE:
        CASES_MERGED.labels(department, "merged").inc()
    if action in _EXTENSION_STEPS:
        CASE_EXTENSIONS.labels(department, _EXTENSION_STEPS[action]).inc()
    if action is Action.URGE:
        CASES_URGED.labels(department).inc()
    if taken.followers:
        CASES_MERGED.labels(department, "resolved_with").inc(taken.followers)
