"""Timers in PostgreSQL: arming them from lifecycle events, firing them exactly once.

Every function takes a connection inside the caller's transaction. Firing is
`SchedulerBatch`: claim due timers with `FOR UPDATE SKIP LOCKED` (replicas skip each other's
rows), write each timer's event to the outbox, and either re-arm the timer in place for the
next rung (a new version, so the next firing has a new event id) or mark it fired — fenced by
its version, all in one transaction, so a crash either fires a timer completely or not at all.
The history of firings is the event stream (and the outbox), not old timer rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Counter, Histogram

from services.escalation.deadlines import (
    CHINA_2026,
    LadderPolicy,
    WorkCalendar,
    after_pause,
    due,
    next_escalation,
    with_factor,
)
from shared import events, topics
from shared.events import Envelope, EscalationStep, json_time, wrap, wrap_payload
from shared.ids import derived_event_id
from shared.metrics import REGISTRY
from shared.outbox import Outbox

PRODUCER = "escalation"
outbox = Outbox("escalation")
NOTIFY_CHANNEL = "escalation_timers"

FIRED = Counter(
    "griddispatch_escalation_timers_fired_total",
    "Timers fired",
    ["kind", "level"],
    registry=REGISTRY,
)
BREACHES = Counter(
    "griddispatch_sla_breaches_total",
    "Deadlines missed, by department and deadline",
    ["department", "deadline"],
    registry=REGISTRY,
)
LATENESS = Histogram(
    "griddispatch_timer_lateness_seconds",
    "Fired minus due",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Settings:
    calendar: WorkCalendar = CHINA_2026
    ladder: LadderPolicy = field(default_factory=LadderPolicy)


# --- arming from lifecycle events -----------------------------------------------------------


async def _cancel(conn: asyncpg.Connection, case_id: str) -> int:
    done = await conn.execute(
        "UPDATE escalation.timers SET state = 'cancelled', version = version + 1 "
        "WHERE case_id = $1 AND state = 'pending'",
        case_id,
    )
    return int(done.split()[-1])


async def _arm(
    conn: asyncpg.Connection,
    case_id: str,
    deadline: str,
    deadline_at: datetime,
    warn_before_s: float,
    now: datetime,
    level: int = 1,
) -> None:
    rows = [("escalate", deadline, level, 0, deadline_at, deadline_at)]
    warn_at = deadline_at - timedelta(seconds=warn_before_s)
    if warn_before_s > 0 and warn_at > now:
        rows.append(("warn", deadline, level - 1, 0, deadline_at, warn_at))
    await conn.executemany(
        "INSERT INTO escalation.timers (case_id, kind, deadline, level, repeat, deadline_at, "
        "due_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(case_id, *r) for r in rows],
    )
    # Wake the schedulers: this timer may be earlier than the one they sleep for.
    await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)


async def emergency_factor(conn: asyncpg.Connection, *areas: str | None) -> float | None:
    value = await conn.fetchval(
        "SELECT min(factor) FROM escalation.emergency_areas WHERE area = ANY($1)",
        [a for a in areas if a],
    )
    return float(value) if value is not None else None


async def fold(
    conn: asyncpg.Connection, env: Envelope, event: events.Event, now: datetime, cfg: Settings
) -> bool:
    """Apply one lifecycle event. Idempotent by event id; returns False for a duplicate."""
    if not isinstance(
        event,
        events.CaseRouted
        | events.CaseAcknowledged
        | events.CaseResolved
        | events.CaseClosed
        | events.CaseReopened
        | events.CaseTransferRequested,
    ):
        return False
    async with conn.transaction():
        if not await conn.fetchval(
            "INSERT INTO escalation.seen_events (event_id) VALUES ($1) "
            "ON CONFLICT DO NOTHING RETURNING true",
            env.event_id,
        ):
            return False
        case = await conn.fetchrow(
            "SELECT * FROM escalation.cases WHERE case_id = $1 FOR UPDATE", env.case_id
        )
        cal = cfg.calendar
        match event:
            case events.CaseRouted():
                d = event.deadlines
                ack_window = (d.acknowledge_by - event.reported_at).total_seconds()
                res_window = (d.resolve_by - event.reported_at).total_seconds()
                wt = d.working_time
                ack_due = due(event.reported_at, ack_window, working_time=wt, cal=cal)
                res_due = due(event.reported_at, res_window, working_time=wt, cal=cal)
                if case is not None and case["phase"] == "paused" and case["due_at"]:
                    # back from a transfer: the clock resumes where it stopped
                    ack_due = after_pause(
                        case["due_at"], case["paused_at"], now, working_time=wt, cal=cal
                    )
                    res_due = after_pause(
                        case["resolve_due_at"], case["paused_at"], now, working_time=wt, cal=cal
                    )
                factor = await emergency_factor(
                    conn, event.district, event.street_office, event.grid_id
                )
                if factor is not None:
                    ack_due = with_factor(now, ack_due, factor, working_time=wt, cal=cal)
                    res_due = with_factor(now, res_due, factor, working_time=wt, cal=cal)
                await _cancel(conn, env.case_id)
                await conn.execute(
                    """INSERT INTO escalation.cases (case_id, department, district, street_office,
                           grid_id, chain, working_time, warn_before_s, ack_window_s,
                           resolve_window_s, phase, due_at, resolve_due_at)
                       VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10,
                               'acknowledge', $11, $12)
                       ON CONFLICT (case_id) DO UPDATE SET department = EXCLUDED.department,
                           district = EXCLUDED.district, street_office = EXCLUDED.street_office,
                           grid_id = EXCLUDED.grid_id, chain = EXCLUDED.chain,
                           working_time = EXCLUDED.working_time,
                           warn_before_s = EXCLUDED.warn_before_s,
                           ack_window_s = EXCLUDED.ack_window_s,
                           resolve_window_s = EXCLUDED.resolve_window_s, phase = 'acknowledge',
                           due_at = EXCLUDED.due_at, resolve_due_at = EXCLUDED.resolve_due_at,
                           paused_at = NULL, updated_at = now()""",
                    env.case_id,
                    event.department,
                    event.district,
                    event.street_office,
                    event.grid_id,
                    json.dumps([s.model_dump(mode="json") for s in event.escalation_chain]),
                    wt,
                    float(d.warn_before_s),
                    ack_window,
                    res_window,
                    ack_due,
                    res_due,
                )
                await _arm(conn, env.case_id, "acknowledge", ack_due, d.warn_before_s, now)
            case events.CaseAcknowledged() if case is not None:
                await _cancel(conn, env.case_id)
                res_due = case["resolve_due_at"]
                await conn.execute(
                    "UPDATE escalation.cases SET phase = 'resolve', due_at = $2, updated_at = now()"
                    " WHERE case_id = $1",
                    env.case_id,
                    res_due,
                )
                await _arm(conn, env.case_id, "resolve", res_due, case["warn_before_s"], now)
            case events.CaseResolved() | events.CaseClosed() if case is not None:
                await _cancel(conn, env.case_id)
                await conn.execute(
                    "UPDATE escalation.cases SET phase = 'done', updated_at = now() "
                    "WHERE case_id = $1",
                    env.case_id,
                )
            case events.CaseReopened() if case is not None:
                await _cancel(conn, env.case_id)
                res_due = due(
                    now, case["resolve_window_s"], working_time=case["working_time"], cal=cal
                )
                await conn.execute(
                    "UPDATE escalation.cases SET phase = 'resolve', due_at = $2, "
                    "resolve_due_at = $2, updated_at = now() WHERE case_id = $1",
                    env.case_id,
                    res_due,
                )
                await _arm(conn, env.case_id, "resolve", res_due, case["warn_before_s"], now)
            case events.CaseTransferRequested() if case is not None:
                await _cancel(conn, env.case_id)
                await conn.execute(
                    "UPDATE escalation.cases SET phase = 'paused', paused_at = $2, "
                    "updated_at = now() WHERE case_id = $1",
                    env.case_id,
                    now,
                )
    return True


# --- firing ---------------------------------------------------------------------------------

_CLAIM = """
SELECT t.id, t.case_id, t.kind, t.deadline, t.level, t.repeat, t.deadline_at, t.due_at,
       t.version, c.chain::text AS chain, c.department, c.ack_window_s, c.resolve_window_s
FROM escalation.timers t JOIN escalation.cases c USING (case_id)
WHERE t.state = 'pending' AND t.due_at <= $1
ORDER BY t.due_at
LIMIT $2
FOR UPDATE OF t, c SKIP LOCKED
"""
# Locking the case as well as the timer serialises firing with `fold`: a lifecycle event being
# applied holds the case row, so its timers are skipped until it commits; and a fold that
# waits for a firing transaction sees (and cancels) the next rung that firing armed.


def timer_payload(
    row: Mapping[str, Any], chain: list[dict[str, Any]]
) -> tuple[type[events.Event], dict[str, Any]]:
    """The event of a firing timer, as its type and JSON payload, built straight from our own
    validated rows (the hot path of firing; tests hold it to the models' own dump)."""
    due_at = json_time(row["deadline_at"])
    if row["kind"] == "warn":
        return events.CaseWarned, {
            "deadline": row["deadline"],
            "due_at": due_at,
            "level": row["level"],
        }
    target = chain[min(row["level"], len(chain) - 1)]
    return events.CaseEscalated, {
        "deadline": row["deadline"],
        "due_at": due_at,
        "level": target["level"],
        "to": target,
        "repeat": row["repeat"],
    }


async def fire_due(
    conn: asyncpg.Connection, now: datetime, cfg: Settings, *, batch: int = 500
) -> list[Envelope]:
    """Fire what is due at `now` (one transaction). Returns the events written."""
    written: list[Envelope] = []
    async with conn.transaction():
        rows = await conn.fetch(_CLAIM, now, batch)
        if not rows:
            return written
        next_rows: list[tuple[int, int, int, int, datetime]] = []
        done: list[asyncpg.Record] = []  # fired with no next rung
        chains: dict[str, list[dict[str, Any]]] = {}  # many cases share a chain: parse once
        fired: dict[tuple[str, str], int] = {}  # metric labels, counted once per batch
        breaches: dict[tuple[str, str], int] = {}
        for row in rows:
            chain = chains.get(row["chain"])
            if chain is None:
                chain = [
                    EscalationStep.model_validate(s).model_dump(mode="json")
                    for s in json.loads(row["chain"])
                ]
                chains[row["chain"]] = chain
            model, payload = timer_payload(row, chain)
            written.append(
                wrap_payload(
                    model.EVENT_TYPE,
                    payload,
                    schema_version=model.SCHEMA_VERSION,
                    case_id=row["case_id"],
                    producer=PRODUCER,
                    # one id per timer and version: a firing can never be told twice
                    event_id=derived_event_id(
                        row["case_id"], f"timer/{row['id']}/v{row['version']}"
                    ),
                    occurred_at=now,
                )
            )
            key = (row["kind"], str(payload["level"]))
            fired[key] = fired.get(key, 0) + 1
            LATENESS.observe(max(0.0, (now - row["due_at"]).total_seconds()))
            if row["kind"] == "escalate":
                if row["level"] == 1 and row["repeat"] == 0:
                    key = (row["department"] or "", row["deadline"])
                    breaches[key] = breaches.get(key, 0) + 1
                window = (
                    row["ack_window_s"]
                    if row["deadline"] == "acknowledge"
                    else row["resolve_window_s"]
                )
                nxt = next_escalation(
                    row["level"], len(chain), row["repeat"], row["due_at"], window, cfg.ladder
                )
                if nxt is not None:
                    level, repeat, at = nxt
                    next_rows.append((row["id"], row["version"], level, repeat, at))
                    continue
            done.append(row)
        await outbox.add_many(conn, [(e, topics.CASES_LIFECYCLE) for e in written])
        # Fenced by version: a timer moved since we read it is not touched (and cannot be,
        # as we hold its row lock; the check documents the invariant and guards refactors).
        if done:
            await conn.execute(
                "UPDATE escalation.timers t SET state = 'fired', fired_at = $3 "
                "FROM unnest($1::bigint[], $2::int[]) AS f(id, version) "
                "WHERE t.id = f.id AND t.version = f.version",
                [r["id"] for r in done],
                [r["version"] for r in done],
                now,
            )
        if next_rows:
            # the next rung in the same row: one row write per firing instead of two
            cols = list(zip(*next_rows, strict=True))
            await conn.execute(
                "UPDATE escalation.timers t SET level = n.l, repeat = n.r, due_at = n.du, "
                "version = t.version + 1, fired_at = $6 FROM unnest($1::bigint[], $2::int[], "
                "$3::int[], $4::int[], $5::timestamptz[]) AS n(id, version, l, r, du) "
                "WHERE t.id = n.id AND t.version = n.version",
                *[list(c) for c in cols],
                now,
            )
    for labels, n in fired.items():
        FIRED.labels(*labels).inc(n)
    for labels, n in breaches.items():
        BREACHES.labels(*labels).inc(n)
    return written


async def next_due(conn: asyncpg.Connection) -> datetime | None:
    value: datetime | None = await conn.fetchval(
        "SELECT min(due_at) FROM escalation.timers WHERE state = 'pending'"
    )
    return value


# --- emergency mode -------------------------------------------------------------------------


async def set_emergency(
    conn: asyncpg.Connection,
    area: str,
    *,
    on: bool,
    factor: float | None,
    reason: str,
    by: str,
    now: datetime,
    cfg: Settings,
) -> Envelope:
    """Switch `area` (a district, street office or grid code) into or out of emergency mode.
    Switching on moves every pending timer of the area's open cases at once; the switch is
    audited and announced as an event."""
    moved = 0
    async with conn.transaction():
        if on:
            if factor is None or not 0 < factor <= 1:
                raise ValueError("emergency mode needs a factor in (0, 1]")
            await conn.execute(
                "INSERT INTO escalation.emergency_areas (area, factor, reason, by) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (area) DO UPDATE SET factor = $2, "
                "reason = $3, by = $4, since = now()",
                area,
                factor,
                reason,
                by,
            )
            rows = await conn.fetch(
                """SELECT t.id, t.due_at, t.deadline_at, c.working_time FROM escalation.timers t
                   JOIN escalation.cases c USING (case_id)
                   WHERE t.state = 'pending' AND $1 IN (c.district, c.street_office, c.grid_id)
                   FOR UPDATE OF t""",
                area,
            )
            updates = []
            for r in rows:
                wt = r["working_time"]
                updates.append(
                    (
                        r["id"],
                        with_factor(now, r["due_at"], factor, working_time=wt, cal=cfg.calendar),
                        with_factor(
                            now, r["deadline_at"], factor, working_time=wt, cal=cfg.calendar
                        ),
                    )
                )
            await conn.executemany(
                "UPDATE escalation.timers SET due_at = $2, deadline_at = $3, version = version + 1"
                " WHERE id = $1",
                updates,
            )
            moved = len(updates)
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        else:
            await conn.execute("DELETE FROM escalation.emergency_areas WHERE area = $1", area)
        await conn.execute(
            "INSERT INTO escalation.emergency_log (area, action, factor, reason, by, timers_moved)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            area,
            "on" if on else "off",
            factor,
            reason,
            by,
            moved,
        )
        env = wrap(
            events.EmergencyModeChanged(
                area=area, on=on, factor=factor, reason=reason, by=by, timers_moved=moved
            ),
            case_id=f"area:{area}",
            producer=PRODUCER,
            occurred_at=now,
        )
        await outbox.add(conn, env, topic=topics.CASES_LIFECYCLE)
    return env


async def emergency_status(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [
        dict(r)
        for r in await conn.fetch(
            "SELECT area, factor, reason, by, since FROM escalation.emergency_areas ORDER BY area"
        )
    ]
