"""Whom an escalation tells, without a server: the step it reached, at a contact that can take
a message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.notifier import ladder
from shared import events


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        ("13912345678", ("sms", "13912345678")),
        ("139 1234 5678", ("sms", "13912345678")),
        ("+86 139-1234-5678", ("sms", "13912345678")),
        ("8613912345678", ("sms", "13912345678")),
        ("Duty@Longsha.example.org", ("email", "Duty@longsha.example.org")),
        ("12345", None),  # the city's hotline: nobody to text
        ("0452-2401234", None),  # a landline
        ("12912345678", None),  # not a mobile range
        ("call the office", None),
        ("not@an@address", None),
        ("", None),
        (None, None),
    ],
)
def test_a_contact_is_texted_written_to_or_left_alone(
    contact: str | None, expected: ladder.Target | None
) -> None:
    assert ladder.address_of(contact) == expected


def _escalated(role: str, name: str, contact: str | None) -> events.CaseEscalated:
    return events.CaseEscalated(
        deadline="acknowledge",
        due_at=datetime(2026, 1, 12, tzinfo=UTC),
        level=1,
        to=events.EscalationStep(level=1, role=role, name=name, contact=contact),
    )


def test_the_step_an_escalation_reached_is_told_unless_it_is_the_worker() -> None:
    assert ladder.recipient(_escalated("grid_leader", "李四", "13900000002")) == (
        "grid_leader:李四",
        ("sms", "13900000002"),
    )
    assert ladder.recipient(_escalated("community", "龙沙社区", "office@ls.example.org")) == (
        "community:龙沙社区",
        ("email", "office@ls.example.org"),
    )
    # the worker hears through their own subscriptions; the city's hotline cannot be texted
    assert ladder.recipient(_escalated("worker", "张三", "13900000001")) is None
    assert ladder.recipient(_escalated("city", "城市运行管理中心", "12345")) is None
    assert ladder.recipient(_escalated("district", "龙沙区", None)) is None
