"""The dispatcher on the real database and broker, driven batch by batch: one statement records
each chunk of a batch's decisions (the next chunk is decided meanwhile), and must keep the order
of a case's decisions within the batch, across chunks too, and give a redelivered batch the very
same output."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.router import democity, store
from services.router.dispatch import (
    Dispatcher,
    RouterState,
    fold_lifecycle,
    refresh_open_counts,
)
from shared import events, topics
from shared.db import create_pool
from shared.events import Envelope, wrap
from shared.kafka import make_producer
from shared.localstack import LocalStack
from shared.metrics import REGISTRY
from shared.settings import KafkaSettings
from tests.helpers.kafka import read_topic, record_of
from tests.router.conftest import CITY, report


@pytest.fixture
async def dispatcher(router_url: str, stack: LocalStack) -> AsyncIterator[Dispatcher]:
    """A dispatcher of its own (open-case counts from zero) on the small city that `router_url`
    loads; its batches go to it directly, not through the running router. Chunks: the
    defaults, four of at least 50 decisions."""
    pool = await create_pool(stack.postgres.url, "router", max_size=2)
    producer = make_producer(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test")
    await producer.start()
    try:
        async with pool.acquire() as conn:
            state = RouterState(await store.load_reference(conn))
        yield Dispatcher(pool, producer, state, None)
    finally:
        await producer.stop()
        await pool.close()


async def _workers(pool: asyncpg.Pool, cases: list[Envelope]) -> dict[str, str]:
    """The worker each case was routed to, as recorded."""
    rows = await pool.fetch(
        "SELECT case_id, worker_id FROM router.cases WHERE case_id = ANY($1::text[])",
        [env.case_id for env in cases],
    )
    return {r["case_id"]: r["worker_id"] for r in rows}


async def test_a_batch_keeps_each_case_s_decisions_in_order_and_redelivers_the_same(
    dispatcher: Dispatcher, stack: LocalStack
) -> None:
    grids = [g for g in CITY.grids if g["kind"] == "comprehensive"]
    reports = [
        report("sanitation.garbage", lat=lat, lon=lon)
        for lat, lon in (democity.point_in(grids[i % len(grids)], 0.9, 0.9) for i in range(250))
    ]

    def declined(case: Envelope) -> Envelope:
        return wrap(
            events.RerouteRequested(
                reason="not ours", requested_by="sanitation", exclude_departments=("sanitation",)
            ),
            case_id=case.case_id,
            producer="intake",
        )

    # two cases declined by their department: one soon after its report (the same chunk), one
    # far after it (a later chunk: the batch of 252 goes in four)
    near, far = reports[5], reports[6]
    inputs = [*reports[:20], declined(near), *reports[20:200], declined(far), *reports[200:]]
    batch = [record_of(env, topics.CASES_INTAKE, i) for i, env in enumerate(inputs)]

    assert await dispatcher.handle(batch) == len(batch)
    # a redelivery of the whole batch (a crash before the offsets were committed)
    assert await dispatcher.handle(batch) == len(batch)
    async with dispatcher.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT status, facts::text FROM router.cases WHERE case_id = ANY($1::text[])",
            [near.case_id, far.case_id],
        )
        stored = await conn.fetchval(
            "SELECT count(*) FROM router.decisions WHERE case_id = ANY($1::text[])",
            [env.case_id for env in reports],
        )

    ours = {env.case_id.encode() for env in reports}
    published = [
        r
        for r in await read_topic(
            stack.kafka.bootstrap, topics.CASES_LIFECYCLE, expected=1, settle_s=2
        )
        if r.key in ours and json.loads(r.value)["producer"] == "router"
    ]
    assert stored == len(batch)  # one decision per input, the redelivery added none
    assert len(published) == 2 * len(batch)
    by_source: dict[bytes, list[bytes]] = {}
    for r in published:
        by_source.setdefault(json.loads(r.value)["event_id"].encode(), []).append(r.value)
    assert all(a == b for a, b in by_source.values())  # redelivered: the very same bytes
    for case in (near, far):  # each case's two decisions, in order, both times
        decisions = [json.loads(r.value) for r in published if r.key == case.case_id.encode()]
        assert [d["event_type"] for d in decisions] == ["CaseRouted", "CaseUnroutable"] * 2
        assert decisions[0]["payload"]["department"] == "sanitation"
    # and both cases keep their last decision
    assert [r["status"] for r in rows] == ["unroutable", "unroutable"]
    assert [json.loads(r["facts"])["excluded"] for r in rows] == [["sanitation"]] * 2


async def test_open_case_counts_follow_resolutions_reopenings_and_closings(
    dispatcher: Dispatcher,
) -> None:
    """The counts that pick the least-loaded worker: each worker's routed cases, less those
    resolved or closed, plus those reopened; a redelivered event changes nothing."""
    grid = next(g for g in CITY.grids if g["kind"] == "comprehensive")
    reports = [
        report("roads.pothole", lat=lat, lon=lon) for lat, lon in [democity.point_in(grid)] * 3
    ]
    pool, state = dispatcher.pool, dispatcher.state
    await dispatcher.handle(
        [record_of(env, topics.CASES_INTAKE, i) for i, env in enumerate(reports)]
    )
    worker = await _workers(pool, reports)
    assert all(worker.values())
    counted = dict(state.open_cases)

    def moved() -> dict[str, int]:
        return {w: state.open_cases.get(w, 0) - counted.get(w, 0) for w in set(worker.values())}

    def ev(case: Envelope, event: events.Event) -> Envelope:
        return wrap(event, case_id=case.case_id, producer="intake")

    a, b, c = reports
    resolved_a = ev(a, events.CaseResolved(by="w", note="done"))
    batch = [
        resolved_a,
        ev(b, events.CaseResolved(by="w", note="done")),
        ev(b, events.CaseReopened(by="resident", reason="still broken")),
        ev(c, events.CaseResolved(by="w", note="done")),
        ev(c, events.CaseReopened(by="resident", reason="still broken")),
        ev(c, events.CaseClosed(by="operator")),
    ]
    async with pool.acquire() as conn:
        await fold_lifecycle(
            conn, state, [record_of(e, topics.CASES_LIFECYCLE, i) for i, e in enumerate(batch)]
        )
        expected: dict[str, int] = {}
        for case in (a, c):  # b is open again; a and c are not
            expected[worker[case.case_id]] = expected.get(worker[case.case_id], 0) - 1
        expected.setdefault(worker[b.case_id], 0)
        assert moved() == expected
        # the same events again (a redelivery), then a's reopening
        await fold_lifecycle(
            conn, state, [record_of(e, topics.CASES_LIFECYCLE, i) for i, e in enumerate(batch)]
        )
        assert moved() == expected
        reopened = ev(a, events.CaseReopened(by="resident", reason="again"))
        await fold_lifecycle(conn, state, [record_of(reopened, topics.CASES_LIFECYCLE)])
        expected[worker[a.case_id]] += 1
        assert moved() == expected
        rows = await conn.fetch(
            "SELECT case_id, open FROM router.cases WHERE case_id = ANY($1::text[])",
            [env.case_id for env in reports],
        )
    assert {r["case_id"]: r["open"] for r in rows} == {
        a.case_id: True,
        b.case_id: True,
        c.case_id: False,
    }


async def test_a_merged_case_stops_counting_once_for_its_worker(
    dispatcher: Dispatcher,
) -> None:
    """The case it joined is the worker's work now: merging frees the slot, and the merged
    case's resolution with that case does not free it twice."""
    grid = next(g for g in CITY.grids if g["kind"] == "comprehensive")
    lat, lon = democity.point_in(grid)
    original, duplicate = [report("roads.pothole", lat=lat, lon=lon) for _ in range(2)]
    pool, state = dispatcher.pool, dispatcher.state
    await dispatcher.handle(
        [record_of(env, topics.CASES_INTAKE, i) for i, env in enumerate((original, duplicate))]
    )
    worker = (await _workers(pool, [duplicate]))[duplicate.case_id]
    assert worker
    before = state.open_cases.get(worker, 0)

    def ev(event: events.Event) -> Envelope:
        return wrap(event, case_id=duplicate.case_id, producer="intake")

    merged = ev(events.CaseMerged(by="w", into=original.case_id))
    follow = ev(events.CaseResolved(by="w", note="done", follows=original.case_id))
    async with pool.acquire() as conn:
        await fold_lifecycle(conn, state, [record_of(merged, topics.CASES_LIFECYCLE)])
        assert state.open_cases.get(worker, 0) == before - 1
        await fold_lifecycle(conn, state, [record_of(follow, topics.CASES_LIFECYCLE)])
        assert state.open_cases.get(worker, 0) == before - 1
        is_open = await conn.fetchval(
            "SELECT open FROM router.cases WHERE case_id = $1", duplicate.case_id
        )
    assert is_open is False


async def test_replicas_counts_meet_again_in_the_cases_they_all_write(
    dispatcher: Dispatcher,
) -> None:
    """One replica routes a case and another folds its closing (their partitions of the two
    topics differ): the first keeps counting it until it reads the counts again."""
    grid = next(g for g in CITY.grids if g["kind"] == "comprehensive")
    lat, lon = democity.point_in(grid)
    case = report("roads.pothole", lat=lat, lon=lon)
    pool, mine = dispatcher.pool, dispatcher.state
    await dispatcher.handle([record_of(case, topics.CASES_INTAKE)])
    worker = (await _workers(pool, [case]))[case.case_id]
    async with pool.acquire() as conn:
        truth_before = (await store.open_counts(conn)).get(worker, 0)
    other = RouterState(mine.ref, dict(mine.open_cases))  # another replica
    closed = wrap(events.CaseClosed(by="operator"), case_id=case.case_id, producer="intake")
    async with pool.acquire() as conn:
        await fold_lifecycle(conn, other, [record_of(closed, topics.CASES_LIFECYCLE)])
        truth = (await store.open_counts(conn)).get(worker, 0)
    assert truth == truth_before - 1
    assert other.open_cases.get(worker, 0) == mine.open_cases.get(worker, 0) - 1
    await refresh_open_counts(pool, mine)
    assert mine.open_cases.get(worker, 0) == truth


async def test_a_redelivered_report_counts_once_for_its_worker(
    dispatcher: Dispatcher,
) -> None:
    """A report delivered twice in one batch (a relay replayed it), then again in a later
    batch (a crash before the commit), is published with its recorded decision each time; its
    worker's open-case count and the routed-cases metric move once."""
    grid = next(g for g in CITY.grids if g["kind"] == "comprehensive")
    first, second = (
        report("roads.pothole", lat=lat, lon=lon) for lat, lon in [democity.point_in(grid)] * 2
    )

    def routed_metric() -> float:
        labels = {"department": "roads", "outcome": "routed"}
        return REGISTRY.get_sample_value("griddispatch_cases_routed_total", labels) or 0.0

    state = dispatcher.state
    before = routed_metric()
    intake = topics.CASES_INTAKE
    twice = [record_of(first, intake, 0), record_of(first, intake, 1)]
    assert await dispatcher.handle(twice) == 2
    assert sum(state.open_cases.values()) == 1
    again = [record_of(first, intake, 0), record_of(second, intake, 2)]
    assert await dispatcher.handle(again) == 2
    workers = await _workers(dispatcher.pool, [first, second])
    expected: dict[str, int] = {}
    for worker in workers.values():
        expected[worker] = expected.get(worker, 0) + 1
    assert {w: n for w, n in state.open_cases.items() if n} == expected
    assert routed_metric() - before == 2


async def test_a_case_erased_before_its_routing_is_recorded_without_its_care_groups(
    dispatcher: Dispatcher,
) -> None:
    """The router lagging on `cases.intake` (or a dead letter replayed): the resident's erasure
    is folded before their report is routed. The routing still goes out; what the router keeps
    of the case has no care groups and a masked description, as if erased after it."""
    grid = next(g for g in CITY.grids if g["kind"] == "comprehensive")
    lat, lon = democity.point_in(grid)
    erased, kept = (
        report(
            "roads.pothole",
            lat=lat,
            lon=lon,
            description="路面塌陷，电话13900000007",
            care_groups=("elderly_alone",),
        )
        for _ in range(2)
    )
    erasure = wrap(
        events.PersonalDataErased(by="op-1", reason="申请"),
        case_id=erased.case_id,
        producer="intake",
    )
    async with dispatcher.pool.acquire() as conn:
        await fold_lifecycle(conn, dispatcher.state, [record_of(erasure, topics.CASES_LIFECYCLE)])
    intake = topics.CASES_INTAKE
    assert await dispatcher.handle([record_of(erased, intake, 0), record_of(kept, intake, 1)]) == 2
    rows = await dispatcher.pool.fetch(
        "SELECT case_id, status, facts::text AS f FROM router.cases WHERE case_id = ANY($1)",
        [erased.case_id, kept.case_id],
    )
    facts = {r["case_id"]: (r["status"], json.loads(r["f"])) for r in rows}
    assert facts[erased.case_id][0] == facts[kept.case_id][0] == "routed"
    assert "care_groups" not in facts[erased.case_id][1]
    assert facts[erased.case_id][1]["description"] == "路面塌陷，电话***"
    assert facts[kept.case_id][1]["care_groups"] == ["elderly_alone"]
    assert facts[kept.case_id][1]["description"] == "路面塌陷，电话13900000007"
