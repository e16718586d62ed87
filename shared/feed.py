"""What a department's systems receive: the message on its feed topic `dept.<code>`, which is
also the body of its webhooks and the data of its live stream.

These models are the published form of that message (`docs/schemas/DepartmentFeedMessage.json`,
the `dept` channel of `docs/asyncapi.json`). The notifier writes the message as a plain dict
(`services/notifier/views.py`, on the hot path); a test holds every kind it writes to these
models, which forbid fields they do not name: personal data cannot slip in unseen.

One message per lifecycle event of a case assigned to the department. `event_type` says which
`details` it carries. Never in a message: care flags, community-correction status, reporter
contacts, the escalation chain's phone numbers (read a case's reporter through intake's case
API with the department's key, where the catalogue decides what is masked).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from shared.events import Priority


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RoutedDetails(_Strict):
    grid_id: str
    district: str
    worker_id: str | None = Field(description="the grid worker assigned, if any is on duty")
    priority: Priority
    acknowledge_by: AwareDatetime
    resolve_by: AwareDatetime
    mediate_in_grid_first: bool = Field(
        description="a dispute: the grid mediates first, the department stands by"
    )
    task_id: str | None = Field(
        default=None,
        description="one grid's case of a grid task: every grid of an area got the same task",
    )
    handed_over_from: str | None = Field(
        default=None,
        description="a handover: the same case, now with `worker_id` because this worker went "
        "off duty before acknowledging it (nothing else changed)",
    )


class EscalatedTo(_Strict):
    role: Literal["worker", "grid_leader", "community", "street_office", "district", "city"]
    name: str


class EscalatedDetails(_Strict):
    deadline: Literal["acknowledge", "resolve"]
    due_at: AwareDatetime
    level: int = Field(ge=0)
    to: EscalatedTo
    repeat: int = Field(ge=0, description="reminders at the top of the ladder")


class WarnedDetails(_Strict):
    deadline: Literal["acknowledge", "resolve"]
    due_at: AwareDatetime


class NoteDetails(_Strict):
    note: str


class ResolvedDetails(_Strict):
    note: str
    closes_at: AwareDatetime | None = Field(
        default=None,
        description="when GridDispatch closes the case unless the resident verifies or reopens "
        "it first (a `CaseClosed` with `automatic`); null: it waits for someone to close it",
    )
    follows: str | None = Field(
        default=None,
        description="a case merged into another, resolved with it: that case (whose "
        "resolution this repeats)",
    )


class MergedDetails(_Strict):
    into: str = Field(description="the case that reports the same problem and carries the work")
    note: str | None


class UrgedDetails(_Strict):
    times: int = Field(
        ge=1, description="how often the resident pressed for it, this time included"
    )
    note: str | None


class ExtensionRequestedDetails(_Strict):
    until: AwareDatetime = Field(description="the resolve deadline asked for")
    reason: str


class DeadlineExtendedDetails(_Strict):
    resolve_by: AwareDatetime = Field(description="the new resolve deadline")
    reason: str


class ReasonDetails(_Strict):
    reason: str


class ReopenedDetails(_Strict):
    reason: str


class RatedDetails(_Strict):
    rating: int = Field(ge=1, le=5)


class ClosedDetails(_Strict):
    automatic: bool = Field(
        description="closed by GridDispatch because the resident neither verified nor reopened "
        "the resolution within the verification window (they may still reopen it)"
    )


class NoDetails(_Strict):
    pass


class _Message(_Strict):
    event_id: UUID = Field(description="the lifecycle event's id")
    feed_id: UUID = Field(
        description="this message's id, the same on every redelivery: deduplicate by it"
    )
    case_id: str
    occurred_at: AwareDatetime
    department: str | None
    category: str | None = Field(description="service code of the catalogue")
    reported_at: AwareDatetime | None


class CaseRoutedMessage(_Message):
    """A new case for the department (or one transferred or rerouted to it)."""

    event_type: Literal["CaseRouted"]
    details: RoutedDetails


class CaseAcknowledgedMessage(_Message):
    event_type: Literal["CaseAcknowledged"]
    details: NoDetails


class CaseProgressedMessage(_Message):
    event_type: Literal["CaseProgressed"]
    details: NoteDetails


class CaseResolvedMessage(_Message):
    event_type: Literal["CaseResolved"]
    details: ResolvedDetails


class CaseClosedMessage(_Message):
    event_type: Literal["CaseClosed"]
    details: ClosedDetails


class CaseReopenedMessage(_Message):
    event_type: Literal["CaseReopened"]
    details: ReopenedDetails


class CaseMergedMessage(_Message):
    """The case reports the same problem as another and was merged into it: no deadlines of
    its own from now on; it is resolved when that case is (a `CaseResolved` with `follows`),
    unless it is reopened first."""

    event_type: Literal["CaseMerged"]
    details: MergedDetails


class CaseUrgedMessage(_Message):
    """The resident (or the hotline for them) pressed for the case (催办): at most once a day."""

    event_type: Literal["CaseUrged"]
    details: UrgedDetails


class CaseExtensionRequestedMessage(_Message):
    """The department or its worker asked for more time to resolve the case; an operator
    answers (`CaseDeadlineExtended` or `CaseExtensionRefused`). The deadline stands until then."""

    event_type: Literal["CaseExtensionRequested"]
    details: ExtensionRequestedDetails


class CaseDeadlineExtendedMessage(_Message):
    """An operator moved the resolve deadline later: the case is due at `resolve_by`."""

    event_type: Literal["CaseDeadlineExtended"]
    details: DeadlineExtendedDetails


class CaseExtensionRefusedMessage(_Message):
    """An operator refused the extension asked for: the deadline stands."""

    event_type: Literal["CaseExtensionRefused"]
    details: ReasonDetails


class CaseRatedMessage(_Message):
    event_type: Literal["CaseRated"]
    details: RatedDetails


class CaseWarnedMessage(_Message):
    """A deadline of the case is near."""

    event_type: Literal["CaseWarned"]
    details: WarnedDetails


class CaseEscalatedMessage(_Message):
    """A deadline passed: the case went one level up the ladder."""

    event_type: Literal["CaseEscalated"]
    details: EscalatedDetails


class PersonalDataErasedMessage(_Message):
    """The resident asked for their personal data to be erased: delete every copy of this
    case's reporter contact your systems keep (the case goes on)."""

    event_type: Literal["PersonalDataErased"]
    details: NoDetails


DepartmentFeedMessage = Annotated[
    CaseRoutedMessage
    | CaseAcknowledgedMessage
    | CaseProgressedMessage
    | CaseResolvedMessage
    | CaseClosedMessage
    | CaseReopenedMessage
    | CaseMergedMessage
    | CaseUrgedMessage
    | CaseExtensionRequestedMessage
    | CaseDeadlineExtendedMessage
    | CaseExtensionRefusedMessage
    | CaseRatedMessage
    | CaseWarnedMessage
    | CaseEscalatedMessage
    | PersonalDataErasedMessage,
    Field(discriminator="event_type"),
]
FEED_MESSAGE: TypeAdapter[DepartmentFeedMessage] = TypeAdapter(DepartmentFeedMessage)


def feed_message_schema() -> dict[str, object]:
    """The published schema. It leaves out the models' `additionalProperties: false`: that
    strictness holds *our* writer to the models (a test), while a department's reader must
    accept fields a later release adds (docs/departments.md, "Ignore what you do not know")."""
    schema: dict[str, object] = _open_content(FEED_MESSAGE.json_schema(mode="serialization"))
    schema["title"] = "DepartmentFeedMessage"
    schema["description"] = (__doc__ or "").strip().split("\n\n")[0]
    schema["$id"] = "griddispatch:DepartmentFeedMessage:v1"
    return schema


def _open_content(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: _open_content(v)
            for k, v in schema.items()
            if not (k == "additionalProperties" and v is False)
        }
    if isinstance(schema, list):
        return [_open_content(v) for v in schema]
    return schema
