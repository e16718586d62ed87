"""The PostgreSQL side of intake: each public function is one transaction.

State changes and the events announcing them are written together (the outbox), so an
accepted report or step is never lost and never announced without having happened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.intake import lifecycle
from services.intake.auth import NewKey, Principal, Role, generate_key, secret_matches, split_token
from services.intake.catalogue import Catalogue, Category
from services.intake.lifecycle import Action, Actor, Status, Step
from services.intake.models import ReportIn
from shared import events, topics
from shared.events import Envelope, wrap
from shared.ids import new_case_id
from shared.outbox import Outbox

PRODUCER = "intake"
SCHEMA = "intake"
DUPLICATE_RADIUS_M = 50.0
DUPLICATE_WINDOW = timedelta(hours=24)

outbox = Outbox(SCHEMA)


# --- catalogue ----------------------------------------------------------------------------


async def import_catalogue(conn: asyncpg.Connection, catalogue: Catalogue, *, replace: bool) -> int:
    """Insert categories (and with `replace`, overwrite existing ones). Returns rows written."""
    conflict = (
        "ON CONFLICT (code) DO UPDATE SET definition = EXCLUDED.definition, active = true, "
        "updated_at = now()"
        if replace
        else "ON CONFLICT (code) DO NOTHING"
    )
    rows = [(c.code, c.model_dump_json()) for c in catalogue.categories]
    async with conn.transaction():
        before = await conn.fetchval("SELECT count(*) FROM intake.categories")
        await conn.executemany(
            "INSERT INTO intake.categories (code, definition) VALUES ($1, $2::text::jsonb) "
            + conflict,
            rows,
        )
        after = await conn.fetchval("SELECT count(*) FROM intake.categories")
    return len(rows) if replace else int(after - before)


async def load_categories(conn: asyncpg.Connection) -> dict[str, Category]:
    rows = await conn.fetch(
        "SELECT definition::text AS d FROM intake.categories WHERE active ORDER BY code"
    )
    return {c.code: c for c in (Category.model_validate_json(r["d"]) for r in rows)}


# --- API keys -----------------------------------------------------------------------------


async def create_key(conn: asyncpg.Connection, name: str, role: Role, scope: str | None) -> NewKey:
    key = generate_key()
    await conn.execute(
        "INSERT INTO intake.api_keys (id, prefix, secret_hash, name, role, scope) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        key.id,
        key.prefix,
        key.secret_hash,
        name,
        role.value,
        scope,
    )
    return key


async def revoke_key(conn: asyncpg.Connection, prefix: str) -> bool:
    done = await conn.execute(
        "UPDATE intake.api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL",
        prefix,
    )
    return bool(done.endswith(" 1"))


async def list_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT prefix, name, role, scope, created_at, revoked_at FROM intake.api_keys "
            "ORDER BY created_at"
        )
    )


async def authenticate(conn: asyncpg.Connection, token: str) -> Principal | None:
    parts = split_token(token)
    if parts is None:
        return None
    row = await conn.fetchrow(
        "SELECT id, secret_hash, name, role, scope FROM intake.api_keys "
        "WHERE prefix = $1 AND revoked_at IS NULL",
        parts[0],
    )
    if row is None or not secret_matches(parts[1], row["secret_hash"]):
        return None
    return Principal(row["id"], row["name"], Role(row["role"]), row["scope"])


# --- reports ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    case_id: str
    tracking_token: str
    possible_duplicate_of: str | None
    replayed: bool = False
    conflict: bool = False  # the idempotency key was used with another body


def request_fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def report(
    pool: asyncpg.Pool,
    body: ReportIn,
    principal: Principal | None,
    *,
    idempotency: tuple[str, str, str] | None = None,  # (owner, key, request hash)
    now: datetime | None = None,
) -> Accepted:
    """Store a new case and its CaseReported event (to `cases.intake`) in one transaction."""
    now = now or datetime.now(UTC)
    case_id = new_case_id()
    token = secrets.token_urlsafe(18)
    async with pool.acquire() as conn, conn.transaction():
        if idempotency is not None:
            owner, key, fingerprint = idempotency
            # A concurrent request with the same key waits here for ours to commit.
            claimed = await conn.fetchval(
                "INSERT INTO intake.idempotency_keys "
                "(key_owner, idem_key, request_hash, status_code, response) "
                "VALUES ($1, $2, $3, 202, $4::text::jsonb) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                owner,
                key,
                fingerprint,
                orjson.dumps({"case_id": case_id, "tracking_token": token}).decode(),
            )
            if not claimed:
                row = await conn.fetchrow(
                    "SELECT request_hash, response::text AS r FROM intake.idempotency_keys "
                    "WHERE key_owner = $1 AND idem_key = $2",
                    owner,
                    key,
                )
                stored = orjson.loads(row["r"])
                dup = await conn.fetchval(
                    "SELECT possible_duplicate_of FROM intake.cases WHERE case_id = $1",
                    stored["case_id"],
                )
                return Accepted(
                    stored["case_id"],
                    stored["tracking_token"],
                    dup,
                    replayed=True,
                    conflict=row["request_hash"] != fingerprint,
                )
        loc = body.location
        duplicate = None
        if loc.lat is not None and loc.lon is not None:
            duplicate = await _nearby_open_case(conn, body.category, loc.lat, loc.lon, now)
        sensitivity = events.Sensitivity(
            care_groups=tuple(body.sensitivity.care_groups) if body.sensitivity else (),
            community_correction=bool(body.sensitivity and body.sensitivity.community_correction),
        )
        reporter = (
            events.Contact(**body.reporter.model_dump()) if body.reporter is not None else None
        )
        event = events.CaseReported(
            category=body.category,
            description=body.description,
            location=events.Location(**loc.model_dump()),
            channel=body.channel,
            reported_at=now,
            reporter=reporter,
            on_behalf_of=body.on_behalf_of,
            reported_by=principal.scope if principal and principal.role is Role.WORKER else None,
            media_urls=tuple(str(u) for u in body.media_urls),
            sensitivity=sensitivity,
            possible_duplicate_of=duplicate,
            attributes=dict(body.attributes),
        )
        env = wrap(event, case_id=case_id, producer=PRODUCER, occurred_at=now)
        await conn.execute(
            """INSERT INTO intake.cases (case_id, tracking_token, status, category, description,
                   channel, lat, lon, address, building_code, reporter, on_behalf_of, reported_by,
                   media_urls, sensitivity, possible_duplicate_of, reported_at, updated_at,
                   reported_with_key)
               VALUES ($1, $2, 'reported', $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, $11, $12,
                   $13::text::jsonb, $14::text::jsonb, $15, $16, $16, $17)""",
            case_id,
            token,
            body.category,
            body.description,
            body.channel.value,
            loc.lat,
            loc.lon,
            loc.address,
            loc.building_code,
            reporter.model_dump_json() if reporter else None,
            body.on_behalf_of,
            event.reported_by,
            orjson.dumps(list(event.media_urls)).decode(),
            sensitivity.model_dump_json(),
            duplicate,
            now,
            principal.key_id if principal else None,
        )
        await _record_event(conn, env, {"category": body.category, "channel": body.channel.value})
        await outbox.add(conn, env, topic=topics.CASES_INTAKE)
    return Accepted(case_id, token, duplicate)


async def _nearby_open_case(
    conn: asyncpg.Connection, category: str, lat: float, lon: float, now: datetime
) -> str | None:
    """An open case of the same category within 50 m in the last 24 h (the closest)."""
    dlat = DUPLICATE_RADIUS_M / 111_320.0
    dlon = dlat / max(0.01, abs(math.cos(math.radians(lat))))
    value: str | None = await conn.fetchval(
        """SELECT case_id FROM intake.cases
           WHERE category = $1 AND reported_at > $2 AND status <> 'closed'
             AND lat BETWEEN $3 AND $4 AND lon BETWEEN $5 AND $6
             AND 2 * 6371000 * asin(sqrt(
                   power(sin(radians(lat - $7) / 2), 2)
                   + cos(radians($7)) * cos(radians(lat)) * power(sin(radians(lon - $8) / 2), 2)
                 )) <= $9
           ORDER BY reported_at LIMIT 1""",
        category,
        now - DUPLICATE_WINDOW,
        lat - dlat,
        lat + dlat,
        lon - dlon,
        lon + dlon,
        lat,
        lon,
        DUPLICATE_RADIUS_M,
    )
    return value


def _timeline_details(event: events.Event) -> dict[str, Any]:
    """What the timeline keeps of an event: never contact details or sensitivity flags."""
    if isinstance(event, events.CaseReported):
        return {"category": event.category, "channel": event.channel.value}
    data = event.model_dump(mode="json")
    data.pop("escalation_chain", None)  # names and phone numbers of the chain
    return dict(data)


async def _record_event(conn: asyncpg.Connection, env: Envelope, details: dict[str, Any]) -> bool:
    """Adds the event to the case's timeline; False if it was there already."""
    inserted = await conn.fetchval(
        "INSERT INTO intake.case_events (event_id, case_id, event_type, occurred_at, producer, "
        "payload) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb) ON CONFLICT DO NOTHING RETURNING 1",
        env.event_id,
        env.case_id,
        env.event_type,
        env.occurred_at,
        env.producer,
        orjson.dumps(details).decode(),
    )
    return bool(inserted)


# --- steps --------------------------------------------------------------------------------


class CaseNotFound(Exception):
    pass


class Forbidden(Exception):
    pass


def actor_for(principal: Principal | None) -> Actor:
    if principal is None:
        return Actor.RESIDENT
    return {
        Role.DEPARTMENT: Actor.DEPARTMENT,
        Role.WORKER: Actor.WORKER,
        Role.OPERATOR: Actor.OPERATOR,
        Role.ADMIN: Actor.OPERATOR,
    }.get(principal.role, Actor.RESIDENT)


def may_see(principal: Principal | None, case: asyncpg.Record, tracking_token: str | None) -> bool:
    """Departments and workers see the cases assigned to them, operators everything, a
    resident the case whose tracking token they hold."""
    if tracking_token is not None and secrets.compare_digest(
        tracking_token, case["tracking_token"]
    ):
        return True
    if principal is None:
        return False
    if principal.sees_everything:
        return True
    if principal.role is Role.DEPARTMENT:
        return bool(case["department"]) and case["department"] == principal.scope
    if principal.role is Role.WORKER:
        return bool(case["worker_id"]) and case["worker_id"] == principal.scope
    return False


async def apply_step(
    pool: asyncpg.Pool,
    case_id: str,
    step_action: Action,
    *,
    principal: Principal | None,
    tracking_token: str | None,
    note: str | None = None,
    reason: str | None = None,
    photo_urls: tuple[str, ...] = (),
    rating: int | None = None,
) -> tuple[Status, Envelope]:
    """Take one lifecycle step. Raises CaseNotFound, Forbidden, IllegalTransition, NotPermitted."""
    async with pool.acquire() as conn, conn.transaction():
        case = await conn.fetchrow(
            "SELECT * FROM intake.cases WHERE case_id = $1 FOR UPDATE", case_id
        )
        if case is None:
            raise CaseNotFound(case_id)
        if principal is not None and principal.role is not Role.RESIDENT_APP:
            if not may_see(principal, case, None):
                raise Forbidden(case_id)
            actor, by = actor_for(principal), principal.scope or principal.name
        elif tracking_token is not None and secrets.compare_digest(
            tracking_token, case["tracking_token"]
        ):
            actor, by = Actor.RESIDENT, "resident"
        else:
            raise Forbidden(case_id)
        decision = lifecycle.decide(
            Status(case["status"]),
            actor,
            Step(
                action=step_action,
                by=by,
                note=note,
                reason=reason,
                photo_urls=photo_urls,
                rating=rating,
                department=case["department"],
            ),
            already_rated=case["rating"] is not None,
        )
        env = wrap(decision.event, case_id=case_id, producer=PRODUCER)
        await conn.execute(
            "UPDATE intake.cases SET status = $2, rating = COALESCE($3, rating), updated_at = $4 "
            "WHERE case_id = $1",
            case_id,
            decision.status.value,
            rating if step_action is Action.RATE else None,
            env.occurred_at,
        )
        await _record_event(conn, env, _timeline_details(decision.event))
        items = [(env, topics.CASES_LIFECYCLE)]
        if decision.also_reroute is not None:
            items.append(
                (
                    wrap(decision.also_reroute, case_id=case_id, producer=PRODUCER),
                    topics.CASES_INTAKE,
                )
            )
        await outbox.add_many(conn, items)
    return decision.status, env


# --- read model ---------------------------------------------------------------------------


async def apply_lifecycle_event(
    conn: asyncpg.Connection, env: Envelope, event: events.Event
) -> bool:
    """Fold one event of `cases.lifecycle` into the case. Idempotent by event_id; returns
    False for a duplicate (or one of intake's own events, recorded when it was written)."""
    async with conn.transaction():
        if not await _record_event(conn, env, _timeline_details(event)):
            return False
        case = await conn.fetchrow(
            "SELECT status, escalation_level FROM intake.cases WHERE case_id = $1 FOR UPDATE",
            env.case_id,
        )
        if case is None:
            return True  # a case this intake never saw (another city's, or a test): timeline only
        status = lifecycle.status_after_event(Status(case["status"]), event)
        match event:
            case events.CaseRouted():
                await conn.execute(
                    """UPDATE intake.cases SET status = $2, department = $3, grid_id = $4,
                           district = $5, worker_id = $6, priority = $7, acknowledge_by = $8,
                           resolve_by = $9, updated_at = $10 WHERE case_id = $1""",
                    env.case_id,
                    status.value,
                    event.department,
                    event.grid_id,
                    event.district,
                    event.worker_id,
                    event.priority.value,
                    event.deadlines.acknowledge_by,
                    event.deadlines.resolve_by,
                    env.occurred_at,
                )
            case events.CaseEscalated():
                await conn.execute(
                    "UPDATE intake.cases SET escalation_level = GREATEST(escalation_level, $2), "
                    "updated_at = $3 WHERE case_id = $1",
                    env.case_id,
                    event.level,
                    env.occurred_at,
                )
            case _:
                await conn.execute(
                    "UPDATE intake.cases SET status = $2, updated_at = $3 WHERE case_id = $1",
                    env.case_id,
                    status.value,
                    env.occurred_at,
                )
    return True


# --- queries ------------------------------------------------------------------------------


async def get_case(conn: asyncpg.Connection, case_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM intake.cases WHERE case_id = $1", case_id
    )
    return row


async def find_by_token(conn: asyncpg.Connection, token: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM intake.cases WHERE tracking_token = $1", token
    )
    return row


async def timeline(conn: asyncpg.Connection, case_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT event_id, event_type, occurred_at, producer, payload::text AS payload "
            "FROM intake.case_events WHERE case_id = $1 ORDER BY occurred_at, event_id",
            case_id,
        )
    )


@dataclass(frozen=True)
class CaseFilter:
    status: list[str] | None = None
    category: list[str] | None = None
    department: str | None = None
    grid_id: str | None = None
    district: str | None = None
    worker_id: str | None = None
    reported_after: datetime | None = None
    reported_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    min_escalation_level: int | None = None
    case_ids: list[str] | None = None


def encode_cursor(reported_at: datetime, case_id: str) -> str:
    raw = json.dumps([reported_at.isoformat(), case_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError on a cursor that this service did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, case_id = json.loads(raw)
        return datetime.fromisoformat(at), str(case_id)
    except Exception as exc:
        raise ValueError("not a cursor returned by this API") from exc


async def list_cases(
    conn: asyncpg.Connection,
    f: CaseFilter,
    *,
    limit: int,
    cursor: tuple[datetime, str] | None = None,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paginated on (reported_at, case_id)."""
    where, args = [], []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.format(f"${len(args)}"))

    if f.status:
        add("status = ANY({})", f.status)
    if f.category:
        add("category = ANY({})", f.category)
    if f.department is not None:
        add("department = {}", f.department)
    if f.grid_id is not None:
        add("grid_id = {}", f.grid_id)
    if f.district is not None:
        add("district = {}", f.district)
    if f.worker_id is not None:
        add("worker_id = {}", f.worker_id)
    if f.reported_after is not None:
        add("reported_at >= {}", f.reported_after)
    if f.reported_before is not None:
        add("reported_at <= {}", f.reported_before)
    if f.updated_after is not None:
        add("updated_at >= {}", f.updated_after)
    if f.updated_before is not None:
        add("updated_at <= {}", f.updated_before)
    if f.min_escalation_level is not None:
        add("escalation_level >= {}", f.min_escalation_level)
    if f.case_ids is not None:
        add("case_id = ANY({})", f.case_ids)
    if cursor is not None:
        args.extend(cursor)
        where.append(f"(reported_at, case_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    sql = (
        "SELECT * FROM intake.cases"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY reported_at DESC, case_id DESC LIMIT ${len(args)}"
    )
    return list(await conn.fetch(sql, *args))


def new_idempotency_owner(principal: Principal | None, address: str) -> str:
    return str(principal.key_id) if principal else f"addr:{address}"
