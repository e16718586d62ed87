"""Timers in PostgreSQL: arming them from lifecycle events, firing them exactly once.

Every function takes a connection inside the caller's transaction. Firing is
`SchedulerBatch`: claim due timers with `FOR UPDATE SKIP LOCKED` (replicas skip each other's
rows), write each timer's event to the outbox, and either re-arm the timer in place for the
next rung (a new version, so the next firing has a new event id) or mark it fired — fenced by
its version, all in one transaction, so a crash either fires a timer completely or not at all.
The history of firings is the event stream (and the outbox), not old timer rows.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from prometheus_client import Counter, Histogram

from services.escalation.clocks import (
    FOLLOWED,
    CaseClock,
    NewTimer,
    apply,
    catch_up,
    routed_areas,
)
from services.escalation.deadlines import (
    CHINA_2026,
    LadderPolicy,
    WorkCalendar,
    next_escalation,
    with_factor,
)
from shared import events, topics
from shared.events import Envelope, EscalationStep, first_seen, json_time, wrap, wrap_payload
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

_CASE_COLUMNS = [f.name for f in dataclasses.fields(CaseClock)]
_CASE_TYPES = [
    "text", "text", "text", "text", "text", "text", "boolean", "float8", "float8", "float8",
    "text", "timestamptz", "timestamptz", "timestamptz",
]  # fmt: skip
_SELECT_CASE = ", ".join(c + ("::text AS chain" if c == "chain" else "") for c in _CASE_COLUMNS)
_UPSERT_CASES = f"""
INSERT INTO escalation.cases ({", ".join(_CASE_COLUMNS)}, updated_at)
SELECT {", ".join("c." + c + ("::jsonb" if c == "chain" else "") for c in _CASE_COLUMNS)}, now()
FROM unnest({", ".join(f"${i}::{t}[]" for i, t in enumerate(_CASE_TYPES, 1))})
     AS c({", ".join(_CASE_COLUMNS)})
ON CONFLICT (case_id) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _CASE_COLUMNS[1:])}, updated_at = now()
"""


async def fold(
    conn: asyncpg.Connection, env: Envelope, event: events.Event, now: datetime, cfg: Settings
) -> bool:
    """Apply one lifecycle event. Idempotent by event id; returns False for a duplicate."""
    return await fold_batch(conn, [(env, event)], now, cfg) == 1


async def fold_batch(
    conn: asyncpg.Connection,
    items: Sequence[tuple[Envelope, events.Event]],
    now: datetime,
    cfg: Settings,
) -> int:
    """Apply a batch of lifecycle events in order, in one transaction and a handful of
    statements whatever the batch's size. Idempotent by event id: returns how many events
    were new (and followed)."""
    items = [(env, ev) for env, ev in items if isinstance(ev, FOLLOWED)]
    if not items:
        return 0
    async with conn.transaction():
        new_ids = {
            r["event_id"]
            for r in await conn.fetch(
                "INSERT INTO escalation.seen_events (event_id) "
                "SELECT DISTINCT unnest($1::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id",
                [env.event_id for env, _ in items],
            )
        }
        fresh = first_seen(items, new_ids)
        if not fresh:
            return 0
        # Locked in a fixed order, so that two replicas folding overlapping batches (during a
        # rebalance) wait for each other instead of deadlocking.
        clocks: dict[str, CaseClock | None] = {
            r["case_id"]: CaseClock.from_row(r)
            for r in await conn.fetch(
                f"SELECT {_SELECT_CASE} FROM escalation.cases WHERE case_id = ANY($1) "
                "ORDER BY case_id FOR UPDATE",
                list({env.case_id for env, _ in fresh}),
            )
        }
        had_clock = set(clocks)
        areas = {
            a for _, ev in fresh if isinstance(ev, events.CaseRouted) for a in routed_areas(ev)
        }
        factors: dict[str, float] = {}
        if areas:
            factors = {
                r["area"]: float(r["factor"])
                for r in await conn.fetch(
                    "SELECT area, factor FROM escalation.emergency_areas WHERE area = ANY($1)",
                    list(areas),
                )
            }
        # Events that came before their case's routing (see migration 0002), for the cases
        # this batch routes for the first time: usually none, one indexed lookup.
        first_routed = [
            env.case_id
            for env, ev in fresh
            if isinstance(ev, events.CaseRouted) and clocks.get(env.case_id) is None
        ]
        early: dict[str, list[tuple[datetime, events.Event]]] = collections.defaultdict(list)
        if first_routed:
            for r in await conn.fetch(
                "SELECT case_id, occurred_at, event_type, payload::text AS payload "
                "FROM escalation.early_events WHERE case_id = ANY($1) ORDER BY occurred_at, id",
                first_routed,
            ):
                early[r["case_id"]].append(
                    (
                        r["occurred_at"],
                        events.EVENT_TYPES[r["event_type"]].model_validate_json(r["payload"]),
                    )
                )
        caught_up: set[str] = set()
        new_early: list[tuple[str, datetime, str, str]] = []
        changed: dict[str, CaseClock] = {}
        armed: dict[str, tuple[NewTimer, ...]] = {}
        for env, ev in fresh:
            factor = None
            if isinstance(ev, events.CaseRouted):
                factor = min((factors[a] for a in routed_areas(ev) if a in factors), default=None)
            clock = clocks.get(env.case_id)
            if clock is None and not isinstance(ev, events.CaseRouted):
                # before its routing: kept until the routing comes (a dead letter replayed)
                early[env.case_id].append((env.occurred_at, ev))
                # as it came: a resolution that did not state `closes_at` must not come back
                # stating none
                payload = ev.model_dump_json(exclude_unset=True)
                new_early.append((env.case_id, env.occurred_at, env.event_type, payload))
                continue
            change = apply(
                clock,
                env.case_id,
                ev,
                now,
                cfg.calendar,
                factor,
                occurred_at=env.occurred_at,
            )
            if change is None:
                continue
            if clock is None and early.get(env.case_id):
                change = catch_up(
                    change,
                    env.case_id,
                    early.pop(env.case_id),
                    now,
                    cfg.calendar,
                )
                caught_up.add(env.case_id)
            clocks[env.case_id] = changed[env.case_id] = change.clock
            armed[env.case_id] = change.arm  # replaces what the events before armed
        new_early = [row for row in new_early if row[0] not in caught_up]
        if new_early:
            await conn.execute(
                "INSERT INTO escalation.early_events (case_id, occurred_at, event_type, payload) "
                "SELECT c, o, t, p::jsonb FROM unnest($1::text[], $2::timestamptz[], "
                "$3::text[], $4::text[]) AS x(c, o, t, p)",
                *[list(col) for col in zip(*new_early, strict=True)],
            )
            # kept as long as a dead letter is (30 days): a routing that never comes is gone
            await conn.execute(
                "DELETE FROM escalation.early_events WHERE kept_at < now() - interval '30 days'"
            )
        if caught_up:
            await conn.execute(
                "DELETE FROM escalation.early_events WHERE case_id = ANY($1)", list(caught_up)
            )
        if not changed:
            return len(fresh)
        # Only a case escalation knew before this batch can have pending timers (they are
        # armed with its clock, in the same transaction): a batch of new cases — the usual
        # one — cancels nothing and skips the statement.
        known = [case_id for case_id in changed if case_id in had_clock]
        if known:
            await conn.execute(
                "UPDATE escalation.timers SET state = 'cancelled', version = version + 1 "
                "WHERE case_id = ANY($1) AND state = 'pending'",
                known,
            )
        await conn.execute(
            _UPSERT_CASES,
            *[list(col) for col in zip(*(c.columns() for c in changed.values()), strict=True)],
        )
        rows = [(case_id, *t.columns()) for case_id, ts in armed.items() for t in ts]
        if rows:
            await conn.execute(
                "INSERT INTO escalation.timers (case_id, kind, deadline, level, deadline_at, "
                "due_at, started_at) SELECT * FROM unnest($1::text[], $2::text[], $3::text[], "
                "$4::int[], $5::timestamptz[], $6::timestamptz[], $7::timestamptz[])",
                *[list(col) for col in zip(*rows, strict=True)],
            )
            # Wake the schedulers: these timers may be earlier than the one they sleep for.
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return len(fresh)


# --- firing ---------------------------------------------------------------------------------

_CLAIM = """
SELECT t.id, t.case_id, t.kind, t.deadline, t.level, t.repeat, t.deadline_at, t.due_at,
       t.started_at, t.version, c.chain::text AS chain, c.department, c.ack_window_s,
       c.resolve_window_s
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
    if row["kind"] == "close":
        return events.CaseVerificationLapsed, {
            "resolved_at": json_time(row["started_at"]),
            "due_at": due_at,
        }
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
            key = (row["kind"], str(payload.get("level", row["level"])))
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
                     AND t.kind <> 'close'  -- a resident's verification window stays as it is
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
