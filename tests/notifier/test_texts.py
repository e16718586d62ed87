"""Message texts: a template for every audience, event, channel and language the notifier
promises, sandboxed, in the city's time, and nothing personal in staff messages."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from jinja2.exceptions import SecurityError

from services.notifier import texts
from services.notifier.texts import NoTemplate, render, staff_context
from services.notifier.views import department_view
from shared import events
from shared.events import wrap

RESIDENT = {
    "category_name": "暖气不热/停暖",
    "department_name": "heating",
    "note": "阀门已更换",
    "resolve_by": "2026-01-10 20:00",
    "reference": "0A1B2C3D",
    "closes_at": "",
    "into_reference": "9F8E7D6C",  # a merge: the case that carries the work
}
ROUTED_AT = datetime(2026, 1, 10, 1, 30, tzinfo=UTC)  # 09:30 in the city


def _case(
    event: events.Event, case_id: str = "01a21d85-0000-7000-8000-00000a1b2c3d"
) -> dict[str, Any]:
    env = wrap(event, case_id=case_id, producer="test")
    case = {"department": "heating", "category": "heating.outage", "reported_at": ROUTED_AT}
    return department_view(env, event, case)


ROUTED = events.CaseRouted(
    category="heating.outage",
    grid_id="g-0042",
    district="longsha",
    department="heating",
    worker_id="w-7",
    priority=events.Priority.URGENT,
    deadlines=events.Deadlines(
        acknowledge_by=datetime(2026, 1, 10, 2, 30, tzinfo=UTC),
        resolve_by=datetime(2026, 1, 10, 13, 30, tzinfo=UTC),
        warn_before_s=900,
    ),
    escalation_chain=(
        events.EscalationStep(level=0, role="worker", name="张三", contact="13900000001"),
        events.EscalationStep(level=1, role="grid_leader", name="李四", contact="13900000002"),
    ),
    reported_at=ROUTED_AT,
    mediate_in_grid_first=True,
)
WARNED = events.CaseWarned(
    deadline="acknowledge", due_at=datetime(2026, 1, 10, 2, 30, tzinfo=UTC), level=0
)
ESCALATED = events.CaseEscalated(
    deadline="resolve",
    due_at=datetime(2026, 1, 10, 13, 30, tzinfo=UTC),
    level=1,
    to=events.EscalationStep(level=1, role="grid_leader", name="李四", contact="13900000002"),
)
REOPENED = events.CaseReopened(by="resident", reason="还是不热")
STAFF = {"CaseRouted": ROUTED, "CaseWarned": WARNED, "CaseEscalated": ESCALATED}
STAFF["CaseReopened"] = REOPENED
EXTENDED = events.CaseDeadlineExtended(
    by="op-1",
    resolve_by=datetime(2026, 1, 15, 10, 0, tzinfo=UTC),  # 18:00 in the city
    reason="需更换主管道，配件已订购",
)
STAFF["CaseDeadlineExtended"] = EXTENDED
STAFF["CaseRated"] = events.CaseRated(rating=1, comment="师傅态度差，我电话13912345678")
STAFF["CaseUrged"] = events.CaseUrged(by="resident", times=2, note="已经三天了，电话13912345678")
STAFF["CaseExtensionRefused"] = events.CaseExtensionRefused(by="op-1", reason="请按原时限办结")


def promised() -> list[tuple[str, str, str, str]]:
    return [
        (audience, event_type, channel, locale)
        for audience in texts.CHANNELS
        for event_type, channel, locale in itertools.product(
            texts.EVENTS[audience], texts.CHANNELS[audience], texts.LOCALES
        )
    ]


def test_the_template_files_are_exactly_those_promised() -> None:
    files = {p.relative_to(texts.TEMPLATES).as_posix() for p in texts.TEMPLATES.rglob("*.txt")}
    assert files == {
        f"{locale}/{audience}/{event_type}.{channel}.txt"
        for audience, event_type, channel, locale in promised()
    }


@pytest.mark.parametrize(("audience", "event_type", "channel", "locale"), promised())
def test_every_promised_message_renders(
    audience: str, event_type: str, channel: str, locale: str
) -> None:
    if audience == "resident":
        context = RESIDENT
    else:
        context = staff_context(_case(STAFF[event_type]), locale)
    message = render(audience, event_type, channel, locale, context)  # type: ignore[arg-type]
    assert message.text
    assert "{{" not in message.text
    assert "Subject:" not in message.text
    if channel == "email":
        assert message.subject
        assert "\n" not in message.subject
    else:
        assert message.subject is None
        assert "\n" not in message.text  # one SMS text, no layout
    brand = "【网格通】" if locale == "zh-CN" else "[GridDispatch]"
    assert brand in (message.subject or message.text)


def test_languages_and_the_fallback() -> None:
    zh = render("resident", "CaseResolved", "sms", "zh-CN", RESIDENT)
    assert zh.text.startswith("【网格通】")
    assert "阀门已更换" in zh.text
    assert "0A1B2C3D" in zh.text
    en = render("resident", "CaseResolved", "email", "en", {**RESIDENT, "category_name": "Cold"})
    assert en.subject == "[GridDispatch] Your report has been resolved (reference 0A1B2C3D)"
    assert "Your report (Cold) has been resolved: 阀门已更换." in en.text
    assert render("resident", "CaseRouted", "sms", "fr", RESIDENT) == render(
        "resident", "CaseRouted", "sms", "zh-CN", RESIDENT
    )


def test_a_resolution_tells_the_resident_when_it_closes_unless_they_reopen() -> None:
    closing = {**RESIDENT, "closes_at": "2026-01-13 20:00"}
    zh = render("resident", "CaseResolved", "sms", "zh-CN", closing).text
    assert "2026-01-13 20:00前未申请的，将自动结案" in zh
    en = render("resident", "CaseResolved", "email", "en", closing).text
    assert "Unless you reopen it before 2026-01-13 20:00, the case will then be closed." in en
    # a window turned off: nothing about closing
    for locale in ("zh-CN", "en"):
        for channel in ("sms", "email"):
            text = render("resident", "CaseResolved", channel, locale, RESIDENT).text
            assert "自动结案" not in text
            assert "closed" not in text


def test_an_audience_is_told_only_what_it_is_promised() -> None:
    with pytest.raises(NoTemplate):
        render("resident", "CaseEscalated", "sms", "zh-CN", RESIDENT)
    with pytest.raises(NoTemplate):
        render("worker", "CaseRouted", "email", "zh-CN", {})


def test_staff_messages_speak_the_city_s_time_and_words() -> None:
    zh = render("worker", "CaseRouted", "sms", "zh-CN", staff_context(_case(ROUTED), "zh-CN"))
    assert zh.text == (
        "【网格通】新派单0A1B2C3D：暖气不热/停暖（特急），网格g-0042。请先在网格内调解。"
        "请于2026-01-10 10:30前受理，2026-01-10 21:30前办结。"
    )
    task = ROUTED.model_copy(update={"task_id": "t-1", "mediate_in_grid_first": False})
    for locale, start in (("zh-CN", "【网格通】新派单0A1B2C3D：网格任务·暖气不热/停暖（特急）"),
                          ("en", "[GridDispatch] New case 0A1B2C3D: grid task · ")):  # fmt: skip
        sms = render("worker", "CaseRouted", "sms", locale, staff_context(_case(task), locale))
        assert sms.text.startswith(start), sms.text
    en = render("department", "CaseEscalated", "email", "en", staff_context(_case(ESCALATED), "en"))
    assert en.subject is not None
    assert "escalated to the grid leader" in en.subject
    assert "missed its resolve deadline (2026-01-10 21:30)" in en.text
    assert "李四, the grid leader (level 1)" in en.text


def test_staff_messages_carry_no_phone_numbers() -> None:
    for event_type, event in STAFF.items():
        for audience, channel in (("department", "email"), ("worker", "sms")):
            for locale in texts.LOCALES:
                ctx = staff_context(_case(event), locale)
                m = render(audience, event_type, channel, locale, ctx)  # type: ignore[arg-type]
                assert "1390000000" not in f"{m.subject} {m.text}"


def test_templates_render_in_a_sandbox() -> None:
    with pytest.raises(SecurityError):
        texts._env.from_string("{{ x.__class__.__mro__[1].__subclasses__() }}").render(x="")


@pytest.mark.parametrize("locale", texts.LOCALES)
@pytest.mark.parametrize("channel", ["sms", "email"])
def test_a_merged_report_names_both_references_and_how_to_undo_it(
    locale: str, channel: str
) -> None:
    message = render("resident", "CaseMerged", channel, locale, RESIDENT)
    text = f"{message.subject or ''} {message.text}"
    assert "0A1B2C3D" in text
    assert "9F8E7D6C" in text
    assert ("重新办理" if locale == "zh-CN" else "reopen") in text
    assert "阀门已更换" not in text  # a merge's note is the staff's, not for the resident


def test_an_extension_tells_staff_why_and_the_resident_only_when() -> None:
    staff = staff_context(_case(EXTENDED), "zh-CN")
    sms = render("worker", "CaseDeadlineExtended", "sms", "zh-CN", staff).text
    assert "2026-01-15 18:00" in sms
    assert "需更换主管道" in sms
    resident = render(
        "resident", "CaseDeadlineExtended", "sms", "zh-CN", {**RESIDENT, "resolve_by": "01-15"}
    ).text
    assert "01-15" in resident
    assert "主管道" not in resident


@pytest.mark.parametrize("locale", texts.LOCALES)
def test_an_urging_reaches_the_worker_with_the_resident_s_words_masked(locale: str) -> None:
    context = staff_context(_case(STAFF["CaseUrged"]), locale)
    sms = render("worker", "CaseUrged", "sms", locale, context).text
    assert "已经三天了" in sms
    assert "2" in sms
    assert "13912345678" not in sms


def test_staff_hear_of_a_rating_only_when_the_resident_was_dissatisfied() -> None:
    low = _case(STAFF["CaseRated"])
    assert texts.tells_staff(low)
    assert not texts.tells_staff(_case(events.CaseRated(rating=4)))
    assert not texts.tells_staff(_case(events.CaseAcknowledged(by="w-7")))
    assert texts.tells_staff(_case(ROUTED))
    mail = render("department", "CaseRated", "email", "zh-CN", staff_context(low, "zh-CN"))
    assert "1 星" in mail.text
    assert "态度差" not in mail.text  # the comment stays with the resident's case
