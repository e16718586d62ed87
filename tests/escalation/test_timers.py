"""Timers on the real database with a controllable clock: the ladder, acknowledgement,
reopening, transfers, emergency mode, and several schedulers at once."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.escalation import timers
from services.escalation.app import Scheduler
from services.escalation.deadlines import LadderPolicy
from shared import events
from shared.events import Envelope
from shared.localstack import LocalStack
from tests.escalation.conftest import routed, step

T0 = datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
CFG = timers.Settings(ladder=LadderPolicy(step_s=600, repeat_every_s=1800, max_repeats=2))


async def _fold(conn: asyncpg.Connection, env, now: datetime) -> bool:
    return await timers.fold(conn, env, env.event(), now, CFG)


async def _outbox(conn: asyncpg.Connection, case_id: str | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT value FROM escalation.outbox ORDER BY id")
    out = [json.loads(bytes(r["value"])) for r in rows]
    return [e for e in out if case_id is None or e["case_id"] == case_id]


async def test_an_unacknowledged_case_climbs_the_whole_ladder(esc_db: asyncpg.Connection) -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=86400, warn_s=900)
    assert await _fold(esc_db, env, T0)
    assert not await _fold(esc_db, env, T0)  # a redelivered event arms nothing twice
    fired: list[dict[str, Any]] = []
    clock = T0
    while clock < T0 + timedelta(hours=6):
        clock += timedelta(minutes=5)
        fired += [e.model_dump(mode="json") for e in await timers.fire_due(esc_db, clock, CFG)]
    kinds = [(e["event_type"], e["payload"]["level"], e["payload"].get("repeat")) for e in fired]
    assert kinds == [
        ("CaseWarned", 0, None),  # 15 min before the deadline, to the worker
        ("CaseEscalated", 1, 0),  # deadline missed: the grid leader
        ("CaseEscalated", 2, 0),  # every 10 min one rung higher …
        ("CaseEscalated", 3, 0),
        ("CaseEscalated", 4, 0),
        ("CaseEscalated", 5, 0),  # … up to the city
        ("CaseEscalated", 5, 1),  # then reminders every 30 min, at most two
        ("CaseEscalated", 5, 2),
    ]
    assert fired[1]["payload"]["to"]["role"] == "grid_leader"
    assert fired[5]["payload"]["to"]["role"] == "city"
    # the warning went out at 08:45, the first escalation at 09:00
    assert fired[0]["occurred_at"].startswith("2026-01-12T08:45")
    assert len({e["event_id"] for e in fired}) == len(fired)
    assert len(await _outbox(esc_db, env.case_id)) == len(fired)


async def test_acknowledging_stops_it_and_resolving_ends_it(esc_db: asyncpg.Connection) -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=4 * 3600)
    await _fold(esc_db, env, T0)
    await _fold(
        esc_db, step(events.CaseAcknowledged(by="w-1"), env.case_id, T0), T0 + timedelta(minutes=20)
    )
    # nothing for the acknowledge deadline; the resolve deadline is armed
    assert await timers.fire_due(esc_db, T0 + timedelta(hours=2), CFG) == []
    fired = await timers.fire_due(esc_db, T0 + timedelta(hours=4, minutes=1), CFG)
    assert [(e.event_type, e.payload["deadline"]) for e in fired] == [("CaseEscalated", "resolve")]
    await _fold(
        esc_db,
        step(events.CaseResolved(by="w-1", note="ok", closes_at=None), env.case_id, T0),
        T0 + timedelta(hours=4, minutes=2),
    )
    assert await timers.fire_due(esc_db, T0 + timedelta(days=2), CFG) == []


async def test_reopening_re_arms_the_resolve_deadline(esc_db: asyncpg.Connection) -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=7200)
    await _fold(esc_db, env, T0)
    for ev in (
        events.CaseAcknowledged(by="w"),
        events.CaseResolved(by="w", note="n", closes_at=None),
        events.CaseClosed(by="d"),
    ):
        await _fold(esc_db, step(ev, env.case_id, T0), T0 + timedelta(minutes=10))
    assert await timers.fire_due(esc_db, T0 + timedelta(days=1), CFG) == []
    reopened_at = T0 + timedelta(days=1)
    await _fold(
        esc_db,
        step(events.CaseReopened(by="resident", reason="cold"), env.case_id, reopened_at),
        reopened_at,
    )
    assert await timers.fire_due(esc_db, reopened_at + timedelta(minutes=119), CFG) == []
    fired = await timers.fire_due(esc_db, reopened_at + timedelta(minutes=120), CFG)
    assert [e.payload["deadline"] for e in fired] == ["resolve"]


async def test_a_transfer_pauses_the_clock(esc_db: asyncpg.Connection) -> None:
    env = routed(at=T0, ack_s=3600, resolve_s=86400)
    await _fold(esc_db, env, T0)
    await _fold(
        esc_db,
        step(events.CaseTransferRequested(by="d", department="roads", reason="x"), env.case_id, T0),
        T0 + timedelta(minutes=30),
    )
    assert await timers.fire_due(esc_db, T0 + timedelta(hours=3), CFG) == []
    # routed again two hours later: 30 minutes were left
    again = routed(env.case_id, at=T0, ack_s=3600, resolve_s=86400)
    await _fold(esc_db, again, T0 + timedelta(hours=2, minutes=30))
    assert await timers.fire_due(esc_db, T0 + timedelta(hours=2, minutes=59), CFG) == []
    assert len(await timers.fire_due(esc_db, T0 + timedelta(hours=3), CFG)) == 1


async def test_emergency_mode_shortens_open_deadlines_at_once(esc_db: asyncpg.Connection) -> None:
    inside = routed(at=T0, ack_s=8 * 3600, resolve_s=86400, district="longsha")
    outside = routed(at=T0, ack_s=8 * 3600, resolve_s=86400, district="tiefeng")
    await _fold(esc_db, inside, T0)
    await _fold(esc_db, outside, T0)
    env = await timers.set_emergency(
        esc_db,
        "longsha",
        on=True,
        factor=0.25,
        reason="heating plant failure",
        by="ops",
        now=T0,
        cfg=CFG,
    )
    assert env.payload["timers_moved"] == 1
    fired = await timers.fire_due(esc_db, T0 + timedelta(hours=2), CFG)
    assert [e.case_id for e in fired] == [inside.case_id]  # 8 h × 0.25
    # a case routed into the area while it is in emergency mode gets the factor too
    newcomer = routed(at=T0 + timedelta(hours=2), ack_s=4 * 3600, resolve_s=86400)
    await _fold(esc_db, newcomer, T0 + timedelta(hours=2))
    early = await timers.fire_due(esc_db, T0 + timedelta(hours=2, minutes=59), CFG)
    assert newcomer.case_id not in {e.case_id for e in early}
    later = await timers.fire_due(esc_db, T0 + timedelta(hours=3), CFG)  # 4 h × 0.25 = 1 h
    assert (newcomer.case_id, 1) in [(e.case_id, e.payload["level"]) for e in later]
    await timers.set_emergency(
        esc_db,
        "longsha",
        on=False,
        factor=None,
        reason="restored",
        by="ops",
        now=T0 + timedelta(hours=3),
        cfg=CFG,
    )
    log = await esc_db.fetch("SELECT area, action, by FROM escalation.emergency_log ORDER BY id")
    assert [(r["area"], r["action"]) for r in log] == [("longsha", "on"), ("longsha", "off")]
    types = [e["event_type"] for e in await _outbox(esc_db)]
    assert types.count("EmergencyModeChanged") == 2


async def test_three_schedulers_fire_every_timer_exactly_once(
    stack: LocalStack, esc_db: asyncpg.Connection
) -> None:
    now = datetime.now(UTC)
    cases = [
        routed(at=now - timedelta(hours=1), ack_s=60 + i % 7, resolve_s=86400) for i in range(300)
    ]
    for env in cases:
        await _fold(esc_db, env, now - timedelta(hours=1))
    cfg = timers.Settings(ladder=LadderPolicy(step_s=3600, max_repeats=0))  # one rung each
    stop = asyncio.Event()
    replicas = [Scheduler(stack.postgres.url, cfg, batch=20, max_sleep_s=0.05) for _ in range(3)]
    tasks = [asyncio.create_task(s.run(stop)) for s in replicas]
    for _ in range(200):
        if sum(s.fired for s in replicas) >= 300:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    out = await _outbox(esc_db)
    ids = [e["event_id"] for e in out if e["event_type"] == "CaseEscalated"]
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert sorted({e["case_id"] for e in out}) == sorted(c.case_id for c in cases)
    assert sum(1 for s in replicas if s.fired) >= 2  # the work was actually shared


async def test_a_batch_folds_like_the_same_events_one_by_one(esc_db: asyncpg.Connection) -> None:
    """One batch, several events per case, in order: the outcome is that of folding them
    one at a time, and a redelivered batch (or an event twice in it) changes nothing."""
    acked = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    done = routed(at=T0, ack_s=3600, resolve_s=7200)
    waiting = routed(at=T0, ack_s=3600, resolve_s=7200, warn_s=600)
    batch = [
        acked,
        done,
        step(events.CaseAcknowledged(by="w"), acked.case_id, T0),
        waiting,
        step(events.CaseResolved(by="w", note="n", closes_at=None), done.case_id, T0),
        waiting,  # the same event twice in one batch
        step(events.CaseRated(rating=5), done.case_id, T0),  # not followed
    ]
    items = [(env, env.event()) for env in batch]
    assert await timers.fold_batch(esc_db, items, T0 + timedelta(minutes=1), CFG) == 5
    assert await timers.fold_batch(esc_db, items, T0 + timedelta(minutes=2), CFG) == 0
    pending = await esc_db.fetch(
        "SELECT case_id, kind, deadline FROM escalation.timers WHERE state = 'pending'"
    )
    assert sorted((r["case_id"], r["kind"], r["deadline"]) for r in pending) == sorted(
        [
            (acked.case_id, "escalate", "resolve"),
            (acked.case_id, "warn", "resolve"),
            (waiting.case_id, "escalate", "acknowledge"),
            (waiting.case_id, "warn", "acknowledge"),
        ]
    )
    phases = dict(await esc_db.fetch("SELECT case_id, phase FROM escalation.cases"))
    assert phases == {
        acked.case_id: "resolve",
        done.case_id: "done",
        waiting.case_id: "acknowledge",
    }
    # the timers of the batch fire as those of single folds do
    fired = await timers.fire_due(esc_db, T0 + timedelta(hours=1), CFG)
    assert sorted((e.case_id, e.event_type) for e in fired) == sorted(
        [(waiting.case_id, "CaseWarned"), (waiting.case_id, "CaseEscalated")]
    )


async def test_a_routing_replayed_after_its_case_moved_on_escalates_only_what_is_left(
    esc_db: asyncpg.Connection,
) -> None:
    """Escalation dead-lettered two cases' routings (a rollout, say) and then saw one case
    acknowledged and the other resolved. When the routings are replayed, the acknowledged case
    races only its resolve deadline, and the resolved one nothing."""
    acked = routed(at=T0, ack_s=3600, resolve_s=7200)
    resolved = routed(at=T0, ack_s=3600, resolve_s=7200)
    later = T0 + timedelta(minutes=20)
    assert await _fold(esc_db, step(events.CaseAcknowledged(by="w-1"), acked.case_id, later), later)
    assert await _fold(
        esc_db,
        step(events.CaseResolved(by="w-1", note="好了", closes_at=None), resolved.case_id, later),
        later,
    )
    assert await esc_db.fetchval("SELECT count(*) FROM escalation.early_events") == 2

    replayed_at = T0 + timedelta(hours=3)  # both deadlines of the first rung are past by now
    assert await _fold(esc_db, acked, replayed_at)
    assert await _fold(esc_db, resolved, replayed_at)
    phases = {
        r["case_id"]: r["phase"]
        for r in await esc_db.fetch("SELECT case_id, phase FROM escalation.cases")
    }
    assert phases == {acked.case_id: "resolve", resolved.case_id: "done"}
    pending = await esc_db.fetch(
        "SELECT case_id, deadline FROM escalation.timers WHERE state = 'pending'"
    )
    assert {(r["case_id"], r["deadline"]) for r in pending} == {(acked.case_id, "resolve")}
    assert await esc_db.fetchval("SELECT count(*) FROM escalation.early_events") == 0
    fired = await timers.fire_due(esc_db, replayed_at, CFG)
    assert [(e.case_id, e.event_type) for e in fired] == [(acked.case_id, "CaseEscalated")]
    assert fired[0].payload["deadline"] == "resolve"  # never the acknowledgement it made


async def test_a_resolution_nobody_verifies_lapses_once_and_emergency_mode_leaves_it(
    esc_db: asyncpg.Connection,
) -> None:
    """A resolved case waits for the resident for the verification window; then one
    `CaseVerificationLapsed` names the resolution it was about. A reopening in the window
    ends it, and emergency mode (a department's deadlines) does not shorten it."""
    cfg = CFG
    lapsing = routed(at=T0, ack_s=3600, resolve_s=7200, district="longsha")
    reopened = routed(at=T0, ack_s=3600, resolve_s=7200, district="longsha")
    resolved_at = T0 + timedelta(minutes=30)
    for env in (lapsing, reopened):
        assert await timers.fold(esc_db, env, env.event(), T0, cfg)
        fixed = events.CaseResolved(
            by="w-1", note="修好了", closes_at=resolved_at + timedelta(days=3)
        )
        fix = step(fixed, env.case_id, resolved_at)
        assert await timers.fold(esc_db, fix, fix.event(), resolved_at, cfg)
    await timers.set_emergency(
        esc_db, "longsha", on=True, factor=0.1, reason="flood", by="ops", now=resolved_at, cfg=cfg
    )
    back = step(events.CaseReopened(by="resident", reason="还是坏的"), reopened.case_id, T0)
    assert await timers.fold(esc_db, back, back.event(), resolved_at + timedelta(days=1), cfg)

    window_end = resolved_at + timedelta(days=3)
    assert [
        e.event_type
        for e in await timers.fire_due(esc_db, window_end - timedelta(seconds=1), cfg)
        if e.case_id == lapsing.case_id
    ] == []
    fired = [
        e for e in await timers.fire_due(esc_db, window_end, cfg) if e.case_id == lapsing.case_id
    ]
    assert [e.event_type for e in fired] == ["CaseVerificationLapsed"]
    lapse = fired[0].event()
    assert isinstance(lapse, events.CaseVerificationLapsed)
    assert (lapse.resolved_at, lapse.due_at) == (resolved_at, window_end)
    later = await timers.fire_due(esc_db, window_end + timedelta(days=30), cfg)
    assert "CaseVerificationLapsed" not in {e.event_type for e in later}


async def test_a_resolution_from_an_older_intake_closes_72_hours_after_it(
    esc_db: asyncpg.Connection,
) -> None:
    """Resolutions written before intake stated `closes_at` (in flight during an upgrade) keep
    the window escalation gave them then, also when one waits for its routing (a dead letter
    replayed) and comes back from the database."""

    def unstated(case_id: str, at: datetime) -> Envelope:
        env = step(events.CaseResolved(by="w-1", note="修好了"), case_id, at)
        payload = {k: v for k, v in env.payload.items() if k != "closes_at"}
        return env.model_copy(update={"payload": payload})

    in_order = routed(at=T0, ack_s=3600, resolve_s=7200)
    early = routed(at=T0, ack_s=3600, resolve_s=7200)
    resolved_at = T0 + timedelta(minutes=30)
    assert await _fold(esc_db, in_order, T0)
    assert await _fold(esc_db, unstated(in_order.case_id, resolved_at), resolved_at)
    assert await _fold(esc_db, unstated(early.case_id, resolved_at), resolved_at)  # kept early
    assert await _fold(esc_db, early, resolved_at + timedelta(minutes=5))  # then caught up
    due = dict(
        await esc_db.fetch(
            "SELECT case_id, due_at FROM escalation.timers WHERE kind = 'close' "
            "AND state = 'pending' AND case_id = ANY($1)",
            [in_order.case_id, early.case_id],
        )
    )
    assert due == {
        in_order.case_id: resolved_at + timedelta(hours=72),
        early.case_id: resolved_at + timedelta(hours=72),
    }
