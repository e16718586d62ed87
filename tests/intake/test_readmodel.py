"""The read model's fold on the real database: a batch of lifecycle events, several per case,
applied in order with set-based statements; redelivery changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.intake import store
from services.intake.lifecycle import Status
from services.intake.models import TaskIn
from services.intake.readmodel import OpenCaseGauge
from services.intake.settings import MIGRATIONS
from shared import events
from shared.db import migrate
from shared.events import wrap
from shared.ids import derived_event_id
from shared.localstack import LocalStack
from shared.metrics import REGISTRY
from tests.helpers.services import fresh_database
from tests.intake.conftest import routed_event


@pytest.fixture(scope="module")
def readmodel_url(stack: LocalStack) -> str:
    """A database of its own: no intake server's relay drains its outbox under the tests."""
    return asyncio.run(fresh_database(stack.postgres.url, "readmodel"))


@pytest.fixture
async def intake_db(readmodel_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(readmodel_url)
    await migrate(conn, "intake", MIGRATIONS)
    try:
        yield conn
    finally:
        await conn.close()


async def _new_case(conn: asyncpg.Connection) -> str:
    case_id = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO intake.cases (case_id, tracking_token, status, category, description, "
        "channel, reported_at) VALUES ($1, $2, 'reported', 'heating.outage', '暖气不热', 'app', "
        "now())",
        case_id,
        uuid.uuid4().hex,
    )
    return case_id


def _step(event: events.Event, case_id: str) -> events.Envelope:
    return wrap(event, case_id=case_id, producer="intake")


def test_a_case_change_follows_its_events() -> None:
    routed = routed_event("c-1", "heating").event()
    assert isinstance(routed, events.CaseRouted)
    at = datetime.now(UTC)
    later, last = at + timedelta(minutes=5), at + timedelta(minutes=9)
    escalated = (
        store.CaseChange(Status.REPORTED)
        .after(routed, at)
        .after(
            events.CaseEscalated(
                deadline="acknowledge", due_at=at, level=2, to=routed.escalation_chain[0], repeat=0
            ),
            later,
        )
    )
    assert (escalated.at, escalated.since) == (later, at)  # routed since `at`, changed later
    change = escalated.after(
        events.CaseEscalated(
            deadline="acknowledge", due_at=at, level=1, to=routed.escalation_chain[0], repeat=0
        ),
        later,
    ).after(events.CaseAcknowledged(by="w-1"), last)
    assert (change.status, change.level, change.routed) == (Status.ACKNOWLEDGED, 2, routed)
    assert change.since == last


async def test_a_batch_folds_in_order_and_only_once(intake_db: asyncpg.Connection) -> None:
    acked, routed_only, unknown = await _new_case(intake_db), await _new_case(intake_db), "nobody"
    first = routed_event(acked, "heating")
    batch = [
        first,
        routed_event(routed_only, "water", worker="w-9"),
        _step(events.CaseAcknowledged(by="w-1"), acked),
        first,  # the same event twice in a batch
        routed_event(unknown, "gas"),  # a case this intake never saw: timeline only
    ]
    items = [(env, env.event()) for env in batch]
    assert await store.apply_lifecycle_events(intake_db, items) == 4
    assert await store.apply_lifecycle_events(intake_db, items) == 0  # redelivered
    rows = {
        r["case_id"]: r
        for r in await intake_db.fetch(
            "SELECT case_id, status, department, worker_id, priority FROM intake.cases "
            "WHERE case_id = ANY($1)",
            [acked, routed_only],
        )
    }
    assert (rows[acked]["status"], rows[acked]["department"]) == ("acknowledged", "heating")
    assert (rows[routed_only]["status"], rows[routed_only]["worker_id"]) == ("routed", "w-9")
    assert rows[routed_only]["priority"] == "high"
    timeline = await intake_db.fetch(
        "SELECT case_id, event_type FROM intake.case_events WHERE case_id = ANY($1)",
        [acked, routed_only, unknown],
    )
    assert sorted((r["case_id"], r["event_type"]) for r in timeline) == sorted(
        [
            (acked, "CaseRouted"),
            (acked, "CaseAcknowledged"),
            (routed_only, "CaseRouted"),
            (unknown, "CaseRouted"),
        ]
    )
    # later events keep what routing said
    later = [(e, e.event()) for e in [_step(events.CaseResolved(by="w-1", note="修好了"), acked)]]
    assert await store.apply_lifecycle_events(intake_db, later) == 1
    row = await intake_db.fetchrow(
        "SELECT status, department FROM intake.cases WHERE case_id = $1", acked
    )
    assert (row["status"], row["department"]) == ("resolved", "heating")


async def test_a_routing_replayed_after_the_case_was_resolved_is_history(
    intake_db: asyncpg.Connection,
) -> None:
    """A dead letter replayed late (`griddispatch dlq replay`): the CaseRouted this read model
    once failed on comes back after the case was resolved. It joins the timeline; the case
    stays resolved, with its department and its time of last change."""
    case_id = await _new_case(intake_db)
    routed = routed_event(case_id, "heating")
    done = [routed, _step(events.CaseResolved(by="w-1", note="修好了"), case_id)]
    await store.apply_lifecycle_events(intake_db, [(e, e.event()) for e in done])
    before = await intake_db.fetchrow(
        "SELECT status, department, updated_at FROM intake.cases WHERE case_id = $1", case_id
    )
    stale = routed_event(case_id, "water")  # an older decision, delivered now
    assert await store.apply_lifecycle_events(intake_db, [(stale, stale.event())]) == 1
    after = await intake_db.fetchrow(
        "SELECT status, department, updated_at FROM intake.cases WHERE case_id = $1", case_id
    )
    assert dict(after) == dict(before)
    assert dict(before)["status"] == "resolved"
    types = await intake_db.fetch(
        "SELECT event_type FROM intake.case_events WHERE case_id = $1", case_id
    )
    assert sorted(r["event_type"] for r in types) == ["CaseResolved", "CaseRouted", "CaseRouted"]


def _lapse(case_id: str, resolution: events.Envelope) -> events.Envelope:
    return wrap(
        events.CaseVerificationLapsed(resolved_at=resolution.occurred_at, due_at=datetime.now(UTC)),
        case_id=case_id,
        producer="escalation",
    )


async def test_a_lapsed_verification_closes_the_case_it_was_about_once(
    intake_db: asyncpg.Connection,
) -> None:
    """Escalation says nobody verified a resolution in time: intake closes the case itself,
    through its outbox, with an id fixed by the lapse — unless the resident spoke first."""
    lapsing, reopened, resolved_twice = [await _new_case(intake_db) for _ in range(3)]
    first: dict[str, events.Envelope] = {}
    for case_id in (lapsing, reopened, resolved_twice):
        first[case_id] = _step(events.CaseResolved(by="w-1", note="修好了"), case_id)
        steps = [routed_event(case_id, "heating"), first[case_id]]
        await store.apply_lifecycle_events(intake_db, [(e, e.event()) for e in steps])
    again = [
        _step(events.CaseReopened(by="resident", reason="还是不热"), resolved_twice),
        _step(events.CaseResolved(by="w-1", note="换了阀门"), resolved_twice),
        _step(events.CaseReopened(by="resident", reason="还是不热"), reopened),
    ]
    await store.apply_lifecycle_events(intake_db, [(e, e.event()) for e in again])
    outbox_before = await intake_db.fetchval("SELECT count(*) FROM intake.outbox")

    lapses = [_lapse(case_id, first[case_id]) for case_id in (lapsing, reopened, resolved_twice)]
    items = [(e, e.event()) for e in lapses]
    assert await store.apply_lifecycle_events(intake_db, items) == 3
    assert await store.apply_lifecycle_events(intake_db, items) == 0  # redelivered
    status = dict(
        await intake_db.fetch(
            "SELECT case_id, status FROM intake.cases WHERE case_id = ANY($1)",
            [lapsing, reopened, resolved_twice],
        )
    )
    assert status == {lapsing: "closed", reopened: "routed", resolved_twice: "resolved"}
    published = await intake_db.fetch(
        "SELECT value FROM intake.outbox ORDER BY id OFFSET $1", outbox_before
    )
    [closing] = [events.Envelope.model_validate_json(bytes(r["value"])) for r in published]
    assert (closing.case_id, closing.event_type) == (lapsing, "CaseClosed")
    assert closing.event() == events.CaseClosed(by="griddispatch", automatic=True)
    assert closing.event_id == derived_event_id(lapses[0].event_id, "close-unverified")
    timeline = await intake_db.fetch(
        "SELECT event_id, event_type FROM intake.case_events WHERE case_id = $1 "
        "ORDER BY occurred_at",
        lapsing,
    )
    assert [r["event_type"] for r in timeline][-2:] == ["CaseVerificationLapsed", "CaseClosed"]
    # the closing comes back on the topic: a duplicate, recorded when it was written
    assert await store.apply_lifecycle_events(intake_db, [(closing, closing.event())]) == 0


async def test_a_grid_task_s_cases_come_into_being_with_their_first_decision(
    intake_db: asyncpg.Connection,
) -> None:
    """Routed or not: a task case the router could not route is made too, for triage (before,
    only a routing made it, and an unroutable one was lost to intake)."""
    task = TaskIn(
        category="task.door-to-door", title="入户排查", instructions="逐户", area="longsha-s01"
    ).issued("ops")
    await store.issue_task(intake_db, task)
    routed, unroutable, stranger = (str(uuid.uuid4()) for _ in range(3))
    no_department = events.CaseUnroutable(
        category=task.category,
        reason="department street-office is not known",
        reported_at=task.issued_at,
        task_id=task.task_id,
    )
    batch = [
        routed_event(routed, "street-office", task_id=task.task_id),
        _step(no_department, unroutable),
        routed_event(stranger, "street-office"),  # no task: not a case this intake knows
    ]
    items = [(env, env.event()) for env in batch]
    await store.apply_lifecycle_events(intake_db, items)
    await store.apply_lifecycle_events(intake_db, items)  # redelivered: nothing twice
    rows = await intake_db.fetch(
        "SELECT case_id, status, channel, task_id, description FROM intake.cases "
        "WHERE case_id = ANY($1)",
        [routed, unroutable, stranger],
    )
    found = {r["case_id"]: (r["status"], r["channel"], r["task_id"]) for r in rows}
    assert found == {
        routed: ("routed", "task", task.task_id),
        unroutable: ("unroutable", "task", task.task_id),
    }
    assert {r["description"] for r in rows} == {"入户排查\n\n逐户"}
    progress = await store.task_progress(intake_db, task.task_id)
    assert progress is not None
    assert progress.by_status == {"routed": 1, "unroutable": 1}


async def test_the_triage_gauges_count_cases_waiting_for_an_operator(
    intake_db: asyncpg.Connection, readmodel_url: str
) -> None:
    waiting_before, _ = await store.triage_waiting(intake_db)
    long_ago, lately, routed = [await _new_case(intake_db) for _ in range(3)]
    unroutable = events.CaseUnroutable(
        category="heating.outage",
        reason="the location is outside every grid",
        reported_at=datetime.now(UTC),
    )
    for case_id in (long_ago, lately):
        env = _step(unroutable, case_id)
        await store.apply_lifecycle_events(intake_db, [(env, env.event())])
    await store.apply_lifecycle_events(
        intake_db, [(e, e.event()) for e in [routed_event(routed, "heating")]]
    )
    await intake_db.execute(
        "UPDATE intake.cases SET updated_at = now() - interval '2 hours', "
        "status_since = now() - interval '2 hours' WHERE case_id = $1",
        long_ago,
    )
    # a later event that leaves it in triage (an operator's reroute the router could not
    # place either) changes the case, not how long it has waited
    again = _step(unroutable, long_ago)
    await store.apply_lifecycle_events(intake_db, [(again, again.event())])
    [row] = await intake_db.fetch(
        "SELECT updated_at FROM intake.cases WHERE case_id = $1", long_ago
    )
    assert datetime.now(UTC) - row["updated_at"] < timedelta(minutes=5)
    waiting, oldest = await store.triage_waiting(intake_db)
    assert waiting == waiting_before + 2
    assert oldest is not None
    assert timedelta(hours=2) <= datetime.now(UTC) - oldest < timedelta(hours=3)

    pool = await asyncpg.create_pool(readmodel_url, min_size=1, max_size=1)
    try:
        await OpenCaseGauge(pool).refresh()
    finally:
        await pool.close()
    assert REGISTRY.get_sample_value("griddispatch_triage_cases") == waiting
    age = REGISTRY.get_sample_value("griddispatch_triage_oldest_age_seconds")
    assert age is not None
    assert 7200 <= age < 10800
    # routed by hand: it leaves triage
    for case_id in (long_ago, lately):
        env = routed_event(case_id, "heating")
        await store.apply_lifecycle_events(intake_db, [(env, env.event())])
    assert (await store.triage_waiting(intake_db))[0] == waiting_before


def test_a_handover_changes_the_worker_not_the_state() -> None:
    routed = routed_event("c-1", "heating").event()
    assert isinstance(routed, events.CaseRouted)
    handed = routed.model_copy(update={"worker_id": "w-2", "handed_over_from": "w-1"})
    at = datetime.now(UTC)
    waiting = store.CaseChange(Status.REPORTED).after(routed, at).after(handed, at)
    assert (waiting.status, waiting.routed) == (Status.ROUTED, handed)  # now with w-2
    # acknowledged just before the router heard: it stays acknowledged, with its new worker
    crossed = (
        store.CaseChange(Status.REPORTED)
        .after(routed, at)
        .after(events.CaseAcknowledged(by="w-1"), at)
        .after(handed, at)
    )
    assert crossed.status is Status.ACKNOWLEDGED
    assert crossed.routed == handed
    # the worker's columns change, the deadlines stay as the case has them (an extension
    # granted meanwhile is not undone)
    columns = crossed.columns()
    assert columns[5] == "w-2"
    assert columns[7:9] == (None, None)
    assert store.CaseChange(Status.REPORTED).after(routed, at).columns()[7:9] == (
        routed.deadlines.acknowledge_by,
        routed.deadlines.resolve_by,
    )
