"""The firing hot path builds event payloads straight from timer rows; they must be exactly
what the event models would dump (the Kafka contract), for every kind, rung and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from services.escalation.timers import timer_payload
from shared import events
from shared.events import EscalationStep

CHAIN = [
    EscalationStep(level=0, role="worker", name="张三", contact="13900000000"),
    EscalationStep(level=1, role="grid_leader", name="李四", contact=None),
    EscalationStep(level=2, role="city", name="市指挥中心", contact="12345"),
]


@given(
    kind=st.sampled_from(["warn", "escalate", "close"]),
    deadline=st.sampled_from(["acknowledge", "resolve"]),
    level=st.integers(0, 5),
    repeat=st.integers(0, 3),
    at=st.datetimes(
        min_value=datetime(2020, 1, 1),
        max_value=datetime(2040, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=8))]),
    ),
)
def test_timer_payloads_are_the_models_own_dump(
    kind: str, deadline: str, level: int, repeat: int, at: datetime
) -> None:
    row = {
        "kind": kind,
        "deadline": "verify" if kind == "close" else deadline,
        "level": 0 if kind == "close" else level,
        "repeat": repeat,
        "deadline_at": at,
        "started_at": at - timedelta(days=3) if kind == "close" else None,
    }
    model, payload = timer_payload(row, [s.model_dump(mode="json") for s in CHAIN])
    validated = model.model_validate(payload)  # valid against the contract's model …
    assert validated.model_dump(mode="json") == payload  # … and exactly its JSON form
    if kind == "warn":
        assert model is events.CaseWarned
    elif kind == "close":
        assert model is events.CaseVerificationLapsed
        assert validated == events.CaseVerificationLapsed(resolved_at=row["started_at"], due_at=at)
    else:
        assert model is events.CaseEscalated
        assert payload["to"] == CHAIN[min(level, 2)].model_dump(mode="json")
