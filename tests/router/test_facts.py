"""What the router keeps of a report, and what it decides on: a new report is decided from the
validated report itself (the hot path), a reroute from the facts stored for it. Both must give
`decide` the same case."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.router.dispatch import case_facts, facts_from_report
from shared import events
from shared.events import wrap

locations = st.builds(
    events.Location,
    lat=st.none() | st.floats(-90, 90),
    lon=st.none() | st.floats(-180, 180),
    address=st.none() | st.text(max_size=40),
    building_code=st.none() | st.text(min_size=1, max_size=12),
)
times = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2030, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]),
)


@given(
    location=locations,
    reported_at=times,
    care_groups=st.lists(st.sampled_from(["elderly_alone", "disabled", "low_income"]), max_size=2),
    description=st.text(max_size=60),
)
@settings(max_examples=150, deadline=None)
def test_a_report_is_decided_as_its_stored_facts_would_be(
    location: events.Location, reported_at: datetime, care_groups: list[str], description: str
) -> None:
    report = events.CaseReported(
        category="roads.pothole",
        description=description,
        location=location,
        channel=events.Channel.APP,
        reported_at=reported_at,
        sensitivity=events.Sensitivity(care_groups=tuple(care_groups)),
    )
    env = wrap(report, case_id=str(uuid.uuid4()), producer="test")
    facts = facts_from_report(env, report)
    assert facts["location"] == location.model_dump(mode="json")
    stored = orjson.loads(orjson.dumps(facts))  # as the database gives them back
    assert case_facts(env.case_id, facts, None, report) == case_facts(env.case_id, stored, None)
