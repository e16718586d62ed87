"""The Kafka contract: one envelope, and a pydantic model for the payload of every event.

Every message on a contract topic is an `Envelope` serialised as plain JSON. The payload's
shape is given by `event_type` (and `schema_version`); `decode` validates both. JSON Schemas
and the AsyncAPI document under `docs/` are generated from these classes (`make schemas`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeVar

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shared import topics
from shared.ids import new_event_id

M = TypeVar("M", bound=BaseModel)
_setattr = object.__setattr__


def trusted(cls: type[M], **values: Any) -> M:
    """`cls.model_construct(**values)` for hot paths that give *every* field: the same
    object, not validated (the values must be valid already: tests hold each such path to the
    validated model), without pydantic's per-field alias and default handling, which cost
    ~10 µs a model."""
    if values.keys() != cls.__pydantic_fields__.keys():
        raise TypeError(f"{cls.__name__} needs exactly its fields, got {sorted(values)}")
    m = cls.__new__(cls)
    _setattr(m, "__dict__", values)
    _setattr(m, "__pydantic_fields_set__", set(values))
    _setattr(m, "__pydantic_extra__", None)
    _setattr(m, "__pydantic_private__", None)
    return m


class ContractModel(BaseModel):
    """Base of the envelope, the events and their parts.

    Tolerant reader: a field this release does not know is dropped when a message is read,
    not refused. Adding an optional field is therefore a compatible change, and a service can
    be upgraded before or after the services that read its events. A change that old readers
    would misread (a field removed, renamed or retyped, a meaning changed) raises the event's
    `SCHEMA_VERSION` instead; `decode` refuses versions newer than it knows. (Our own code
    cannot misspell a field when it builds an event: mypy's pydantic plugin, with
    `init_forbid_extra`, checks every constructor call.)"""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- value objects ------------------------------------------------------------------------


class Channel(StrEnum):
    APP = "app"
    WECHAT = "wechat"
    HOTLINE = "hotline"
    PATROL = "patrol"
    PROXY = "proxy"
    OPEN311 = "open311"
    API = "api"
    TASK = "task"  # a grid task's case (GridTaskIssued): made by GridDispatch, not reported


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Location(ContractModel):
    """Where the issue is. At least one of a coordinate, a building code, a facility code or an
    address."""

    lat: float | None = Field(default=None, ge=-90, le=90, description="WGS84 latitude")
    lon: float | None = Field(default=None, ge=-180, le=180, description="WGS84 longitude")
    address: str | None = Field(default=None, max_length=500)
    building_code: str | None = Field(default=None, max_length=64)
    facility_code: str | None = Field(
        default=None,
        max_length=64,
        description="a city facility the report names: the number on a street light, a manhole "
        "cover, a heating substation",
    )


class Contact(ContractModel):
    """The reporter's contact details. Personal data: never in department feeds or logs."""

    name: str | None = Field(default=None, max_length=100)
    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)
    consent_to_notify: bool = False
    language: Literal["zh-CN", "en"] = Field(
        default="zh-CN", description="the language of messages to the resident"
    )


class Sensitivity(ContractModel):
    """Flags from the resident registry. Sensitive: they raise priority, and never leave
    GridDispatch (no feed, webhook, log line or metric label carries them)."""

    care_groups: tuple[str, ...] = ()
    community_correction: bool = False


class EscalationStep(ContractModel):
    level: int = Field(ge=0)
    role: Literal["worker", "grid_leader", "community", "street_office", "district", "city"]
    name: str
    contact: str | None = None


class Deadlines(ContractModel):
    acknowledge_by: AwareDatetime
    resolve_by: AwareDatetime
    warn_before_s: int = Field(ge=0, description="warning this many seconds before a deadline")
    working_time: bool = False


# --- events -------------------------------------------------------------------------------


class Event(ContractModel):
    """Base of every payload. Subclasses name their type, version and topic."""

    EVENT_TYPE: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1
    TOPIC: ClassVar[str] = topics.CASES_LIFECYCLE


class CaseReported(Event):
    """A resident's report was accepted by intake."""

    EVENT_TYPE: ClassVar[str] = "CaseReported"
    TOPIC: ClassVar[str] = topics.CASES_INTAKE

    category: str
    description: str = Field(max_length=4000)
    location: Location
    channel: Channel
    reported_at: AwareDatetime
    reporter: Contact | None = None
    on_behalf_of: str | None = Field(default=None, description="resident id or card code")
    reported_by: str | None = Field(default=None, description="grid worker id for proxy reports")
    media_urls: tuple[str, ...] = Field(default=(), max_length=5)
    sensitivity: Sensitivity = Sensitivity()
    possible_duplicate_of: str | None = None
    attributes: dict[str, str] = Field(default_factory=dict, description="category questions")


class RerouteRequested(Event):
    """Route the case again: a transfer ("not ours") or an operator's manual decision."""

    EVENT_TYPE: ClassVar[str] = "RerouteRequested"
    TOPIC: ClassVar[str] = topics.CASES_INTAKE

    reason: str = Field(max_length=1000)
    requested_by: str
    exclude_departments: tuple[str, ...] = ()
    grid_id: str | None = Field(default=None, description="manual triage: route to this grid")
    department: str | None = Field(default=None, description="manual triage: this department")
    hand_over_from: str | None = Field(
        default=None,
        description="a grid worker going off duty: give the case, if they have not acknowledged "
        "it yet, to another worker of its grid, and change nothing else",
    )


class GridTaskIssued(Event):
    """An operator gave every grid of an area the same task at once — the "wartime" side of
    the grid (door-to-door checks, a notice to pass on to every household). The router makes
    one case per grid of the area, routed to that grid's worker like any case (`CaseRouted`
    with `task_id`, the case id a UUIDv5 of the task and the grid), so deadlines, escalation
    and feeds work as for reports. Keyed `task:<task_id>`."""

    EVENT_TYPE: ClassVar[str] = "GridTaskIssued"
    TOPIC: ClassVar[str] = topics.CASES_INTAKE

    task_id: str
    category: str = Field(description="service code: its deadlines and department apply")
    title: str = Field(min_length=1, max_length=200)
    instructions: str = Field(default="", max_length=4000)
    area: str = Field(
        min_length=1,
        max_length=64,
        description="a district, street office, community or grid code, or `city`",
    )
    grid_kinds: tuple[Literal["comprehensive", "dedicated"], ...] = Field(
        default=("comprehensive",), min_length=1, description="which grids of the area"
    )
    department: str | None = Field(default=None, description="default: the category's rules")
    issued_by: str = Field(min_length=1, max_length=64)
    issued_at: AwareDatetime
    due_by: AwareDatetime | None = Field(
        default=None,
        description="every grid's case is to be resolved by then (its acknowledgement is due "
        "by then at the latest); default: the category's deadlines",
    )


class CaseRouted(Event):
    EVENT_TYPE: ClassVar[str] = "CaseRouted"

    category: str
    grid_id: str
    district: str
    street_office: str | None = None
    department: str
    worker_id: str | None
    priority: Priority
    deadlines: Deadlines
    escalation_chain: tuple[EscalationStep, ...]
    reported_at: AwareDatetime
    rule_id: str | None = None
    mediate_in_grid_first: bool = False
    task_id: str | None = Field(default=None, description="a grid task's case (GridTaskIssued)")
    handed_over_from: str | None = Field(
        default=None,
        description="a handover: the worker who went off duty before acknowledging it; the "
        "case keeps its department, priority and deadlines, only its worker (and the chain's "
        "first step) changed",
    )


class CaseUnroutable(Event):
    EVENT_TYPE: ClassVar[str] = "CaseUnroutable"

    category: str
    reason: str
    reported_at: AwareDatetime
    task_id: str | None = Field(
        default=None, description="a grid task's case (GridTaskIssued): it goes to triage too"
    )


class CaseAcknowledged(Event):
    EVENT_TYPE: ClassVar[str] = "CaseAcknowledged"

    by: str
    note: str | None = Field(default=None, max_length=4000)


class CaseProgressed(Event):
    EVENT_TYPE: ClassVar[str] = "CaseProgressed"

    by: str
    note: str = Field(max_length=4000)


class CaseResolved(Event):
    EVENT_TYPE: ClassVar[str] = "CaseResolved"

    by: str
    note: str = Field(max_length=4000)
    photo_urls: tuple[str, ...] = Field(default=(), max_length=5)
    closes_at: AwareDatetime | None = Field(
        default=None,
        description="when GridDispatch closes the case unless the resident verifies or reopens "
        "it first (intake's verification window); null: it waits for a person. A resolution "
        "without the field (written before it existed) closes 72 hours after it happened",
    )
    follows: str | None = Field(
        default=None,
        description="a report merged into another case, resolved with it: the case it was "
        "merged into (whose resolution this repeats)",
    )


class CaseTransferRequested(Event):
    EVENT_TYPE: ClassVar[str] = "CaseTransferRequested"

    by: str
    department: str
    reason: str = Field(max_length=1000)


class CaseClosed(Event):
    EVENT_TYPE: ClassVar[str] = "CaseClosed"

    by: str
    note: str | None = Field(default=None, max_length=4000)
    automatic: bool = Field(
        default=False,
        description="closed by GridDispatch because nobody verified the resolution in time "
        "(CaseVerificationLapsed), not by a person",
    )


class CaseReopened(Event):
    EVENT_TYPE: ClassVar[str] = "CaseReopened"

    by: str
    reason: str = Field(max_length=1000)


class CaseMerged(Event):
    """The case reports the same problem as another, open case, and was merged into it: it has
    no deadlines of its own from now on, and is resolved when that case is (a `CaseResolved`
    with `follows`). Reopening it makes it a case of its own again."""

    EVENT_TYPE: ClassVar[str] = "CaseMerged"

    by: str
    into: str = Field(description="the case it was merged into")
    note: str | None = Field(default=None, max_length=4000)


class CaseUrged(Event):
    """The resident (or the hotline for them) presses for their case: its department and
    worker are told. At most once a day per case (intake's `urge_interval_s`)."""

    EVENT_TYPE: ClassVar[str] = "CaseUrged"

    by: str
    times: int = Field(ge=1, description="how often the case has been urged, this time included")
    note: str | None = Field(default=None, max_length=4000)


class CaseExtensionRequested(Event):
    """The case's department or worker asks for more time to resolve it (a pipe to replace, a
    part to order): an operator grants it (`CaseDeadlineExtended`) or refuses it
    (`CaseExtensionRefused`). Until then the deadline stands."""

    EVENT_TYPE: ClassVar[str] = "CaseExtensionRequested"

    by: str
    until: AwareDatetime = Field(description="the resolve deadline asked for")
    reason: str = Field(max_length=1000)


class CaseDeadlineExtended(Event):
    """An operator moved the case's resolve deadline later, before it passed (granting a
    request, or of their own accord): escalation arms the new deadline, and the ladder starts
    again from it."""

    EVENT_TYPE: ClassVar[str] = "CaseDeadlineExtended"

    by: str
    resolve_by: AwareDatetime = Field(description="the new resolve deadline")
    reason: str = Field(max_length=1000)


class CaseExtensionRefused(Event):
    """An operator refused the extension asked for: the deadline stands."""

    EVENT_TYPE: ClassVar[str] = "CaseExtensionRefused"

    by: str
    reason: str = Field(max_length=1000)


class CaseRated(Event):
    EVENT_TYPE: ClassVar[str] = "CaseRated"

    rating: int = Field(ge=1, le=5)
    comment: str | None = Field(default=None, max_length=1000)


class PersonalDataErased(Event):
    """At a resident's request, an operator erased the personal data of their report: every
    service erases its copy (the reporter's contact, on-behalf-of id, care and
    community-correction flags). The case itself stays. (Retention erases the same after a
    closed case's personal-data period, without an event: each service counts that itself.)"""

    EVENT_TYPE: ClassVar[str] = "PersonalDataErased"

    by: str = Field(min_length=1, max_length=64, description="the operator")
    reason: str = Field(min_length=1, max_length=500, description="the request, for the audit")


class CaseWarned(Event):
    """A deadline is near."""

    EVENT_TYPE: ClassVar[str] = "CaseWarned"

    deadline: Literal["acknowledge", "resolve"]
    due_at: AwareDatetime
    level: int = Field(ge=0)


class CaseEscalated(Event):
    """A deadline passed: the case climbs one step of its escalation chain."""

    EVENT_TYPE: ClassVar[str] = "CaseEscalated"

    deadline: Literal["acknowledge", "resolve"]
    due_at: AwareDatetime
    level: int = Field(ge=0)
    to: EscalationStep
    repeat: int = Field(default=0, ge=0, description="reminders at the top of the ladder")


class CaseVerificationLapsed(Event):
    """Nobody verified or reopened a resolved case within the verification window: escalation's
    timer says so, and intake closes the case (`CaseClosed` with `automatic`) if it is still
    resolved by that same resolution. Intake decides, not escalation, because only intake
    serialises a case's steps: a resident reopening at the same moment wins or loses cleanly."""

    EVENT_TYPE: ClassVar[str] = "CaseVerificationLapsed"

    resolved_at: AwareDatetime = Field(description="when the resolution the window began with was")
    due_at: AwareDatetime = Field(description="when the window ended")


class EmergencyModeChanged(Event):
    """An operator switched an area into or out of emergency ("wartime") mode. Keyed by the
    area instead of a case."""

    EVENT_TYPE: ClassVar[str] = "EmergencyModeChanged"

    area: str
    on: bool
    factor: float | None = Field(default=None, gt=0, le=1)
    reason: str = Field(max_length=1000)
    by: str
    timers_moved: int = 0


EVENT_TYPES: dict[str, type[Event]] = {
    cls.EVENT_TYPE: cls
    for cls in (
        CaseReported,
        RerouteRequested,
        GridTaskIssued,
        CaseRouted,
        CaseUnroutable,
        CaseAcknowledged,
        CaseProgressed,
        CaseResolved,
        CaseTransferRequested,
        CaseClosed,
        CaseReopened,
        CaseMerged,
        CaseUrged,
        CaseExtensionRequested,
        CaseDeadlineExtended,
        CaseExtensionRefused,
        CaseRated,
        CaseWarned,
        CaseEscalated,
        CaseVerificationLapsed,
        EmergencyModeChanged,
        PersonalDataErased,
    )
}


# --- envelope -----------------------------------------------------------------------------


class Envelope(ContractModel):
    """What every message on a contract topic carries; the Kafka key is `case_id`."""

    event_id: uuid.UUID
    event_type: str
    schema_version: int = Field(ge=1)
    case_id: str = Field(min_length=1, max_length=64)
    occurred_at: AwareDatetime
    producer: str
    traceparent: str | None = Field(default=None, description="W3C trace context")
    payload: dict[str, Any]

    def event(self) -> Event:
        """The payload, validated against the model of `event_type`."""
        cls = EVENT_TYPES.get(self.event_type)
        if cls is None:
            raise UnknownEventType(self.event_type)
        if self.schema_version > cls.SCHEMA_VERSION:
            raise NewerSchemaVersion(self.event_type, self.schema_version, cls.SCHEMA_VERSION)
        return cls.model_validate(self.payload)

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)


class UnknownEventType(ValueError):
    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event_type {event_type!r}")
        self.event_type = event_type


class NewerSchemaVersion(ValueError):
    """An event written by a newer release in a way this one would misread: dead-letter it,
    and replay it once this consumer is upgraded (`griddispatch dlq replay`)."""

    def __init__(self, event_type: str, version: int, known: int) -> None:
        super().__init__(
            f"{event_type} schema_version {version} is newer than this release reads "
            f"({known}): upgrade this consumer, then replay its dead letters"
        )


class DecodeError(ValueError):
    """A message that is not a valid envelope or payload: a poison message."""


def wrap(
    event: Event,
    *,
    case_id: str,
    producer: str,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """Put `event` in an envelope. Pass `event_id` for derived events (see shared.ids).

    Built without re-validation: `event` is a validated model and the rest is typed here."""
    return wrap_payload(
        event.EVENT_TYPE,
        event.model_dump(mode="json"),
        schema_version=event.SCHEMA_VERSION,
        case_id=case_id,
        producer=producer,
        event_id=event_id,
        occurred_at=occurred_at,
        traceparent=traceparent,
    )


def envelope_json(
    event: Event,
    *,
    case_id: str,
    producer: str,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    traceparent: str | None = None,
    payload_json: bytes | None = None,
) -> bytes:
    """`wrap(event, ...).to_json()` in one step, for hot paths: the payload is serialised once,
    by its model, straight into the envelope's JSON (the same bytes; a test holds them).
    `payload_json`: the event's JSON already made (its maker's tests hold it to the model's)."""
    return orjson.dumps(
        {
            "event_id": event_id or new_event_id(),  # orjson writes UUIDs and datetimes
            "event_type": event.EVENT_TYPE,
            "schema_version": event.SCHEMA_VERSION,
            "case_id": case_id,
            "occurred_at": occurred_at or datetime.now(UTC),
            "producer": producer,
            "traceparent": traceparent,
            "payload": orjson.Fragment(
                payload_json
                if payload_json is not None
                else event.__pydantic_serializer__.to_json(event)
            ),
        },
        option=orjson.OPT_UTC_Z,  # as pydantic: UTC as `Z`, other offsets as they are
    )


def wrap_payload(
    event_type: str,
    payload: dict[str, Any],
    *,
    schema_version: int,
    case_id: str,
    producer: str,
    event_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """An envelope around a payload that is already in its JSON form: for hot paths that build
    payloads from their own validated rows (a test holds each such path to the model's dump)."""
    return trusted(
        Envelope,
        event_id=event_id or new_event_id(),
        event_type=event_type,
        schema_version=schema_version,
        case_id=case_id,
        occurred_at=occurred_at or datetime.now(UTC),
        producer=producer,
        traceparent=traceparent,
        payload=payload,
    )


def json_time(value: datetime) -> str:
    """A datetime as the contract's JSON writes it (pydantic's form: UTC as `Z`)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def first_seen(
    items: Iterable[tuple[Envelope, Event]], new_ids: Iterable[uuid.UUID]
) -> list[tuple[Envelope, Event]]:
    """The items whose event id is among `new_ids` (those a consumer's idempotency table just
    took), in order, each once — a batch can hold the same event twice."""
    left = set(new_ids)
    fresh = []
    for env, ev in items:
        if env.event_id in left:
            left.discard(env.event_id)
            fresh.append((env, ev))
    return fresh


def peek_event_type(raw: bytes | str) -> str | None:
    """The `event_type` of a message, without validating it (None if it has none): lets a
    consumer skip, cheaply, the events it does not follow. Decode what it does follow."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    event_type = value.get("event_type") if isinstance(value, dict) else None
    return event_type if isinstance(event_type, str) else None


def decode(raw: bytes | str) -> tuple[Envelope, Event]:
    """Parse and validate one message; raises `DecodeError` for anything malformed."""
    try:
        env = Envelope.model_validate_json(raw)
        return env, env.event()
    except (ValidationError, UnknownEventType, NewerSchemaVersion) as exc:
        raise DecodeError(str(exc)) from exc
