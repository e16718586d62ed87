"""The JSON API's request and response bodies (they make the OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from services.intake.lifecycle import Action, Status
from shared import events
from shared.catalogue import FACILITY_CODE
from shared.events import Channel, Priority
from shared.ids import new_event_id

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
MediaUrl = Annotated[AnyHttpUrl, Field(description="http(s) URL of a photo or video")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocationIn(Strict):
    lat: float | None = Field(default=None, ge=-90, le=90, description="WGS84 latitude")
    lon: float | None = Field(default=None, ge=-180, le=180, description="WGS84 longitude")
    address: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None
    building_code: (
        Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9._-]{1,64}$")]
        | None
    ) = None
    facility_code: (
        Annotated[str, StringConstraints(strip_whitespace=True, pattern=FACILITY_CODE.pattern)]
        | None
    ) = Field(
        default=None,
        description="the number on a street light, a manhole cover, a heating substation: "
        "locates the report when the city has it on file",
    )

    @model_validator(mode="after")
    def _complete(self) -> LocationIn:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon must be given together")
        if (
            self.lat is None
            and not self.address
            and not self.building_code
            and not self.facility_code
        ):
            raise ValueError(
                "give a coordinate (lat, lon), a building_code, a facility_code or an address"
            )
        return self


class ContactIn(Strict):
    name: Annotated[str, StringConstraints(strip_whitespace=True, max_length=100)] | None = None
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 ()-]{5,20}$")] | None = None
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]
        | None
    ) = None
    consent_to_notify: bool = Field(
        default=False, description="the resident agrees to SMS or e-mail updates"
    )
    language: Literal["zh-CN", "en"] = Field(
        default="zh-CN", description="the language of SMS and e-mail updates"
    )


class SensitivityIn(Strict):
    """Set by grid workers and operators only: flags they know from their households."""

    care_groups: list[
        Literal[
            "elderly_alone",
            "very_old",
            "disabled",
            "lost_only_child",
            "low_income",
            "subsistence_allowance",
            "women_children_hardship",
        ]
    ] = Field(default=[], max_length=7)
    community_correction: bool = False


class ReportIn(Strict):
    category: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,63}$")] = Field(
        description="a service code from GET /v1/categories"
    )
    description: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)
    ]
    location: LocationIn
    channel: Channel = Channel.API
    reporter: ContactIn | None = None
    media_urls: list[MediaUrl] = Field(default=[], max_length=5)
    on_behalf_of: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None
    ) = Field(
        default=None,
        description="proxy reports: the resident's id or the code printed on their card",
    )
    attributes: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")],
        Annotated[str, StringConstraints(max_length=500)],
    ] = Field(default={}, max_length=30, description="answers to the category's questions")
    sensitivity: SensitivityIn | None = None

    @model_validator(mode="after")
    def _reported(self) -> ReportIn:
        if self.channel is Channel.TASK:
            raise ValueError("channel task is for grid tasks' cases: issue one with POST /v1/tasks")
        return self


GridKind = Literal["comprehensive", "dedicated"]


class TaskIn(Strict):
    """A task for every grid of an area at once (an emergency, a campaign)."""

    category: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{0,63}$")] = Field(
        description="a service code (the `grid-tasks` group: door-to-door checks, notices); "
        "its deadlines and department apply"
    )
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    instructions: Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)] = ""
    area: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = Field(
        description="a district, street office, community or grid code, or `city`"
    )
    grid_kinds: list[GridKind] = Field(
        default=["comprehensive"], min_length=1, max_length=2, description="which grids of it"
    )
    department: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] | None = (
        Field(default=None, description="default: the category's department (and rules)")
    )
    due_by: AwareDatetime | None = Field(
        default=None,
        description="every grid's case is to be resolved by then, with a time zone (e.g. "
        "`2026-12-01T18:00:00+08:00`); in the future, within 90 days; default: the category's "
        "deadlines",
    )

    @field_validator("due_by")
    @classmethod
    def _ahead(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            now = datetime.now(UTC)
            if value <= now:
                raise ValueError("must be in the future")
            if value > now + timedelta(days=90):
                raise ValueError("must be within 90 days")
        return value

    def issued(self, by: str) -> events.GridTaskIssued:
        """The task as issued now by `by` (over HTTP or at the command line)."""
        return events.GridTaskIssued(
            task_id=str(new_event_id()),
            category=self.category,
            title=self.title,
            instructions=self.instructions,
            area=self.area,
            grid_kinds=tuple(dict.fromkeys(self.grid_kinds)),
            department=self.department,
            issued_by=by[:64],
            issued_at=datetime.now(UTC),
            due_by=self.due_by,
        )


class TaskAccepted(BaseModel):
    task_id: str
    status_url: str


class TaskView(BaseModel):
    task_id: str
    category: str
    title: str
    instructions: str
    area: str
    grid_kinds: list[str]
    department: str | None
    issued_by: str
    issued_at: datetime
    due_by: datetime | None = Field(default=None, description="the task's own deadline, if any")
    cases: int = Field(description="the grids' cases made so far (one per grid)")
    by_status: dict[str, int] = Field(description="those cases by status")
    overdue: int = Field(description="open cases past their resolve deadline")


class ReportAccepted(BaseModel):
    case_id: str
    tracking_token: str = Field(description="lets the resident follow, reopen and rate the case")
    status: Status
    status_url: str
    possible_duplicate_of: str | None = None
    reference: str = Field(description="a short reference to quote to the hotline")


class StepIn(Strict):
    action: Action
    note: Annotated[str, StringConstraints(strip_whitespace=True, max_length=4000)] | None = None
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    photo_urls: list[MediaUrl] = Field(default=[], max_length=5)
    rating: int | None = Field(default=None, ge=1, le=5)
    into: (
        Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]
        | None
    ) = Field(default=None, description="merge: the open case that reports the same problem")

    until: AwareDatetime | None = Field(
        default=None,
        description="request_extension: the resolve deadline asked for; extend: the new one "
        "(default: the one asked for)",
    )

    @model_validator(mode="after")
    def _fields_for_action(self) -> StepIn:
        extending = (Action.REQUEST_EXTENSION, Action.EXTEND, Action.REFUSE_EXTENSION)
        if self.action in extending and not self.reason:
            raise ValueError(f"a reason is required to {self.action.value}")
        if self.action is Action.REQUEST_EXTENSION and self.until is None:
            raise ValueError("until (the resolve deadline asked for) is required")
        if self.until is not None and self.action not in extending[:2]:
            raise ValueError("until is only for request_extension and extend")
        if self.action is Action.RATE and self.rating is None:
            raise ValueError("rating (1–5) is required to rate a case")
        if (self.action is Action.MERGE) != (self.into is not None):
            raise ValueError(
                "into (the case to merge into) is required to merge"
                if self.action is Action.MERGE
                else "into is only for merging"
            )
        if self.action in (Action.REQUEST_TRANSFER, Action.REOPEN) and not self.reason:
            raise ValueError(f"a reason is required to {self.action.value}")
        if self.action in (Action.PROGRESS, Action.RESOLVE) and not self.note:
            raise ValueError(f"a note is required to {self.action.value}")
        return self


class ErasureIn(Strict):
    reason: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
    ] = Field(description="the resident's request, for the audit (when, through which channel)")


class ErasureAccepted(BaseModel):
    case_id: str
    erased_at: datetime
    event_id: str = Field(description="the PersonalDataErased event the other services follow")


class StepAccepted(BaseModel):
    case_id: str
    status: Status
    event_id: str


class TimelineEntry(BaseModel):
    event_id: str
    event_type: str
    occurred_at: datetime
    producer: str
    details: dict[str, object]


class ExtensionRequestView(BaseModel):
    until: datetime
    reason: str
    requested_at: datetime


class CaseView(BaseModel):
    case_id: str
    reference: str = Field(description="the short reference in the resident's messages")
    status: Status
    category: str
    description: str
    channel: Channel
    location: LocationIn | None
    department: str | None
    department_name: str | None = Field(
        default=None, description="the department's name, as the department directory says"
    )
    grid_id: str | None
    district: str | None
    worker_id: str | None
    priority: Priority | None
    acknowledge_by: datetime | None
    resolve_by: datetime | None
    escalation_level: int
    rating: int | None
    possible_duplicate_of: str | None
    reported_at: datetime
    updated_at: datetime
    media_urls: list[str]
    reporter: dict[str, object] | None = Field(
        default=None, description="contact details; shown to operators and the resident only"
    )
    task_id: str | None = Field(default=None, description="a grid task's case: the task")
    merged_into: str | None = Field(
        default=None,
        description="the case this one was merged into (the same problem; that case carries "
        "the work, and this one is resolved with it); cleared if this one is reopened",
    )
    extension_request: ExtensionRequestView | None = Field(
        default=None,
        description="more time asked for by the department or worker, waiting for an "
        "operator's answer (not shown to the resident)",
    )
    urged: int = Field(default=0, description="how often the resident pressed for the case")
    merged_cases: list[str] = Field(
        default=[],
        description="the cases merged into this one, merged still or resolved with it (in one "
        "case's view; lists leave it empty)",
    )
    closes_at: datetime | None = Field(
        default=None,
        description="while resolved: when GridDispatch closes the case unless the resident "
        "verifies or reopens it first (null: it waits for a person)",
    )
    personal_data_erased_at: datetime | None = Field(
        default=None,
        description="when the reporter's contact and the care flags were erased, as the "
        "retention after closing has it (the case itself stays)",
    )
    timeline: list[TimelineEntry] = []


class CasePage(BaseModel):
    items: list[CaseView]
    next_cursor: str | None


class CategoryView(BaseModel):
    code: str
    name: dict[str, str]
    group: str
    department: str
    priority: Priority
    acknowledge_hours: float
    resolve_hours: float
    working_time: bool


class PerformanceRow(BaseModel):
    """One department's (district's, …) figures; `docs/api.md` defines each."""

    key: str | None = Field(
        description="the department, district, grid, category or worker; null: cases never "
        "routed (triage); `*`: every case of the report"
    )
    cases: int = Field(description="reported in the period")
    open: int = Field(description="not resolved or closed yet")
    acknowledged_on_time: int
    acknowledge_missed: int = Field(description="escalated for their acknowledge deadline")
    resolved_on_time: int
    resolve_missed: int = Field(description="escalated for their resolve deadline")
    rated: int
    satisfied: int = Field(description="rated 4 or 5")
    reopened: int = Field(description="reopenings (a case may count more than once)")
    closed_unverified: int = Field(
        description="closed because nobody verified the resolution in time"
    )
    urged: int = Field(description="cases their resident pressed for (催办) at least once")
    response_rate: float | None = Field(
        description="acknowledged_on_time ÷ (acknowledged_on_time + acknowledge_missed); "
        "null: nothing to judge yet"
    )
    resolution_rate: float | None = Field(
        description="resolved_on_time ÷ (resolved_on_time + resolve_missed)"
    )
    satisfaction_rate: float | None = Field(description="satisfied ÷ rated")
    median_minutes_to_acknowledge: float | None
    median_hours_to_resolve: float | None


class PerformanceReport(BaseModel):
    period_start: date = Field(description="the first day, in the city's time zone")
    period_end: date = Field(description="the day after the last one")
    timezone: str
    by: str
    department: str | None = Field(description="only this department's cases (null: all)")
    rows: list[PerformanceRow]
    total: PerformanceRow


class ErrorItem(BaseModel):
    field: str
    reason: str


class ErrorBody(BaseModel):
    error: str
    message: str
    errors: list[ErrorItem] = []
