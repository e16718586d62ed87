"""The router's retention on the real database: the decision log and the folded lifecycle
events go after the dedup period; the care groups kept in a case's facts go after the
personal-data period once the case is resolved or closed (or at once when the resident asks,
leaving a mark that later routings obey), and a reroute still decides on what is left."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from services.router.dispatch import RouterState, case_facts, fold_lifecycle
from services.router.retention import purges
from services.router.settings import MIGRATIONS
from shared import events, topics
from shared.db import create_pool, migrate
from shared.events import wrap
from shared.localstack import LocalStack
from shared.retention import Retention
from shared.settings import RetentionSettings
from tests.helpers.kafka import record_of
from tests.helpers.services import fresh_database

NOW = datetime.now(UTC)
FACTS = {
    "category": "heating.outage",
    "description": "暖气不热，电话13900000007",
    "location": {"lat": 47.35, "lon": 123.92, "address": None, "building_code": None},
    "reported_at": NOW.isoformat(),
    "care_groups": ["elderly_alone"],
    "excluded": [],
}


async def test_the_router_forgets_what_it_no_longer_needs(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "router_retention")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "router", MIGRATIONS)
        cases = {  # case id: (open, days since its last change)
            "closed-long-ago": (False, 200),
            "closed-lately": (False, 100),
            "open-long": (True, 200),
            # routed while its erasure was being recorded: the routing kept the care groups
            "erased-meanwhile": (True, 1),
        }
        for case_id, (is_open, days) in cases.items():
            await conn.execute(
                "INSERT INTO router.cases (case_id, facts, status, open, updated_at) "
                "VALUES ($1, $2::jsonb, 'routed', $3, $4)",
                case_id,
                orjson.dumps(FACTS).decode(),
                is_open,
                NOW - timedelta(days=days),
            )
        # the same without care groups: the number written into its description goes too
        await conn.execute(
            "INSERT INTO router.cases (case_id, facts, status) VALUES ($1, $2::jsonb, 'routed')",
            "erased-meanwhile-no-care",
            orjson.dumps({**FACTS, "care_groups": []}).decode(),
        )
        marked = ("erased-meanwhile", "erased-meanwhile-no-care", "erased-long-ago")
        for case_id, days in zip(marked, (1, 1, 40), strict=True):
            await conn.execute(
                "INSERT INTO router.erased_cases (case_id, erased_at) VALUES ($1, $2)",
                case_id,
                NOW - timedelta(days=days),
            )
        ages = {uuid.uuid4(): days for days in (40, 36, 34, 1)}
        for event_id, days in ages.items():
            at = NOW - timedelta(days=days)
            await conn.execute(
                "INSERT INTO router.decisions (source_event_id, case_id, envelope, decided_at) "
                "VALUES ($1, 'c', '\\x00', $2)",
                event_id,
                at,
            )
            await conn.execute(
                "INSERT INTO router.seen_events (event_id, seen_at) VALUES ($1, $2)", event_id, at
            )

        pool = await create_pool(url, "router", max_size=2)
        try:
            settings = RetentionSettings(personal_data_days=180, dedup_days=35, batch_size=1)
            done = await Retention(pool, "router", purges(settings), settings).purge()
        finally:
            await pool.close()

        assert done == {
            "decision log": 2,
            "seen events": 2,
            "care flags": 1,
            "erased facts": 2,
            "erasure marks": 1,
        }
        marks = await conn.fetch("SELECT case_id FROM router.erased_cases")
        assert sorted(r["case_id"] for r in marks) == list(marked[:2])
        young = {e for e, days in ages.items() if days < 35}
        decisions = await conn.fetch("SELECT source_event_id FROM router.decisions")
        assert {r["source_event_id"] for r in decisions} == young
        seen = await conn.fetch("SELECT event_id FROM router.seen_events")
        assert {r["event_id"] for r in seen} == young
        facts = {
            r["case_id"]: orjson.loads(r["facts"])
            for r in await conn.fetch("SELECT case_id, facts::text FROM router.cases")
        }
    finally:
        await conn.close()

    assert "care_groups" not in facts["closed-long-ago"]
    assert facts["closed-long-ago"]["description"] == "暖气不热，电话***"
    assert facts["closed-lately"]["description"] == "暖气不热，电话13900000007"
    assert facts["closed-lately"]["care_groups"] == ["elderly_alone"]
    assert facts["open-long"]["care_groups"] == ["elderly_alone"]
    assert "care_groups" not in facts["erased-meanwhile"]
    assert facts["erased-meanwhile"]["description"] == "暖气不热，电话***"
    assert facts["erased-meanwhile-no-care"]["description"] == "暖气不热，电话***"
    # a reroute of the erased case (reopened, say) decides without the care groups
    assert case_facts("closed-long-ago", facts["closed-long-ago"], None).care_groups == ()


async def test_a_residents_erasure_request_drops_the_care_groups(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "router_erasure")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "router", MIGRATIONS)
        for case_id in ("asked", "other"):
            await conn.execute(
                "INSERT INTO router.cases (case_id, facts, status) "
                "VALUES ($1, $2::jsonb, 'routed')",
                case_id,
                orjson.dumps(FACTS).decode(),
            )
        erasure = wrap(
            events.PersonalDataErased(by="op-1", reason="申请"), case_id="asked", producer="intake"
        )
        state = RouterState(ref=None)  # type: ignore[arg-type]  # the fold reads no reference data
        await fold_lifecycle(conn, state, [record_of(erasure, topics.CASES_LIFECYCLE)])
        await fold_lifecycle(
            conn, state, [record_of(erasure, topics.CASES_LIFECYCLE)]
        )  # delivered again: the same
        marks = [r["case_id"] for r in await conn.fetch("SELECT case_id FROM router.erased_cases")]
        facts = {
            r["case_id"]: orjson.loads(r["facts"])
            for r in await conn.fetch("SELECT case_id, facts::text FROM router.cases")
        }
    finally:
        await conn.close()
    assert "care_groups" not in facts["asked"]
    assert facts["asked"]["description"] == "暖气不热，电话***"
    assert marks == ["asked"]  # a routing recorded later obeys it
    assert facts["other"]["description"] == "暖气不热，电话13900000007"
    assert facts["asked"]["category"] == "heating.outage"
    assert facts["other"]["care_groups"] == ["elderly_alone"]
