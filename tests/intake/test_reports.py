"""`reports.prepare` builds the CaseReported event without re-validating it: whatever valid
report comes in, the event and the envelope it publishes equal the validated ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.intake import reports
from services.intake.auth import Principal, Role
from services.intake.models import ReportIn
from shared import events
from shared.events import Channel

NOW = datetime(2026, 11, 27, 8, 30, tzinfo=UTC)
WORKER = Principal(uuid.uuid4(), "patrol app", Role.WORKER, "w-0042")

optional_text = st.none() | st.text(max_size=80)
location = st.fixed_dictionaries(
    {},
    optional={
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "address": optional_text,
        "building_code": st.none() | st.from_regex(r"^[A-Za-z0-9._-]{1,64}$", fullmatch=True),
        "facility_code": st.none() | st.from_regex(r"^[A-Za-z0-9._-]{1,64}$", fullmatch=True),
    },
)
contact = st.fixed_dictionaries(
    {},
    optional={
        "name": optional_text,
        "phone": st.none() | st.from_regex(r"^\+?[0-9 ()-]{5,20}$", fullmatch=True),
        "email": st.none() | st.just("ma.li@example.cn"),
        "consent_to_notify": st.booleans(),
        "language": st.sampled_from(["zh-CN", "en"]),
    },
)
body = st.fixed_dictionaries(
    {
        "category": st.sampled_from(["heating.outage", "roads.pothole", "dispute.neighbour"]),
        "description": st.text(min_size=1, max_size=300),
        "location": location,
    },
    optional={
        "channel": st.sampled_from([c.value for c in Channel]),
        "reporter": st.none() | contact,
        "media_urls": st.lists(st.just("https://img.example/a b.jpg"), max_size=5),
        "on_behalf_of": optional_text,
        "attributes": st.dictionaries(
            st.from_regex(r"^[a-z0-9_]{1,64}$", fullmatch=True), st.text(max_size=20), max_size=3
        ),
        "sensitivity": st.none()
        | st.fixed_dictionaries(
            {
                "care_groups": st.lists(st.sampled_from(["elderly_alone", "disabled"]), max_size=2),
                "community_correction": st.booleans(),
            }
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(data=body, by_worker=st.booleans())
def test_prepared_event_and_envelope_equal_the_validated_ones(
    data: dict[str, object], by_worker: bool
) -> None:
    try:
        report = ReportIn.model_validate(data)
    except ValidationError:
        assume(False)
        return
    pending = reports.prepare(report, WORKER if by_worker else None, now=NOW)

    validated = events.CaseReported.model_validate(pending.event.model_dump())
    assert pending.event == validated
    assert pending.event.model_dump(mode="json") == validated.model_dump(mode="json")
    assert (
        pending.envelope
        == events.wrap(
            validated,
            case_id=pending.case_id,
            producer=reports.PRODUCER,
            event_id=pending.event_id,
            occurred_at=NOW,
        ).to_json()
    )
    assert orjson.loads(pending.envelope)["payload"]["reported_by"] == (
        "w-0042" if by_worker else None
    )
