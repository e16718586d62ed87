"""Turning `cases.intake` into decisions on `cases.lifecycle`, exactly once in effect.

For each batch of input messages:
1. decode (poison → dead letter) and gather the case facts (a reroute reads them back);
2. decide against the current reference snapshot;
3. record the decisions (one statement per chunk of the batch), keyed by the input's event
   id — a redelivered input finds its decision there and republishes *the same bytes*, even
   if worker loads or rules changed since;
4. publish with the idempotent `acks=all` producer and wait for the broker;
5. only then does the subscriber commit the offsets.
A crash anywhere repeats at most steps 2–4 with identical output event ids.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram

from services.router import store
from services.router.decide import CaseFacts, Decision, decide, hand_over, handover_refused
from services.router.refdata import ReferenceData
from services.router.retention import FORGET_PERSONAL_FACTS, forget_personal
from services.router.tasks import TaskRefused, task_case_event_id, task_cases
from shared import events, topics
from shared.events import DecodeError, Envelope, decode, envelope_json, peek_event_type
from shared.ids import derived_event_id
from shared.kafka import DeadLetters
from shared.metrics import REGISTRY

log = logging.getLogger(__name__)
PRODUCER = "router"

ROUTED = Counter(
    "griddispatch_cases_routed_total",
    "Routing decisions by department and outcome",
    ["department", "outcome"],
    registry=REGISTRY,
)
UNROUTABLE = Counter(
    "griddispatch_cases_unroutable_total",
    "Unroutable cases by reason",
    ["reason"],
    registry=REGISTRY,
)
HANDED_OVER = Counter(
    "griddispatch_cases_handed_over_total",
    "Cases given to another worker of their grid because theirs went off duty before "
    "acknowledging them",
    registry=REGISTRY,
)
ROUTING_SECONDS = Histogram(
    "griddispatch_routing_batch_seconds",
    "Time to decide, record and publish one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
GRIDS_LOADED = Gauge(
    "griddispatch_router_grids_loaded", "Grids in the loaded reference data", registry=REGISTRY
)
REFDATA_VERSION = Gauge(
    "griddispatch_router_refdata_version",
    "Version of the loaded reference data",
    registry=REGISTRY,
)


def _reason_label(reason: str) -> str:
    """A bounded label value for the unroutable reason (no ids, no free text)."""
    for key in (
        "outside every grid",
        "address only",
        "unknown building",
        "unknown category",
        "declined",
        "not known",
        "no grid",
    ):
        if key in reason:
            return key.replace(" ", "_")
    return "other"


@dataclass
class RouterState:
    """What the running router holds: the reference snapshot and open-case counts."""

    ref: ReferenceData
    open_cases: dict[str, int] = field(default_factory=dict)

    def swap(self, ref: ReferenceData) -> None:
        self.ref = ref  # one assignment: a batch sees either the old or the new snapshot
        GRIDS_LOADED.set(len(ref.grids))
        REFDATA_VERSION.set(ref.version)

    def department_names(self) -> dict[str, str]:
        """Code → name of every department: what the department directory should say."""
        return {code: d.name for code, d in self.ref.departments.items()}


def facts_from_report(env: Envelope, event: events.CaseReported) -> dict[str, Any]:
    """What the router keeps of a report (the facts a later reroute decides on)."""
    loc = event.location
    return {
        "category": event.category,
        "description": event.description,
        # the location's JSON form, as `model_dump(mode="json")` gives it (a test holds it)
        "location": {
            "lat": loc.lat,
            "lon": loc.lon,
            "address": loc.address,
            "building_code": loc.building_code,
            "facility_code": loc.facility_code,
        },
        "reported_at": event.reported_at.isoformat(),
        "care_groups": list(event.sensitivity.care_groups),
        "excluded": [],
    }


def case_facts(
    case_id: str,
    facts: dict[str, Any],
    reroute: events.RerouteRequested | None,
    report: events.CaseReported | None = None,
) -> CaseFacts:
    """What `decide` needs, from the stored facts (or, for a new report, from the report
    itself, which is validated already)."""
    if report is not None:
        return CaseFacts(
            case_id=case_id,
            category=report.category,
            description=report.description,
            location=report.location,
            reported_at=report.reported_at,
            care_groups=report.sensitivity.care_groups,
        )
    excluded = frozenset(facts.get("excluded", ()))
    # a grid task's case keeps its grid, and its department until that department declines
    pinned_department = facts.get("department")
    return CaseFacts(
        case_id=case_id,
        category=facts["category"],
        description=facts["description"],
        location=events.Location.model_validate(facts["location"]),
        reported_at=datetime.fromisoformat(facts["reported_at"]),
        care_groups=tuple(facts.get("care_groups", ())),
        exclude_departments=excluded,
        grid_id=(reroute.grid_id if reroute else None) or facts.get("grid_id"),
        department=(reroute.department if reroute else None)
        or (pinned_department if pinned_department not in excluded else None),
        task_id=facts.get("task_id"),
        due_by=datetime.fromisoformat(due_by) if (due_by := facts.get("due_by")) else None,
    )


@dataclass
class _Item:
    record: ConsumerRecord[Any, Any]
    env: Envelope
    event: events.Event
    facts: dict[str, Any] | None
    decision: Decision | None = None
    out: bytes | None = None  # the decision's envelope, as decided now
    case_row: tuple[str, str, str | None, str | None] | None = None  # facts, status, dept, worker
    value: bytes | None = None  # the envelope as published: `out`, or the one decided before
    fresh: bool = False  # decided for the first time (not a redelivered input)
    handed_from: str | None = None  # a handover: the worker it was taken from


# One statement (so one round trip and one commit) records a batch's decisions: new ones are
# inserted and update their cases (a case twice in the batch — reported, then rerouted — keeps
# its last new decision); for inputs decided before (a redelivery) the stored decision is
# returned instead and the case is left alone. The final SELECT sees the table as it was before
# the statement, so its two halves never overlap; `fresh` says which half a row comes from.
_RECORD_SQL = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[],
                         $6::text[], $7::text[]) WITH ORDINALITY
        AS x(source_event_id, case_id, envelope, facts, status, department, worker_id, ord)
), new AS (
    INSERT INTO router.decisions (source_event_id, case_id, envelope)
    SELECT source_event_id, case_id, envelope FROM input
    ON CONFLICT DO NOTHING
    RETURNING source_event_id, envelope
), cases AS (
    INSERT INTO router.cases (case_id, facts, status, department, worker_id, acknowledged)
    SELECT DISTINCT ON (i.case_id) i.case_id,
           CASE WHEN e.case_id IS NULL THEN i.facts::jsonb ELSE {forget} END,
           i.status, i.department, i.worker_id, false
    FROM input i JOIN new USING (source_event_id)
    LEFT JOIN router.erased_cases e ON e.case_id = i.case_id  -- erased before it was routed
    ORDER BY i.case_id, i.ord DESC
    ON CONFLICT (case_id) DO UPDATE SET facts = EXCLUDED.facts, status = EXCLUDED.status,
        department = EXCLUDED.department, worker_id = EXCLUDED.worker_id, open = true,
        acknowledged = false, updated_at = now()
)
SELECT source_event_id, envelope, true AS fresh FROM new
UNION ALL
SELECT d.source_event_id, d.envelope, false FROM router.decisions d
WHERE d.source_event_id = ANY($1::uuid[])
""".replace("{forget}", forget_personal("i.facts::jsonb"))


@dataclass
class _Handovers:
    """A batch's handover requests: the state of their cases, and the decisions recorded
    before for any of them (a request delivered again after a crash between recording and
    publishing is published as recorded, whatever the case says now)."""

    states: dict[str, store.HandoverState] = field(default_factory=dict)
    recorded: dict[Any, bytes] = field(default_factory=dict)


def _handover_from(event: events.Event) -> str | None:
    return event.hand_over_from if isinstance(event, events.RerouteRequested) else None


class Dispatcher:
    """Decides, records and publishes batches (see the module's docstring).

    A large batch goes in chunks, pipelined: while the database records one chunk's decisions
    the next chunk is decided, so the router's CPU and the database work at the same time
    (one statement per batch left the router idle for a fifth of a saturated run). Chunks are
    recorded and handed to the producer in input order, so a case's decisions keep theirs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        state: RouterState,
        dead_letters: DeadLetters | None,
        *,
        chunks: int = 4,
        min_chunk: int = 50,
    ) -> None:
        self.pool = pool
        self.producer = producer
        self.state = state
        self.dead_letters = dead_letters
        self.chunks = chunks
        self.min_chunk = min_chunk

    async def handle(self, records: Sequence[ConsumerRecord[Any, Any]]) -> int:
        """Decide, record and publish one batch; returns once the broker has every decision.
        Returns the decisions published."""
        started = time.perf_counter()
        ref = self.state.ref  # this batch's snapshot
        items = await self._decoded(records, ref)
        if not items:
            return 0
        size = max(self.min_chunk, -(-len(items) // self.chunks))
        acks: list[asyncio.Future[Any]] = []
        decided: list[_Item] = []
        async with self.pool.acquire() as conn:
            missing = [i.env.case_id for i in items if i.facts is None]
            known = await store.case_facts(conn, missing) if missing else {}
            # facts of cases reported earlier in this same batch
            in_batch = {i.env.case_id: i.facts for i in items if i.facts is not None}
            handing = [i for i in items if _handover_from(i.event)]
            handovers = _Handovers()
            if handing:
                handovers = _Handovers(
                    await store.handover_states(conn, [i.env.case_id for i in handing]),
                    await store.recorded_decisions(conn, [i.env.event_id for i in handing]),
                )
            recording: asyncio.Task[list[asyncio.Future[Any]]] | None = None
            try:
                for at in range(0, len(items), size):
                    chunk = [
                        item
                        for item in items[at : at + size]
                        if await self._decide(item, ref, known, in_batch, handovers)
                    ]
                    if recording is not None:
                        acks += await recording
                        recording = None
                    if chunk:
                        decided += chunk
                        recording = asyncio.ensure_future(self._record_and_publish(conn, chunk))
                        await asyncio.sleep(0)  # it sends its statement; we decide on meanwhile
                if recording is not None:
                    acks += await recording
            finally:
                if recording is not None and not recording.done():
                    # never hand the connection back with a statement still running on it
                    await asyncio.wait([recording])
                    if not recording.cancelled():
                        recording.exception()  # seen: the error already raised wins
        if not decided:
            return 0
        await asyncio.gather(*acks)
        self._count(decided)
        ROUTING_SECONDS.observe(time.perf_counter() - started)
        return len(decided)

    async def _decoded(
        self, records: Sequence[ConsumerRecord[Any, Any]], ref: ReferenceData
    ) -> list[_Item]:
        items: list[_Item] = []
        for record in records:
            try:
                env, event = decode(record.value)
                if not isinstance(
                    event, events.CaseReported | events.RerouteRequested | events.GridTaskIssued
                ):
                    raise DecodeError(f"{env.event_type} does not belong on {record.topic}")
            except DecodeError as exc:
                await self._dead_letter(record, exc)
                continue
            if isinstance(event, events.GridTaskIssued):
                items += await self._task_items(record, env, event, ref)
                continue
            facts = (
                facts_from_report(env, event) if isinstance(event, events.CaseReported) else None
            )
            items.append(_Item(record, env, event, facts))
        return items

    async def _task_items(
        self,
        record: ConsumerRecord[Any, Any],
        env: Envelope,
        task: events.GridTaskIssued,
        ref: ReferenceData,
    ) -> list[_Item]:
        """A grid task as one input per grid it reaches: each is decided, recorded (under an
        id derived from the task's event and the grid) and published like a report. The grids
        come from the snapshot the batch is decided on: a reload in between must not name a
        grid the decisions do not know."""
        try:
            cases = task_cases(ref, task)
        except TaskRefused as exc:
            await self._dead_letter(record, exc)
            return []
        log.info("grid task %s: %d grids in %s", task.task_id, len(cases), task.area)
        return [
            _Item(
                record,
                env.model_copy(
                    update={
                        "event_id": task_case_event_id(env.event_id, case.grid_id),
                        "case_id": case.case_id,
                    }
                ),
                task,
                case.facts,
            )
            for case in cases
        ]

    async def _decide(
        self,
        item: _Item,
        ref: ReferenceData,
        known: dict[str, dict[str, Any]],
        in_batch: dict[str, dict[str, Any]],
        handovers: _Handovers,
    ) -> bool:
        """Decide one item (False: nothing to publish — it went to the dead-letter topic, or a
        handover found the case moved on)."""
        event = item.event
        away = _handover_from(event)
        if away is not None:
            return self._hand_over(item, away, ref, known, handovers)
        reroute = event if isinstance(event, events.RerouteRequested) else None
        facts = item.facts or in_batch.get(item.env.case_id) or known.get(item.env.case_id)
        if facts is None:
            await self._dead_letter(
                item.record,
                ValueError(f"reroute for a case the router never saw: {item.env.case_id}"),
            )
            return False
        if reroute is not None:
            facts = {
                **facts,
                "excluded": sorted(
                    set(facts.get("excluded", ())) | set(reroute.exclude_departments)
                ),
            }
            in_batch[item.env.case_id] = facts
        item.facts = facts
        try:
            decision = decide(
                case_facts(
                    item.env.case_id,
                    facts,
                    reroute,
                    event if isinstance(event, events.CaseReported) else None,
                ),
                ref,
                open_cases=self.state.open_cases,
                explain=False,
            )
        except Exception as exc:  # a bug or bad reference data: never stall the stream
            await self._dead_letter(item.record, exc)
            return False
        item.decision = decision
        item.out = envelope_json(
            decision.event,
            case_id=item.env.case_id,
            producer=PRODUCER,
            event_id=derived_event_id(item.env.event_id, "routed"),
            traceparent=item.env.traceparent,
            payload_json=decision.payload_json,
        )
        ev = decision.event
        if isinstance(ev, events.CaseRouted):
            item.case_row = (orjson.dumps(facts).decode(), "routed", ev.department, ev.worker_id)
            if ev.worker_id:  # count it now: the next case in the batch sees it
                self.state.open_cases[ev.worker_id] = self.state.open_cases.get(ev.worker_id, 0) + 1
        else:
            stored = {**facts, "unroutable_reason": ev.reason}
            item.case_row = (orjson.dumps(stored).decode(), "unroutable", None, None)
        return True

    def _hand_over(
        self,
        item: _Item,
        away: str,
        ref: ReferenceData,
        known: dict[str, dict[str, Any]],
        handovers: _Handovers,
    ) -> bool:
        """A worker went off duty: their case, if it still waits for them, goes to another
        worker of its grid with everything else as routed before (`decide.hand_over`)."""
        case_id = item.env.case_id
        state, facts = handovers.states.get(case_id), known.get(case_id)
        before = handovers.recorded.get(item.env.event_id)
        if before is not None and facts is not None:
            _, was = decode(before)
            assert isinstance(was, events.CaseRouted)
            item.facts, item.out = facts, before  # the recorded decision goes out again
            item.case_row = (orjson.dumps(facts).decode(), "routed", was.department, was.worker_id)
            return True
        if state is None or facts is None:
            why: str | None = "a case the router never saw"
        else:
            why = handover_refused(
                state.routed,
                away=away,
                worker_id=state.worker_id,
                open_=state.open,
                acknowledged=state.acknowledged,
                transferred=state.transferred,
                now=datetime.now(UTC),
            )
        decision = None
        if state is not None and state.routed is not None and why is None:
            decision = hand_over(state.routed, ref, away=away, open_cases=self.state.open_cases)
            why = None if decision is not None else f"grid {state.routed.grid_id} is gone"
        if decision is None or state is None or facts is None:
            log.info("case %s stays with %s: %s", case_id, away, why)
            return False
        ev = decision.event
        assert isinstance(ev, events.CaseRouted)
        item.facts, item.decision, item.handed_from = facts, decision, away
        item.out = envelope_json(
            ev,
            case_id=case_id,
            producer=PRODUCER,
            event_id=derived_event_id(item.env.event_id, "routed"),
            traceparent=item.env.traceparent,
        )
        item.case_row = (orjson.dumps(facts).decode(), "routed", ev.department, ev.worker_id)
        counts = self.state.open_cases
        if ev.worker_id:
            counts[ev.worker_id] = counts.get(ev.worker_id, 0) + 1
        counts[away] = max(0, counts.get(away, 0) - 1)
        # a second request for the same case in this batch finds it moved
        handovers.states[case_id] = dataclasses.replace(state, worker_id=ev.worker_id)
        return True

    async def _record_and_publish(
        self, conn: asyncpg.Connection, decided: list[_Item]
    ) -> list[asyncio.Future[Any]]:
        """Record the decisions, then hand them to the producer; returns the acks to wait
        for. A redelivered input publishes the decision recorded the first time."""
        rows = await conn.fetch(
            _RECORD_SQL,
            [i.env.event_id for i in decided],
            [i.env.case_id for i in decided],
            [i.out for i in decided],
            *(list(col) for col in zip(*(i.case_row for i in decided), strict=True)),
        )
        recorded = {r["source_event_id"]: r["envelope"] for r in rows}
        fresh = {r["source_event_id"] for r in rows if r["fresh"]}
        send = self.producer.send
        acks = []
        for item in decided:
            item.value = recorded[item.env.event_id]
            # Only the recorded decision counts. An input delivered again (in this batch or
            # after a crash) was decided anew and that decision discarded: the worker it
            # counted does not get the case.
            item.fresh = item.env.event_id in fresh and item.value == item.out
            if item.fresh:
                fresh.discard(item.env.event_id)
            else:
                self._uncount_worker(item)
                if item.handed_from:  # the handover counted happened before, if at all
                    counts = self.state.open_cases
                    counts[item.handed_from] = counts.get(item.handed_from, 0) + 1
            acks.append(
                await send(topics.CASES_LIFECYCLE, value=item.value, key=item.env.case_id.encode())
            )
        return acks

    def _uncount_worker(self, item: _Item) -> None:
        ev = item.decision.event if item.decision else None
        if isinstance(ev, events.CaseRouted) and ev.worker_id:
            counts = self.state.open_cases
            counts[ev.worker_id] = max(0, counts.get(ev.worker_id, 0) - 1)

    @staticmethod
    def _count(decided: list[_Item]) -> None:
        """The decisions' metrics; a redelivered input's decision was counted the first time."""
        routed: collections.Counter[str] = collections.Counter()
        unroutable: collections.Counter[str] = collections.Counter()
        for item in decided:
            if not item.fresh:
                continue
            if item.handed_from:
                HANDED_OVER.inc()
                continue
            ev = item.decision.event if item.decision else None
            if isinstance(ev, events.CaseRouted):
                routed[ev.department] += 1
            elif isinstance(ev, events.CaseUnroutable):
                unroutable[_reason_label(ev.reason)] += 1
        for department, n in routed.items():
            ROUTED.labels(department, "routed").inc(n)
        for reason, n in unroutable.items():
            ROUTED.labels("", "unroutable").inc(n)
            UNROUTABLE.labels(reason).inc(n)

    async def _dead_letter(self, record: ConsumerRecord[Any, Any], exc: BaseException) -> None:
        if self.dead_letters is None:
            raise exc
        await self.dead_letters.publish(record, exc)


# the events that move a case's open or acknowledged flag, or erase its care groups
_FOLLOWED = frozenset(
    {
        "CaseResolved",
        "CaseClosed",
        "CaseReopened",
        "CaseMerged",
        "CaseAcknowledged",
        "PersonalDataErased",
    }
)


# One statement for a batch: the events not seen before set their case's open flag and its
# acknowledged flag (each column: the last event per case that changes it wins; resolved,
# reopened and closed in one batch: closed). Every changed case comes back with its open flag
# before and after, so each worker's count moves by its net change.
_FOLD_SQL = """
WITH fresh AS (
    INSERT INTO router.seen_events (event_id) SELECT unnest($1::uuid[])
    ON CONFLICT DO NOTHING
    RETURNING event_id
), ev AS (
    SELECT c.* FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[]) WITH ORDINALITY
        AS c(event_id, case_id, is_open, ack, ord)
    JOIN fresh USING (event_id)
), open_latest AS (
    SELECT DISTINCT ON (case_id) case_id, is_open FROM ev WHERE is_open IS NOT NULL
    ORDER BY case_id, ord DESC
), ack_latest AS (
    SELECT DISTINCT ON (case_id) case_id, ack FROM ev WHERE ack IS NOT NULL
    ORDER BY case_id, ord DESC
), changes AS (
    SELECT case_id, o.is_open, a.ack FROM open_latest o FULL JOIN ack_latest a USING (case_id)
), old AS (
    SELECT r.case_id, r.open FROM router.cases r JOIN changes USING (case_id)
)
UPDATE router.cases r
SET open = coalesce(ch.is_open, r.open),
    acknowledged = CASE ch.ack WHEN 'true' THEN true WHEN 'unknown' THEN NULL
                               ELSE r.acknowledged END,
    updated_at = now()
FROM changes ch JOIN old USING (case_id)
WHERE r.case_id = ch.case_id
RETURNING r.worker_id, r.open, old.open AS was_open
"""


async def refresh_open_counts(pool: asyncpg.Pool, state: RouterState) -> None:
    """The open-case counts again from `router.cases`, which every replica writes. Between
    refreshes a replica moves its counts by its own routings and by the closings on its own
    partitions of `cases.lifecycle`; with several replicas a case routed by one is often closed
    on another's partition, so each one's counts would drift without bound (one worker looking
    ever busier to one replica, idle to another)."""
    async with pool.acquire() as conn:
        state.open_cases = await store.open_counts(conn)


async def fold_lifecycle(
    conn: asyncpg.Connection, state: RouterState, records: Sequence[ConsumerRecord[Any, Any]]
) -> None:
    """Keep open-case counts per worker from lifecycle events (resolved and closed cases stop
    counting; reopened ones count again) and whether each case is acknowledged (what a
    handover asks), and erase the care groups of a case whose resident asked
    (`PersonalDataErased`). Idempotent by event id."""
    # (event id, case id, open now or None: unchanged, acknowledged now: "true", "unknown"
    # or None: unchanged)
    changes: list[tuple[Any, str, bool | None, str | None]] = []
    erased: list[str] = []
    for record in records:
        if peek_event_type(record.value) not in _FOLLOWED:
            continue  # most events (routed, escalated, …) do not change the counts
        try:
            env, event = decode(record.value)
        except DecodeError:
            continue  # not ours to judge: the other consumers dead-letter it
        if isinstance(event, events.CaseResolved | events.CaseClosed | events.CaseMerged):
            # merged: the case it joined is the worker's work now
            changes.append((env.event_id, env.case_id, False, None))
        elif isinstance(event, events.CaseReopened):
            # open again, with a clock of its own (escalation's): never handed over
            changes.append((env.event_id, env.case_id, True, "unknown"))
        elif isinstance(event, events.CaseAcknowledged):
            changes.append((env.event_id, env.case_id, None, "true"))
        elif isinstance(event, events.PersonalDataErased):
            erased.append(env.case_id)
    if erased:  # a resident asked: the care groups kept for a reroute go (idempotent)
        async with conn.transaction():
            # the mark first: a routing recorded from now on obeys it (services/router/retention)
            await conn.execute(
                "INSERT INTO router.erased_cases (case_id) SELECT unnest($1::text[]) "
                "ON CONFLICT DO NOTHING",
                erased,
            )
            await conn.execute(
                f"UPDATE router.cases SET facts = {FORGET_PERSONAL_FACTS} WHERE case_id = ANY($1)",
                erased,
            )
    if not changes:
        return
    rows = await conn.fetch(_FOLD_SQL, *(list(col) for col in zip(*changes, strict=True)))
    for row in rows:
        if row["open"] == row["was_open"]:
            continue  # the acknowledged flag only, or no change
        if worker := row["worker_id"]:
            state.open_cases[worker] = max(
                0, state.open_cases.get(worker, 0) + (1 if row["open"] else -1)
            )
