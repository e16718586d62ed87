"""What each lifecycle event does to a case's clock, without a database."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

from services.escalation.clocks import CaseClock, apply, catch_up
from services.escalation.deadlines import CHINA_2026
from shared import events
from tests.escalation.conftest import routed

T0 = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)


# intake's verification window off: the case waits for a person to close it
WAITS_FOR_A_PERSON = events.CaseResolved(by="w", note="n", closes_at=None)


def _routed_clock(warn_s: int = 600) -> tuple[str, CaseClock]:
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=warn_s)
    change = apply(None, env.case_id, env.event(), T0, CHINA_2026)
    assert change is not None
    return env.case_id, change.clock


def test_routing_arms_the_acknowledge_deadline_and_its_warning() -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    change = apply(None, env.case_id, env.event(), T0, CHINA_2026)
    assert change is not None
    assert change.clock.phase == "acknowledge"
    assert change.clock.due_at == T0 + timedelta(hours=1)
    assert change.clock.resolve_due_at == T0 + timedelta(hours=2)
    assert [(t.kind, t.deadline, t.level, t.due_at) for t in change.arm] == [
        ("escalate", "acknowledge", 1, T0 + timedelta(hours=1)),
        ("warn", "acknowledge", 0, T0 + timedelta(minutes=50)),
    ]


def test_a_warning_already_past_is_not_armed() -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    change = apply(None, env.case_id, env.event(), T0 + timedelta(minutes=55), CHINA_2026)
    assert change is not None
    assert [t.kind for t in change.arm] == ["escalate"]


def test_an_emergency_factor_shortens_what_is_left() -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=7200)
    change = apply(None, env.case_id, env.event(), T0, CHINA_2026, emergency_factor=0.25)
    assert change is not None
    assert change.clock.due_at == T0 + timedelta(minutes=15)
    assert change.clock.resolve_due_at == T0 + timedelta(minutes=30)


def test_acknowledging_moves_on_to_the_resolve_deadline() -> None:
    case_id, clock = _routed_clock()
    change = apply(clock, case_id, events.CaseAcknowledged(by="w"), T0, CHINA_2026)
    assert change is not None
    assert (change.clock.phase, change.clock.due_at) == ("resolve", T0 + timedelta(hours=2))
    assert {(t.kind, t.deadline) for t in change.arm} == {
        ("escalate", "resolve"),
        ("warn", "resolve"),
    }


def test_resolving_and_transferring_arm_nothing() -> None:
    case_id, clock = _routed_clock()
    resolved = apply(clock, case_id, WAITS_FOR_A_PERSON, T0, CHINA_2026)
    assert resolved is not None
    assert (resolved.clock.phase, resolved.arm) == ("done", ())
    later = T0 + timedelta(minutes=30)
    moved = apply(
        clock,
        case_id,
        events.CaseTransferRequested(by="d", department="roads", reason="x"),
        later,
        CHINA_2026,
    )
    assert moved is not None
    assert moved.arm == ()
    assert (moved.clock.phase, moved.clock.paused_at) == ("paused", later)


def test_routed_again_after_a_transfer_resumes_the_paused_clock() -> None:
    case_id, clock = _routed_clock(warn_s=0)
    paused = apply(
        clock,
        case_id,
        events.CaseTransferRequested(by="d", department="roads", reason="x"),
        T0 + timedelta(minutes=30),
        CHINA_2026,
    )
    assert paused is not None
    again = routed(case_id, at=T0, ack_s=3600, resolve_s=7200, warn_s=0)
    resumed_at = T0 + timedelta(hours=3)
    change = apply(paused.clock, case_id, again.event(), resumed_at, CHINA_2026)
    assert change is not None
    assert change.clock.due_at == resumed_at + timedelta(minutes=30)  # what was left
    assert change.clock.resolve_due_at == resumed_at + timedelta(minutes=90)


def test_events_about_unknown_cases_or_not_followed_change_nothing() -> None:
    assert apply(None, "c-1", events.CaseAcknowledged(by="w"), T0, CHINA_2026) is None
    case_id, clock = _routed_clock()
    assert apply(clock, case_id, events.CaseRated(rating=4), T0, CHINA_2026) is None


def test_the_clock_keeps_the_chain_as_its_models_write_it_and_gives_its_columns() -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    event = env.event()
    assert isinstance(event, events.CaseRouted)
    change = apply(None, env.case_id, event, T0, CHINA_2026)
    assert change is not None
    # the chain's content (stored as jsonb: spacing and escaping do not matter)
    assert json.loads(change.clock.chain) == [
        s.model_dump(mode="json") for s in event.escalation_chain
    ]
    # the columns, in field order and as they are
    assert change.clock.columns() == dataclasses.astuple(change.clock)
    assert all(
        a is b for a, b in zip(change.clock.columns(), vars(change.clock).values(), strict=True)
    )
    assert [t.columns() for t in change.arm] == [dataclasses.astuple(t) for t in change.arm]


def test_a_routing_replayed_after_the_case_was_resolved_arms_nothing() -> None:
    """A CaseRouted delivered late (a dead letter replayed after the case moved on) would
    escalate a finished case; a reroute after a transfer still re-arms."""
    case_id, clock = _routed_clock()
    resolved = apply(clock, case_id, WAITS_FOR_A_PERSON, T0, CHINA_2026)
    assert resolved is not None
    stale = routed(at=T0, ack_s=3600, resolve_s=7200).event()
    assert apply(resolved.clock, case_id, stale, T0 + timedelta(hours=3), CHINA_2026) is None
    paused = apply(
        clock,
        case_id,
        events.CaseTransferRequested(by="d", department="roads", reason="x"),
        T0,
        CHINA_2026,
    )
    assert paused is not None
    again = apply(paused.clock, case_id, stale, T0 + timedelta(minutes=5), CHINA_2026)
    assert again is not None
    assert again.arm


def test_catching_up_applies_what_came_before_the_routing_in_order() -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    routing = apply(None, env.case_id, env.event(), T0 + timedelta(hours=3), CHINA_2026)
    assert routing is not None
    assert routing.clock.phase == "acknowledge"  # on its own: the acknowledge deadline, past
    t = T0 + timedelta(minutes=10)
    acked = catch_up(
        routing,
        env.case_id,
        [(t, events.CaseAcknowledged(by="w"))],
        T0 + timedelta(hours=3),
        CHINA_2026,
    )
    assert (acked.clock.phase, acked.clock.due_at) == ("resolve", T0 + timedelta(hours=2))
    assert {t.deadline for t in acked.arm} == {"resolve"}
    done = catch_up(
        routing,
        env.case_id,
        [(t, events.CaseAcknowledged(by="w")), (t, WAITS_FOR_A_PERSON)],
        T0 + timedelta(hours=3),
        CHINA_2026,
    )
    assert (done.clock.phase, done.arm) == ("done", ())
    # with a verification window
    closing = events.CaseResolved(by="w", note="n", closes_at=t + timedelta(hours=1))
    verifying = catch_up(
        routing,
        env.case_id,
        [(t, events.CaseAcknowledged(by="w")), (t, closing)],
        T0 + timedelta(hours=3),
        CHINA_2026,
    )
    assert [(x.kind, x.due_at) for x in verifying.arm] == [("close", t + timedelta(hours=1))]
    assert catch_up(routing, env.case_id, [], T0, CHINA_2026) is routing


def test_a_resolution_written_before_closes_at_existed_closes_72_hours_after_it() -> None:
    """An intake that did not state `closes_at` (before an upgrade) had escalation close its
    resolutions 72 h after they happened; those still in flight keep that."""
    case_id, clock = _routed_clock()
    resolved_at = T0 + timedelta(minutes=40)
    unstated = events.CaseResolved.model_validate({"by": "w", "note": "n"})
    stated = events.CaseResolved.model_validate_json('{"by": "w", "note": "n", "closes_at": null}')
    change = apply(
        clock, case_id, unstated, T0 + timedelta(hours=1), CHINA_2026, occurred_at=resolved_at
    )
    assert change is not None
    assert [(t.kind, t.due_at) for t in change.arm] == [
        ("close", resolved_at + timedelta(hours=72))
    ]
    never = apply(
        clock, case_id, stated, T0 + timedelta(hours=1), CHINA_2026, occurred_at=resolved_at
    )
    assert never is not None
    assert (never.clock.phase, never.arm) == ("done", ())


def test_a_resolution_starts_the_verification_window_from_when_it_happened() -> None:
    case_id, clock = _routed_clock()
    resolved_at = T0 + timedelta(minutes=40)
    change = apply(
        clock,
        case_id,
        events.CaseResolved(by="w", note="n", closes_at=resolved_at + timedelta(days=3)),
        T0 + timedelta(minutes=45),  # folded five minutes late
        CHINA_2026,
        occurred_at=resolved_at,
    )
    assert change is not None
    assert (change.clock.phase, change.clock.due_at) == ("verify", resolved_at + timedelta(days=3))
    [timer] = change.arm
    assert (timer.kind, timer.deadline, timer.due_at, timer.started_at) == (
        "close",
        "verify",
        resolved_at + timedelta(days=3),
        resolved_at,
    )


def test_closing_or_reopening_ends_the_verification_window() -> None:
    case_id, clock = _routed_clock()
    resolution = events.CaseResolved(by="w", note="n", closes_at=T0 + timedelta(seconds=60))
    verifying = apply(clock, case_id, resolution, T0, CHINA_2026)
    assert verifying is not None
    closed = apply(verifying.clock, case_id, events.CaseClosed(by="d"), T0, CHINA_2026)
    assert closed is not None
    assert (closed.clock.phase, closed.arm) == ("done", ())
    reopened = apply(
        verifying.clock, case_id, events.CaseReopened(by="resident", reason="x"), T0, CHINA_2026
    )
    assert reopened is not None
    assert reopened.clock.phase == "resolve"
    assert {t.kind for t in reopened.arm} == {"escalate", "warn"}  # the resolve deadline
    # a routing replayed late while the resident verifies arms nothing either
    late = routed(case_id, at=T0, ack_s=3600, resolve_s=7200)
    assert apply(verifying.clock, case_id, late.event(), T0, CHINA_2026) is None


def test_a_handover_keeps_the_clock_and_changes_the_ladder() -> None:
    """The same routing with another worker (a handover): the same deadlines from the same
    report, so the same timers; only the chain it escalates along changes."""
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    first = apply(None, env.case_id, env.event(), T0, CHINA_2026)
    assert first is not None
    event = env.event()
    assert isinstance(event, events.CaseRouted)
    handed = event.model_copy(
        update={
            "worker_id": None,
            "escalation_chain": event.escalation_chain[1:],
            "handed_over_from": "w-1",
        }
    )
    later = T0 + timedelta(minutes=20)
    second = apply(first.clock, env.case_id, handed, later, CHINA_2026)
    assert second is not None
    assert (second.clock.due_at, second.clock.resolve_due_at) == (
        first.clock.due_at,
        first.clock.resolve_due_at,
    )
    assert [(t.kind, t.due_at) for t in second.arm] == [(t.kind, t.due_at) for t in first.arm]
    assert second.clock.chain != first.clock.chain


def test_a_handover_that_crossed_an_acknowledgement_leaves_the_clock_alone() -> None:
    """The worker acknowledged it just before the router heard of it: the case is being
    handled, its resolve deadline runs on, nothing is re-armed."""
    env = routed(at=T0, ack_s=3600, resolve_s=7200)
    event = env.event()
    assert isinstance(event, events.CaseRouted)
    first = apply(None, env.case_id, event, T0, CHINA_2026)
    assert first is not None
    acked = apply(first.clock, env.case_id, events.CaseAcknowledged(by="w-1"), T0, CHINA_2026)
    assert acked is not None
    assert acked.clock.phase == "resolve"
    handed = event.model_copy(update={"worker_id": None, "handed_over_from": "w-1"})
    assert apply(acked.clock, env.case_id, handed, T0 + timedelta(minutes=5), CHINA_2026) is None


def test_a_handover_in_emergency_mode_keeps_the_shortened_deadline() -> None:
    """The deadline emergency mode shortened at the routing is not shortened again from the
    moment of the handover (nor lengthened)."""
    env = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    event = env.event()
    assert isinstance(event, events.CaseRouted)
    first = apply(None, env.case_id, event, T0, CHINA_2026, 0.5)
    assert first is not None
    assert first.clock.due_at == T0 + timedelta(minutes=30)
    handed = event.model_copy(update={"worker_id": None, "handed_over_from": "w-1"})
    later = T0 + timedelta(minutes=20)
    second = apply(first.clock, env.case_id, handed, later, CHINA_2026, 0.5)
    assert second is not None
    assert (second.clock.due_at, second.clock.resolve_due_at) == (
        first.clock.due_at,
        first.clock.resolve_due_at,
    )
    assert [t.due_at for t in second.arm if t.kind == "escalate"] == [first.clock.due_at]


def test_a_merged_case_stops_its_clock_until_it_is_resolved_with_the_case_it_joined() -> None:
    case_id, clock = _routed_clock()
    merged = apply(clock, case_id, events.CaseMerged(by="w", into="other"), T0, CHINA_2026)
    assert merged is not None
    assert (merged.clock.phase, merged.arm) == ("done", ())  # every pending timer cancelled
    # a handover or routing that crossed the merge arms nothing
    late = routed(case_id, at=T0, ack_s=3600, resolve_s=7200)
    assert apply(merged.clock, case_id, late.event(), T0, CHINA_2026) is None
    # resolved with the case it joined: the resident's verification window, as for any case
    closes_at = T0 + timedelta(days=3)
    follow = events.CaseResolved(by="w", note="n", closes_at=closes_at, follows="other")
    resolved = apply(merged.clock, case_id, follow, T0, CHINA_2026)
    assert resolved is not None
    assert resolved.clock.phase == "verify"
    assert [(t.kind, t.due_at) for t in resolved.arm] == [("close", closes_at)]
    # reopened instead ("not the same problem"): a resolve deadline of its own again
    reopened = apply(
        merged.clock, case_id, events.CaseReopened(by="resident", reason="x"), T0, CHINA_2026
    )
    assert reopened is not None
    assert reopened.clock.phase == "resolve"
    assert {t.kind for t in reopened.arm} == {"escalate", "warn"}


def test_an_extended_deadline_is_armed_as_granted() -> None:
    case_id, clock = _routed_clock()
    acked = apply(clock, case_id, events.CaseAcknowledged(by="w"), T0, CHINA_2026)
    assert acked is not None
    extended_to = T0 + timedelta(days=5)
    extension = events.CaseDeadlineExtended(by="op", resolve_by=extended_to, reason="换管道")
    change = apply(acked.clock, case_id, extension, T0 + timedelta(minutes=30), CHINA_2026)
    assert change is not None
    assert (change.clock.due_at, change.clock.resolve_due_at) == (extended_to, extended_to)
    assert sorted((t.kind, t.level, t.due_at) for t in change.arm) == [
        ("escalate", 1, extended_to),
        ("warn", 0, extended_to - timedelta(seconds=600)),
    ]
    # a reopening later counts its own resolve window again, as for any case
    reopened = apply(change.clock, case_id, events.CaseReopened(by="r", reason="x"), T0, CHINA_2026)
    assert reopened is not None
    assert reopened.clock.due_at != extended_to
    # outside the resolve phase (intake allows it only there) it changes nothing
    assert apply(clock, case_id, extension, T0, CHINA_2026) is None
