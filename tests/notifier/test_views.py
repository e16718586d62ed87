"""The department's view of each lifecycle event is exactly the published feed message
(`shared/feed.py`, `docs/schemas/DepartmentFeedMessage.json`): every kind the notifier writes
validates, and nothing the model does not name (personal data) can be in it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from services.notifier.views import DEPARTMENT_EVENTS, department_view
from shared import events
from shared.events import wrap
from shared.feed import (
    FEED_MESSAGE,
    CaseMergedMessage,
    CaseResolvedMessage,
    DepartmentFeedMessage,
    feed_message_schema,
)
from shared.ids import derived_event_id
from tests.notifier.test_texts import ESCALATED, REOPENED, ROUTED, WARNED

AT = datetime(2026, 1, 10, 1, 30, tzinfo=UTC)
ONE_OF_EACH: list[events.Event] = [
    ROUTED,
    events.CaseAcknowledged(by="w-7"),
    events.CaseProgressed(by="w-7", note="已联系维修"),
    events.CaseResolved(by="w-7", note="阀门已更换", photo_urls=("https://x.example/1.jpg",)),
    events.CaseClosed(by="operator", note="居民确认"),
    REOPENED,
    events.CaseMerged(by="w-7", into=str(uuid.uuid4()), note="同一楼栋，居民13912345678已反映"),
    events.CaseUrged(by="resident", times=2, note="三天了还没人来，电话13912345678"),
    events.CaseExtensionRequested(
        by="heating", until=AT + timedelta(days=5), reason="需更换主管道，联系人13912345678"
    ),
    events.CaseDeadlineExtended(by="op-1", resolve_by=AT + timedelta(days=5), reason="同意"),
    events.CaseExtensionRefused(by="op-1", reason="请按原时限办结"),
    events.CaseRated(rating=4, comment="师傅很负责，电话13912345678"),
    WARNED,
    ESCALATED,
    events.PersonalDataErased(by="op-1", reason="王阿姨来电13900000002申请删除个人信息"),
]


def _view(event: events.Event) -> dict[str, Any]:
    """As the feed writer builds it: the view, then its feed id."""
    env = wrap(event, case_id=str(uuid.uuid4()), producer="test")
    case = {"department": "heating", "category": "heating.outage", "reported_at": AT}
    view = department_view(env, event, case)
    view["feed_id"] = str(derived_event_id(env.event_id, "dept-feed"))
    return view


def test_the_model_names_every_event_a_department_hears() -> None:
    assert {type(e) for e in ONE_OF_EACH} == set(DEPARTMENT_EVENTS)
    schema = FEED_MESSAGE.json_schema()
    assert set(schema["discriminator"]["mapping"]) == {e.EVENT_TYPE for e in DEPARTMENT_EVENTS}


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: e.EVENT_TYPE)
def test_every_view_is_a_valid_feed_message(event: events.Event) -> None:
    view = _view(event)
    # as it travels: JSON, read back by a department's system
    message: DepartmentFeedMessage = FEED_MESSAGE.validate_json(json.dumps(view))
    assert message.event_type == event.EVENT_TYPE
    text = json.dumps(view, ensure_ascii=False)
    for personal in ("13900000001", "13900000002", "13912345678", "contact", "comment"):
        assert personal not in text


def test_a_resolution_tells_the_department_when_it_closes_itself() -> None:
    closes_at = AT + timedelta(hours=72)
    view = _view(events.CaseResolved(by="w-7", note="阀门已更换", closes_at=closes_at))
    message = FEED_MESSAGE.validate_json(json.dumps(view))
    assert isinstance(message, CaseResolvedMessage)
    assert message.details.closes_at == closes_at
    waits = _view(events.CaseResolved(by="w-7", note="阀门已更换", closes_at=None))
    assert waits["details"] == {"note": "阀门已更换", "closes_at": None, "follows": None}


def test_a_merged_case_names_the_case_it_joined_and_is_resolved_with_it() -> None:
    into = str(uuid.uuid4())
    merged = FEED_MESSAGE.validate_json(
        json.dumps(_view(events.CaseMerged(by="w-7", into=into, note=None)))
    )
    assert isinstance(merged, CaseMergedMessage)
    assert merged.details.into == into
    resolved = FEED_MESSAGE.validate_json(
        json.dumps(_view(events.CaseResolved(by="w-7", note="阀门已更换", follows=into)))
    )
    assert isinstance(resolved, CaseResolvedMessage)
    assert resolved.details.follows == into


def test_numbers_written_into_free_text_never_reach_a_feed() -> None:
    reopened = _view(events.CaseReopened(by="resident", reason="还是不热，打13912345678"))
    assert reopened["details"]["reason"] == "还是不热，打***"
    noted = _view(
        events.CaseProgressed(by="w-7", note="已联系王阿姨13900000001，身份证23020219450312002X")
    )
    assert noted["details"]["note"] == "已联系王阿姨***，身份证***"
    resolved = _view(events.CaseResolved(by="w-7", note="修好了，回访a@b.cn", closes_at=None))
    assert resolved["details"]["note"] == "修好了，回访***"


def test_a_field_the_model_does_not_name_is_refused() -> None:
    view = _view(ROUTED)
    view["details"]["escalation_chain"] = [{"name": "张三", "contact": "13900000001"}]
    with pytest.raises(ValidationError, match="escalation_chain"):
        FEED_MESSAGE.validate_python(view)


def test_the_published_schema_lets_departments_read_fields_added_later() -> None:
    """Our writer is held to the strict models (above); the schema departments validate with
    must not turn a field a later release adds into a failure on their side."""

    def walk(node: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    strict = FEED_MESSAGE.json_schema(mode="serialization")
    published = feed_message_schema()
    assert ("additionalProperties", False) in walk(strict)
    assert ("additionalProperties", False) not in walk(published)
    routed = published["$defs"]["CaseRoutedMessage"]  # type: ignore[index]
    assert set(routed["required"]) >= {"case_id", "feed_id", "event_type", "details"}
