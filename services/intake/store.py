"""The PostgreSQL side of intake: each public function is one transaction.

State changes and the events announcing them are written together (the outbox), so an
accepted report or step is never lost and never announced without having happened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from prometheus_client import Counter

from services.intake import lifecycle, performance, retention
from services.intake.auth import NewKey, Principal, Role, generate_key, secret_matches, split_token
from services.intake.lifecycle import Action, Actor, Status, Step
from shared import events, topics
from shared.catalogue import Catalogue, Category, Taken
from shared.events import Envelope, first_seen, wrap
from shared.ids import derived_event_id
from shared.metrics import REGISTRY
from shared.outbox import Outbox
from shared.retention import masked

PRODUCER = "intake"
SCHEMA = "intake"

outbox = Outbox(SCHEMA)

CLOSED_UNVERIFIED = Counter(
    "griddispatch_cases_closed_unverified_total",
    "Resolved cases closed by GridDispatch because nobody verified or reopened them in time",
    ["department"],
    registry=REGISTRY,
)


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


async def take_catalogue(
    conn: asyncpg.Connection, catalogue: Catalogue, *, retire_others: bool
) -> Taken:
    """`griddispatch catalogue import`: the categories replace those with the same code (a
    retired one is offered again). With `retire_others`, those the file does not name are no
    longer offered: no new report or grid task in them, not in the service lists; the cases
    in them keep them (their views still apply the category's privacy)."""
    async with conn.transaction():
        written = await import_catalogue(conn, catalogue, replace=True)
        retired: list[str] = []
        if retire_others:
            retired = [
                r["code"]
                for r in await conn.fetch(
                    "UPDATE intake.categories SET active = false, updated_at = now() "
                    "WHERE active AND NOT code = ANY($1::text[]) RETURNING code",
                    catalogue.codes(),
                )
            ]
    return Taken(written, sorted(retired))


@dataclass(frozen=True)
class Categories:
    """The catalogue as intake holds it: every category a case may be in, and those offered
    for new reports and grid tasks (not retired)."""

    every: dict[str, Category]
    offered: dict[str, Category]


async def load_categories(conn: asyncpg.Connection) -> Categories:
    rows = await conn.fetch(
        "SELECT definition::text AS d, active FROM intake.categories ORDER BY code"
    )
    every: dict[str, Category] = {}
    offered: dict[str, Category] = {}
    for r in rows:
        category = Category.model_validate_json(r["d"])
        every[category.code] = category
        if r["active"]:
            offered[category.code] = category
    return Categories(every, offered)


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


def request_fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


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


def who_acts(
    principal: Principal | None, tracking_token: str | None, case: asyncpg.Record
) -> tuple[Actor, str]:
    """Who takes a step on `case`, and the id the event names them by. A key speaks for its
    holder, who must be able to see the case; a resident app's key, or none, for the resident
    whose tracking token comes with it. Raises Forbidden."""
    if principal is not None and principal.role is not Role.RESIDENT_APP:
        if not may_see(principal, case, None):
            raise Forbidden(case["case_id"])
        return actor_for(principal), principal.scope or principal.name or str(principal.key_id)
    if tracking_token is not None and secrets.compare_digest(
        tracking_token, case["tracking_token"]
    ):
        return Actor.RESIDENT, "resident"
    raise Forbidden(case["case_id"])


class MergeTargetUnknown(Exception):
    """The case named to merge into does not exist, or is not the caller's to see (HTTP 422)."""


@dataclass(frozen=True, slots=True)
class StepTaken:
    status: Status
    envelope: Envelope
    department: str | None
    met_deadline: bool | None  # for acknowledge and resolve; None otherwise
    followers: int = 0  # a resolution: the cases merged into this one, resolved with it


async def _lock_cases(
    conn: asyncpg.Connection, case_id: str, into: str | None
) -> tuple[asyncpg.Record | None, asyncpg.Record | None]:
    """The case (and the case it is to be merged into) locked for the step. Both rows in one
    order, so two merges crossing each other wait instead of deadlocking."""
    rows = {
        r["case_id"]: r
        for r in await conn.fetch(
            "SELECT * FROM intake.cases WHERE case_id = ANY($1) ORDER BY case_id FOR UPDATE",
            [case_id] if into is None else [case_id, into],
        )
    }
    return rows.get(case_id), rows.get(into) if into is not None else None


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
    into: str | None = None,
    until: datetime | None = None,
    verify_window_s: float = 0.0,
    urge_interval_s: float = 0.0,
) -> StepTaken:
    """Take one lifecycle step. A resolution states when it closes unless the resident verifies
    or reopens it first: `verify_window_s` after it (0: never), and resolves the cases merged
    into this one with it. Raises CaseNotFound, Forbidden, IllegalTransition, NotPermitted,
    for a merge MergeTargetUnknown and MergeRefused, for an extension ExtensionNotAllowed, for
    an urging UrgedRecently (at most once per `urge_interval_s`)."""
    async with pool.acquire() as conn, conn.transaction():
        case, target = await _lock_cases(
            conn, case_id, into if step_action is Action.MERGE else None
        )
        if case is None:
            raise CaseNotFound(case_id)
        # the step's time once the case is ours: a step that waited for another's lock comes
        # after it on the timeline too
        at = datetime.now(UTC)
        closes_at = None
        if step_action is Action.RESOLVE and verify_window_s > 0:
            closes_at = at + timedelta(seconds=verify_window_s)
        actor, by = who_acts(principal, tracking_token, case)
        current = Status(case["status"])
        already_rated = case["rating"] is not None
        # who may and from which state first: a 403 or 409 says so before the values are judged
        lifecycle.check_allowed(current, actor, step_action, already_rated=already_rated)
        until = lifecycle.extension_until(
            step_action, at, case["resolve_by"], asked=until, pending=case["extension_until"]
        )
        decision = lifecycle.decide(
            current,
            actor,
            Step(
                action=step_action,
                by=by,
                note=note,
                reason=reason,
                photo_urls=photo_urls,
                rating=rating,
                department=case["department"],
                closes_at=closes_at,
                into=into,
                until=until,
                times=case["urged_count"] + 1,
            ),
            already_rated=already_rated,
        )
        if step_action is Action.URGE and (
            refused := lifecycle.urge_refused(
                at, case["last_urged_at"], timedelta(seconds=urge_interval_s)
            )
        ):
            raise lifecycle.UrgedRecently(refused)
        asked = _extension_asked(case, step_action, decision.status, until, reason, at)
        merged_into = case["merged_into"]
        if step_action is Action.MERGE:
            assert into is not None  # the step's model requires it
            merged_into = await _check_merge(conn, principal, case_id, into, target)
        elif step_action is Action.REOPEN:
            merged_into = None  # a case of its own again
        env = wrap(decision.event, case_id=case_id, producer=PRODUCER, occurred_at=at)
        await conn.execute(
            "UPDATE intake.cases SET status = $2, rating = COALESCE($3, rating), updated_at = $4,"
            " closes_at = $5, merged_into = $6, resolve_by = coalesce($7, resolve_by),"
            " extension_until = $8, extension_reason = $9, extension_requested_at = $10,"
            " urged_count = urged_count + CASE WHEN $11::timestamptz IS NULL THEN 0 ELSE 1 END,"
            " last_urged_at = coalesce($11, last_urged_at),"
            " status_since = CASE WHEN status <> $2 THEN $4 ELSE status_since END"
            " WHERE case_id = $1",
            case_id,
            decision.status.value,
            rating if step_action is Action.RATE else None,
            env.occurred_at,
            closes_at,
            merged_into,
            until if step_action is Action.EXTEND else None,
            *asked,
            at if step_action is Action.URGE else None,
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
        followers: list[Envelope] = []
        if isinstance(decision.event, events.CaseResolved):
            followers = await _resolve_followers(conn, case_id, env, decision.event)
            items += [(e, topics.CASES_LIFECYCLE) for e in followers]
        await outbox.add_many(conn, items)
    return StepTaken(
        status=decision.status,
        envelope=env,
        department=case["department"],
        met_deadline=lifecycle.met_deadline(
            step_action,
            env.occurred_at,
            acknowledge_by=case["acknowledge_by"],
            resolve_by=case["resolve_by"],
        ),
        followers=len(followers),
    )


def _extension_asked(
    case: Mapping[str, Any],
    action: Action,
    status: Status,
    until: datetime | None,
    reason: str | None,
    at: datetime,
) -> tuple[datetime | None, str | None, datetime | None]:
    """The extension waiting for an operator after the step (until, reason, asked at): the one
    just asked, none once decided or once the case is no longer being handled, else as it
    was."""
    if action is Action.REQUEST_EXTENSION:
        return until, reason, at
    if action in (Action.EXTEND, Action.REFUSE_EXTENSION) or status not in lifecycle.BEING_HANDLED:
        return None, None, None
    return case["extension_until"], case["extension_reason"], case["extension_requested_at"]


async def _check_merge(
    conn: asyncpg.Connection,
    principal: Principal | None,
    case_id: str,
    into: str,
    target: asyncpg.Record | None,
) -> str:
    """The case a merge joins, checked (raises MergeTargetUnknown, lifecycle.MergeRefused). The
    cases merged into this one so far move along to it: one level, always the open case."""
    if target is None or not may_see(principal, target, None):
        raise MergeTargetUnknown(into)
    refused = lifecycle.merge_refused(
        case_id, into, Status(target["status"]), target["merged_into"]
    )
    if refused is not None:
        raise lifecycle.MergeRefused(refused)
    await conn.execute(
        "UPDATE intake.cases SET merged_into = $2 WHERE merged_into = $1 AND status = 'merged'",
        case_id,
        into,
    )
    return into


async def _resolve_followers(
    conn: asyncpg.Connection, case_id: str, env: Envelope, resolved: events.CaseResolved
) -> list[Envelope]:
    """The cases merged into `case_id` resolved with it, in the same transaction: each a
    `CaseResolved` that `follows` it, its id fixed by the original's."""
    ids = [
        r["case_id"]
        for r in await conn.fetch(
            "SELECT case_id FROM intake.cases WHERE merged_into = $1 AND status = 'merged' "
            "ORDER BY case_id FOR UPDATE",
            case_id,
        )
    ]
    if not ids:
        return []
    follow = lifecycle.follow(resolved, case_id)
    envelopes = [
        wrap(
            follow,
            case_id=fid,
            producer=PRODUCER,
            occurred_at=env.occurred_at,
            event_id=derived_event_id(env.event_id, f"follow:{fid}"),
        )
        for fid in ids
    ]
    await conn.execute(
        "UPDATE intake.cases SET status = 'resolved', updated_at = $2, closes_at = $3, "
        "status_since = $2 WHERE case_id = ANY($1)",
        ids,
        env.occurred_at,
        follow.closes_at,
    )
    details = _timeline_details(follow)
    for e in envelopes:
        await _record_event(conn, e, details)
    return envelopes


def reporter_name(case: Mapping[str, Any]) -> str | None:
    """The name the reporter gave with their contact (None: none, or erased)."""
    reporter = case["reporter"]
    if isinstance(reporter, str):  # jsonb without a codec
        reporter = orjson.loads(reporter)
    name = reporter.get("name") if isinstance(reporter, dict) else None
    return name if isinstance(name, str) else None


_ERASE_ONE = retention.erasing("$1", "$2", touch=True)
_MASKED = f"SELECT {masked('$1::text', '$2::text')}"


async def erase_personal_data(
    conn: asyncpg.Connection,
    case_id: str,
    *,
    reason: str,
    principal: Principal | None = None,
    tracking_token: str | None = None,
    by: str | None = None,
) -> Envelope:
    """Erase the case's personal data now (a resident asked) and announce it, so that every
    service erases its copy. The case and its timeline stay. Over HTTP the resident asks
    themselves (their case's tracking token) or an operator does (`who_acts`); `by` names
    an operator at the command line instead. Raises CaseNotFound, Forbidden, NotPermitted."""
    async with conn.transaction():
        case = await conn.fetchrow(
            "SELECT * FROM intake.cases WHERE case_id = $1 FOR UPDATE", case_id
        )
        if case is None:
            raise CaseNotFound(case_id)
        if by is None:
            actor, by = who_acts(principal, tracking_token, case)
            if actor not in (Actor.RESIDENT, Actor.OPERATOR):
                raise lifecycle.NotPermitted("only the resident or an operator may erase it")
        # the request's own words may quote the contact (and the name) it asks to erase
        masked_reason = await conn.fetchval(_MASKED, reason, reporter_name(case))
        event = events.PersonalDataErased(by=by[:64], reason=masked_reason)
        env = wrap(event, case_id=case_id, producer=PRODUCER)
        await _record_event(conn, env, _timeline_details(event))
        await conn.execute(_ERASE_ONE, case_id, env.occurred_at)
        await outbox.add_many(conn, [(env, topics.CASES_LIFECYCLE)])
    return env


# --- grid tasks ---------------------------------------------------------------------------


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key came with a different request before."""


async def issue_task(
    conn: asyncpg.Connection,
    task: events.GridTaskIssued,
    *,
    idempotency: tuple[str, str, str] | None = None,
) -> str:
    """Keep the task and announce it: the router makes its cases, one per grid. Returns the
    task id — the first one's, for a retry with the same `idempotency` (owner, key, request
    fingerprint); raises IdempotencyKeyReused for the same key with another request."""
    async with conn.transaction():
        if idempotency is not None:
            owner, key, fingerprint = idempotency
            first = await conn.fetchrow(
                "INSERT INTO intake.idempotency_keys (key_owner, idem_key, request_hash, "
                "status_code, response) VALUES ($1, $2, $3, 202, $4::text::jsonb) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                owner,
                key,
                fingerprint,
                orjson.dumps({"task_id": task.task_id}).decode(),
            )
            if first is None:
                kept = await conn.fetchrow(
                    "SELECT request_hash, response::text AS response FROM intake.idempotency_keys"
                    " WHERE key_owner = $1 AND idem_key = $2",
                    owner,
                    key,
                )
                if kept["request_hash"] != fingerprint:
                    raise IdempotencyKeyReused(key)
                return str(orjson.loads(kept["response"])["task_id"])
        await conn.execute(
            "INSERT INTO intake.tasks (task_id, category, title, instructions, area, grid_kinds, "
            "department, issued_by, issued_at, due_by) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            task.task_id,
            task.category,
            task.title,
            task.instructions,
            task.area,
            list(task.grid_kinds),
            task.department,
            task.issued_by,
            task.issued_at,
            task.due_by,
        )
        env = wrap(
            task,
            case_id=f"task:{task.task_id}",
            producer=PRODUCER,
            occurred_at=task.issued_at,
        )
        await outbox.add_many(conn, [(env, topics.CASES_INTAKE)])
    return task.task_id


# A case past its resolve deadline and not resolved (a case without a deadline never is).
OVERDUE = "status NOT IN ('resolved', 'closed', 'merged') AND coalesce(resolve_by < now(), false)"


@dataclass(frozen=True)
class TaskProgress:
    task: asyncpg.Record
    by_status: dict[str, int]
    overdue: int


async def task_progress(conn: asyncpg.Connection, task_id: str) -> TaskProgress | None:
    found = await _progress(conn, "WHERE task_id = $1", task_id)
    return found[0] if found else None


async def recent_tasks(conn: asyncpg.Connection, limit: int) -> list[TaskProgress]:
    """The latest tasks, newest first, with their progress (two statements, however many)."""
    return await _progress(conn, "ORDER BY issued_at DESC LIMIT $1", limit)


async def _progress(conn: asyncpg.Connection, which: str, arg: Any) -> list[TaskProgress]:
    tasks = await conn.fetch(f"SELECT * FROM intake.tasks {which}", arg)
    if not tasks:
        return []
    by_status: dict[str, dict[str, int]] = {t["task_id"]: {} for t in tasks}
    overdue = dict.fromkeys(by_status, 0)
    for r in await conn.fetch(
        f"SELECT task_id, status, count(*) AS n, count(*) FILTER (WHERE {OVERDUE}) AS overdue "
        "FROM intake.cases WHERE task_id = ANY($1) GROUP BY task_id, status",
        list(by_status),
    ):
        by_status[r["task_id"]][r["status"]] = r["n"]
        overdue[r["task_id"]] += r["overdue"]
    return [TaskProgress(t, by_status[t["task_id"]], overdue[t["task_id"]]) for t in tasks]


# --- read model ---------------------------------------------------------------------------


async def apply_lifecycle_event(
    conn: asyncpg.Connection, env: Envelope, event: events.Event
) -> bool:
    """Fold one event of `cases.lifecycle` into the case. Idempotent by event_id; returns
    False for a duplicate (or one of intake's own events, recorded when it was written)."""
    return await apply_lifecycle_events(conn, [(env, event)]) == 1


async def apply_lifecycle_events(
    conn: asyncpg.Connection, items: Sequence[tuple[Envelope, events.Event]]
) -> int:
    """Fold a batch of `cases.lifecycle` events, in order, into the cases and their timelines
    with four statements whatever the batch's size. Idempotent by event_id: returns how many
    events were new."""
    if not items:
        return 0
    async with conn.transaction():
        new_ids = {
            r["event_id"]
            for r in await conn.fetch(
                "INSERT INTO intake.case_events (event_id, case_id, event_type, occurred_at, "
                "producer, payload) SELECT e, c, t, o, p, d::jsonb FROM unnest($1::uuid[], "
                "$2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[]) "
                "AS x(e, c, t, o, p, d) ON CONFLICT DO NOTHING RETURNING event_id",
                *map(
                    list,
                    zip(
                        *(
                            (
                                env.event_id,
                                env.case_id,
                                env.event_type,
                                env.occurred_at,
                                env.producer,
                                orjson.dumps(_timeline_details(ev)).decode(),
                            )
                            for env, ev in items
                        ),
                        strict=True,
                    ),
                ),
            )
        }
        fresh = first_seen(items, new_ids)
        if not fresh:
            return 0
        await _create_task_cases(conn, fresh)
        cases = {
            r["case_id"]: r
            for r in await conn.fetch(
                "SELECT case_id, status, department FROM intake.cases WHERE case_id = ANY($1) "
                "ORDER BY case_id FOR UPDATE",
                list({env.case_id for env, _ in fresh}),
            )
        }
        last_resolved = await _last_resolutions(conn, fresh, cases)
        # A case this intake never saw (another city's, or a test) gets its timeline only.
        changes: dict[str, CaseChange] = {}
        closings: list[tuple[Envelope, events.CaseClosed]] = []
        for env, ev in fresh:
            if env.case_id in cases:
                change = changes.get(env.case_id) or CaseChange(
                    Status(cases[env.case_id]["status"])
                )
                if lifecycle.arrives_late(change.status, ev):
                    continue  # in the timeline, as history; the case has moved on
                change = change.after(ev, env.occurred_at)
                if isinstance(ev, events.CaseVerificationLapsed):
                    closed = lifecycle.close_unverified(
                        change.status, ev, last_resolved.get(env.case_id)
                    )
                    if closed is not None:
                        # a step of intake's own, like a person's: in the timeline and the
                        # outbox now, its id fixed by the lapse's (a redelivered lapse is a
                        # duplicate above and never gets here)
                        closing = wrap(
                            closed,
                            case_id=env.case_id,
                            producer=PRODUCER,
                            event_id=derived_event_id(env.event_id, "close-unverified"),
                        )
                        closings.append((closing, closed))
                        change = change.after(closed, closing.occurred_at)
                changes[env.case_id] = change
        if closings:
            for closing, closed in closings:
                await _record_event(conn, closing, _timeline_details(closed))
            await outbox.add_many(conn, [(e, topics.CASES_LIFECYCLE) for e, _ in closings])
            for case_id in {e.case_id for e, _ in closings}:
                CLOSED_UNVERIFIED.labels(cases[case_id]["department"] or "none").inc()
        if changes:
            await conn.execute(
                """UPDATE intake.cases c SET status = u.status,
                       department = CASE WHEN u.routed THEN u.department ELSE c.department END,
                       grid_id = CASE WHEN u.routed THEN u.grid_id ELSE c.grid_id END,
                       district = CASE WHEN u.routed THEN u.district ELSE c.district END,
                       worker_id = CASE WHEN u.routed THEN u.worker_id ELSE c.worker_id END,
                       priority = CASE WHEN u.routed THEN u.priority ELSE c.priority END,
                       acknowledge_by = coalesce(u.ack, c.acknowledge_by),
                       resolve_by = coalesce(u.res, c.resolve_by),
                       escalation_level = GREATEST(c.escalation_level, u.level),
                       updated_at = u.at,
                       status_since = COALESCE(u.since, c.status_since)
                   FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::text[], $9::timestamptz[],
                       $10::timestamptz[], $11::int[], $12::timestamptz[], $13::timestamptz[])
                       AS u(case_id, status, routed, department, grid_id, district, worker_id,
                            priority, ack, res, level, at, since)
                   WHERE c.case_id = u.case_id""",
                *map(
                    list,
                    zip(*((cid, *ch.columns()) for cid, ch in changes.items()), strict=True),
                ),
            )
    return len(fresh)


_CREATE_TASK_CASES = """
INSERT INTO intake.cases (case_id, tracking_token, status, category, description, channel,
                          reported_at, updated_at, task_id)
SELECT x.case_id, x.token, 'reported', t.category,
       t.title || CASE WHEN t.instructions <> '' THEN E'\n\n' || t.instructions ELSE '' END,
       'task', t.issued_at, t.issued_at, t.task_id
FROM unnest($1::text[], $2::text[], $3::text[]) AS x(case_id, task_id, token)
JOIN intake.tasks t USING (task_id)
ON CONFLICT (case_id) DO NOTHING
"""


async def _create_task_cases(
    conn: asyncpg.Connection, items: Sequence[tuple[Envelope, events.Event]]
) -> None:
    """A grid task's cases are made by the router, one per grid: each comes into being here
    when its first decision arrives, from the task intake issued (a decision names its task).
    A decision that could not route it still makes it, as a case for triage."""
    made = {
        env.case_id: ev.task_id
        for env, ev in items
        if isinstance(ev, events.CaseRouted | events.CaseUnroutable) and ev.task_id is not None
    }
    if made:
        await conn.execute(
            _CREATE_TASK_CASES,
            list(made),
            list(made.values()),
            [secrets.token_urlsafe(18) for _ in made],
        )


async def _last_resolutions(
    conn: asyncpg.Connection,
    items: Sequence[tuple[Envelope, events.Event]],
    cases: dict[str, asyncpg.Record],
) -> dict[str, datetime]:
    """When each case a verification lapse is about was last resolved (usually no lapse in a
    batch, and no statement)."""
    lapsed = [
        env.case_id
        for env, ev in items
        if isinstance(ev, events.CaseVerificationLapsed) and env.case_id in cases
    ]
    if not lapsed:
        return {}
    return {
        r["case_id"]: r["at"]
        for r in await conn.fetch(
            "SELECT case_id, max(occurred_at) AS at FROM intake.case_events "
            "WHERE case_id = ANY($1) AND event_type = 'CaseResolved' GROUP BY case_id",
            lapsed,
        )
    }


@dataclass(frozen=True)
class CaseChange:
    """What a run of lifecycle events does to a case's row: its status (and when it entered
    it, if it changed), what its last routing said, the highest escalation level, and when."""

    status: Status
    routed: events.CaseRouted | None = None
    level: int = 0
    at: datetime | None = None
    since: datetime | None = None

    def after(self, event: events.Event, at: datetime) -> CaseChange:
        status = lifecycle.status_after_event(self.status, event)
        routed = event if isinstance(event, events.CaseRouted) else self.routed
        level = (
            max(self.level, event.level) if isinstance(event, events.CaseEscalated) else self.level
        )
        return CaseChange(status, routed, level, at, at if status != self.status else self.since)

    def columns(self) -> tuple[Any, ...]:
        r = self.routed
        return (
            self.status.value,
            r is not None,
            r.department if r else None,
            r.grid_id if r else None,
            r.district if r else None,
            r.worker_id if r else None,
            r.priority.value if r else None,
            # a handover keeps the case's deadlines as they are now (one an operator extended
            # meanwhile included); any other routing sets them
            r.deadlines.acknowledge_by if r and not r.handed_over_from else None,
            r.deadlines.resolve_by if r and not r.handed_over_from else None,
            self.level,
            self.at,
            self.since,
        )


# --- queries ------------------------------------------------------------------------------


_GROUP_COLUMNS = {
    performance.GroupBy.DEPARTMENT: "department",
    performance.GroupBy.DISTRICT: "district",
    performance.GroupBy.GRID: "grid_id",
    performance.GroupBy.CATEGORY: "category",
    performance.GroupBy.WORKER: "worker_id",
}

# One row per case reported in the period (grid tasks' cases are assignments, not residents'
# reports: not assessed), with what its timeline says about its deadlines and its resident.
# The timeline is read per case through its index (LATERAL): the cost follows the period's
# cases, not the whole timeline (a join grouped afterwards hashed every event ever recorded).
_PERFORMANCE_SQL = """
SELECT c.{column} AS key, c.reported_at, c.status, c.rating, t.acknowledged_at, t.resolved_at,
       coalesce(t.ack_missed, false) AS ack_missed, coalesce(t.res_missed, false) AS res_missed,
       t.reopened, coalesce(t.closed_unverified, false) AS closed_unverified,
       c.urged_count > 0 AS urged
FROM intake.cases c
CROSS JOIN LATERAL (
    SELECT min(e.occurred_at) FILTER (WHERE e.event_type = 'CaseAcknowledged') AS acknowledged_at,
           -- a merged report resolved with its case is that case's resolution, not its own
           min(e.occurred_at) FILTER (WHERE e.event_type = 'CaseResolved'
                                      AND e.payload->>'follows' IS NULL) AS resolved_at,
           bool_or(e.event_type = 'CaseEscalated'
                   AND e.payload->>'deadline' = 'acknowledge') AS ack_missed,
           bool_or(e.event_type = 'CaseEscalated'
                   AND e.payload->>'deadline' = 'resolve') AS res_missed,
           count(*) FILTER (WHERE e.event_type = 'CaseReopened') AS reopened,
           bool_or(e.event_type = 'CaseClosed'
                   AND (e.payload->>'automatic')::boolean) AS closed_unverified
    FROM intake.case_events e
    WHERE e.case_id = c.case_id AND e.event_type IN
        ('CaseAcknowledged', 'CaseResolved', 'CaseEscalated', 'CaseReopened', 'CaseClosed')
) t
WHERE c.reported_at >= $1 AND c.reported_at < $2 AND c.channel <> 'task'
  AND ($3::text IS NULL OR c.department = $3) AND ($4::text IS NULL OR c.worker_id = $4)
"""


async def performance_records(
    conn: asyncpg.Connection,
    start: datetime,
    end: datetime,
    by: performance.GroupBy,
    *,
    department: str | None = None,
    worker_id: str | None = None,
) -> list[performance.CaseRecord]:
    """The cases reported in [start, end), optionally one department's or one worker's, each
    keyed by its current department (district, …): what `performance.assess` reads."""
    rows = await conn.fetch(
        _PERFORMANCE_SQL.format(column=_GROUP_COLUMNS[by]), start, end, department, worker_id
    )
    return [
        performance.CaseRecord(
            key=r["key"],
            reported_at=r["reported_at"],
            acknowledged_at=r["acknowledged_at"],
            acknowledge_missed=r["ack_missed"],
            resolved_at=r["resolved_at"],
            resolve_missed=r["res_missed"],
            rating=r["rating"],
            reopened=r["reopened"],
            closed_unverified=r["closed_unverified"],
            urged=r["urged"],
            open=r["status"] not in lifecycle.SETTLED,
        )
        for r in rows
    ]


async def open_cases_by_department(conn: asyncpg.Connection) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT coalesce(department, 'none') AS department, count(*) AS n FROM intake.cases "
        # (the first condition is the partial index's)
        "WHERE status NOT IN ('resolved', 'closed') AND status <> 'merged' GROUP BY 1"
    )
    return [(r["department"], r["n"]) for r in rows]


async def triage_waiting(conn: asyncpg.Connection) -> tuple[int, datetime | None]:
    """How many cases wait in triage for an operator, and since when the longest has waited
    (the routing that sent it there: later events on it do not restart the count)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(coalesce(status_since, updated_at)) AS oldest "
        "FROM intake.cases "
        "WHERE status = 'unroutable'"
    )
    return int(row["n"]), row["oldest"]


async def extensions_waiting(conn: asyncpg.Connection) -> tuple[int, datetime | None]:
    """How many requests for more time wait for an operator's answer, and when the oldest was
    asked (the partial index `cases_extension_asked`)."""
    row = await conn.fetchrow(
        "SELECT count(*) AS n, min(extension_requested_at) AS oldest FROM intake.cases "
        "WHERE extension_until IS NOT NULL"
    )
    return int(row["n"]), row["oldest"]


async def extensions_asked(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The requests for more time waiting for an operator, oldest first."""
    return list(
        await conn.fetch(
            "SELECT case_id, department, worker_id, category, resolve_by, extension_until, "
            "extension_reason, extension_requested_at FROM intake.cases "
            "WHERE extension_until IS NOT NULL ORDER BY extension_requested_at, case_id"
        )
    )


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


async def merged_into(conn: asyncpg.Connection, case_id: str) -> list[str]:
    """The cases merged into this one (merged still, or resolved with it), oldest first."""
    rows = await conn.fetch(
        "SELECT case_id FROM intake.cases WHERE merged_into = $1 ORDER BY reported_at, case_id",
        case_id,
    )
    return [r["case_id"] for r in rows]


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
    reference: str | None = None  # shared.ids.case_reference
    task_id: str | None = None
    reported_only: bool = False  # leave out grid tasks' cases (Open311 lists requests only)
    overdue: bool | None = None  # open and past the resolve deadline (or, False, not)
    reporter_phone: str | None = None  # digits (`phone_digits`): numbers ending with them
    on_behalf_of: str | None = None  # a resident id or the code on their card
    extension_asked: bool | None = None  # an extension waits for an operator (or, False, not)


def phone_digits(phone: str) -> str:
    """A phone number as the digits a lookup compares: "+86 139-1234-5678" and
    "13912345678" are the same mobile; a stored number matches when it ends with these."""
    digits = "".join(c for c in phone if c.isdigit())
    if len(digits) == 13 and digits.startswith("86"):  # China's country code on a mobile
        digits = digits[2:]
    return digits


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
    if f.task_id is not None:
        add("task_id = {}", f.task_id)
    if f.reported_only:
        where.append("task_id IS NULL")
    if f.overdue is not None:
        where.append(("" if f.overdue else "NOT ") + f"({OVERDUE})")
    if f.reporter_phone is not None:  # no index: an operator's lookup scans the cases
        add("regexp_replace(reporter->>'phone', '[^0-9]', '', 'g') LIKE {}", f"%{f.reporter_phone}")
    if f.on_behalf_of is not None:
        add("on_behalf_of = {}", f.on_behalf_of)
    if f.extension_asked is not None:
        where.append("extension_until IS " + ("NOT NULL" if f.extension_asked else "NULL"))
    if f.reference is not None:  # the expression of the index cases_reference
        add("upper(right(case_id, 8)) = {}", f.reference.upper())
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
