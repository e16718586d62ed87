"""The case lifecycle's merge step, without a server: from which states, by whom, into which
cases, and what a merged case becomes when the case it joined is resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.intake import lifecycle
from services.intake.lifecycle import Action, Actor, IllegalTransition, NotPermitted, Status, Step
from shared import events

MERGE = Step(action=Action.MERGE, by="heating", into="case-a", note="同一楼栋")


@pytest.mark.parametrize("current", [Status.ROUTED, Status.ACKNOWLEDGED, Status.IN_PROGRESS])
def test_an_open_case_with_its_handler_may_be_merged(current: Status) -> None:
    decision = lifecycle.decide(current, Actor.DEPARTMENT, MERGE)
    assert decision.status is Status.MERGED
    assert decision.event == events.CaseMerged(by="heating", into="case-a", note="同一楼栋")
    assert decision.also_reroute is None


@pytest.mark.parametrize(
    "current",
    [
        Status.REPORTED,  # the router has it: its routing would come after the merge
        Status.TRANSFER_REQUESTED,
        Status.UNROUTABLE,  # routed from triage first: a clock and a department of its own
        Status.RESOLVED,
        Status.CLOSED,
        Status.MERGED,
    ],
)
def test_a_case_with_the_router_finished_or_merged_already_is_not(current: Status) -> None:
    with pytest.raises(IllegalTransition, match=f"cannot merge a case that is {current.value}"):
        lifecycle.decide(current, Actor.OPERATOR, MERGE)


def test_a_resident_may_not_merge_but_may_reopen_a_merged_case() -> None:
    with pytest.raises(NotPermitted):
        lifecycle.decide(Status.ROUTED, Actor.RESIDENT, MERGE)
    reopened = lifecycle.decide(
        Status.MERGED,
        Actor.RESIDENT,
        Step(action=Action.REOPEN, by="resident", reason="不是同一个问题"),
    )
    assert reopened.status is Status.ROUTED


def test_what_a_case_may_be_merged_into() -> None:
    assert lifecycle.merge_refused("b", "a", Status.ACKNOWLEDGED, None) is None
    assert lifecycle.merge_refused("b", "a", Status.UNROUTABLE, None) is None
    assert "itself" in (lifecycle.merge_refused("a", "a", Status.ROUTED, None) or "")
    into_root = lifecycle.merge_refused("c", "b", Status.MERGED, "a")
    assert into_root is not None
    assert "merged into a" in into_root
    for finished in (Status.RESOLVED, Status.CLOSED):
        refused = lifecycle.merge_refused("b", "a", finished, None)
        assert refused is not None
        assert finished.value in refused


def test_a_merged_case_is_resolved_with_the_words_of_the_case_it_joined() -> None:
    closes_at = datetime(2026, 1, 13, tzinfo=UTC)
    original = events.CaseResolved(
        by="w-7", note="阀门已更换", photo_urls=("https://x.example/1.jpg",), closes_at=closes_at
    )
    follow = lifecycle.follow(original, "case-a")
    assert follow.follows == "case-a"
    assert (follow.by, follow.note, follow.photo_urls, follow.closes_at) == (
        "w-7",
        "阀门已更换",
        ("https://x.example/1.jpg",),
        closes_at,
    )
    assert lifecycle.status_after_event(Status.MERGED, follow) is Status.RESOLVED


def test_a_routing_that_crossed_a_merge_leaves_the_case_merged() -> None:
    routed = events.CaseUnroutable(
        category="heating.outage", reason="no grid", reported_at=datetime(2026, 1, 12, tzinfo=UTC)
    )
    assert lifecycle.arrives_late(Status.MERGED, routed)
    assert lifecycle.status_after_event(Status.ROUTED, events.CaseMerged(by="x", into="a")) is (
        Status.MERGED
    )


NOW = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
DUE = datetime(2026, 1, 12, 20, 0, tzinfo=UTC)


def test_an_extension_names_a_later_deadline_before_the_current_one_passes() -> None:
    later = DUE + timedelta(days=3)
    ask = Action.REQUEST_EXTENSION
    assert lifecycle.extension_until(ask, NOW, DUE, asked=later, pending=None) == later
    # an operator grants what was asked, or names their own
    grant = Action.EXTEND
    assert lifecycle.extension_until(grant, NOW, DUE, asked=None, pending=later) == later
    sooner = DUE + timedelta(days=1)
    assert lifecycle.extension_until(grant, NOW, DUE, asked=sooner, pending=later) == sooner
    for asked, pending, now, why in (
        (None, None, NOW, "required"),
        (DUE, None, NOW, "later than"),
        (DUE + timedelta(days=91), None, NOW, "at most 90 days"),
        (later, None, DUE + timedelta(seconds=1), "passed"),
    ):
        with pytest.raises(lifecycle.ExtensionNotAllowed, match=why):
            lifecycle.extension_until(grant, now, DUE, asked=asked, pending=pending)
    with pytest.raises(lifecycle.ExtensionNotAllowed, match="no extension was asked"):
        lifecycle.extension_until(Action.REFUSE_EXTENSION, NOW, DUE, asked=None, pending=None)
    # other steps name none
    assert lifecycle.extension_until(Action.RESOLVE, NOW, DUE, asked=None, pending=later) is None


def test_extensions_leave_the_state_and_are_decided_by_operators() -> None:
    step = Step(action=Action.REQUEST_EXTENSION, by="w-1", reason="等配件", until=DUE)
    decision = lifecycle.decide(Status.IN_PROGRESS, Actor.WORKER, step)
    assert decision.status is Status.IN_PROGRESS
    assert decision.event == events.CaseExtensionRequested(by="w-1", until=DUE, reason="等配件")
    grant = Step(action=Action.EXTEND, by="op", reason="同意", until=DUE)
    assert lifecycle.decide(Status.ACKNOWLEDGED, Actor.OPERATOR, grant).event == (
        events.CaseDeadlineExtended(by="op", resolve_by=DUE, reason="同意")
    )
    with pytest.raises(NotPermitted):
        lifecycle.decide(Status.ACKNOWLEDGED, Actor.DEPARTMENT, grant)
    with pytest.raises(IllegalTransition):  # asked once taken, not before
        lifecycle.decide(Status.ROUTED, Actor.WORKER, step)


def test_a_case_is_urged_at_most_once_an_interval() -> None:
    day = timedelta(hours=24)
    assert lifecycle.urge_refused(NOW, None, day) is None
    assert lifecycle.urge_refused(NOW, NOW - day, day) is None
    refused = lifecycle.urge_refused(NOW, NOW - timedelta(hours=2), day)
    assert refused is not None
    assert (NOW + timedelta(hours=22)).isoformat() in refused
    urge = Step(action=Action.URGE, by="resident", note="三天了", times=3)
    decision = lifecycle.decide(Status.ROUTED, Actor.RESIDENT, urge)
    assert decision.status is Status.ROUTED
    assert decision.event == events.CaseUrged(by="resident", times=3, note="三天了")
    with pytest.raises(NotPermitted):  # the handlers are those told
        lifecycle.decide(Status.ROUTED, Actor.DEPARTMENT, urge)
    with pytest.raises(IllegalTransition):
        lifecycle.decide(Status.RESOLVED, Actor.RESIDENT, urge)
