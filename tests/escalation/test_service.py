"""The escalation service as a process on the real broker and database: a stalled case climbs
the ladder on `cases.lifecycle`, acknowledging stops it, and `kill -9` loses and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shared import events, topics
from shared.localstack import LocalStack, free_port
from shared.settings import PROJECT_ROOT
from tests.escalation.conftest import routed, step

FAST = {
    "GRIDDISPATCH_ESCALATION__STEP_S": "0.5",
    "GRIDDISPATCH_ESCALATION__REPEAT_EVERY_S": "0.5",
    "GRIDDISPATCH_ESCALATION__MAX_REPEATS": "1",
    "GRIDDISPATCH_OUTBOX__POLL_INTERVAL_S": "0.2",
}


def start(stack: LocalStack, log) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {**os.environ, **stack.env(), **FAST, "GRIDDISPATCH_ESCALATION__PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", "escalation"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    for _ in range(600):  # ready: migrated and serving (its consumer joins right after)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return proc


async def publish(stack: LocalStack, *envs) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for env in envs:
            await producer.send_and_wait(
                topics.CASES_LIFECYCLE, env.to_json(), key=env.case_id.encode()
            )
    finally:
        await producer.stop()


async def escalations(
    stack: LocalStack, case_ids: set[str], *, until: int, timeout_s: float = 60
) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(
        topics.CASES_LIFECYCLE,
        bootstrap_servers=stack.kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[tuple[bytes, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle: float | None = None
        while time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                for r in recs:
                    if r.key and r.key.decode() in case_ids:
                        env = json.loads(r.value)
                        if env["producer"] == "escalation":
                            found.append((r.value, env))
            if len({e["event_id"] for _, e in found}) >= until and settle is None:
                settle = time.monotonic() + 2
            if settle is not None and time.monotonic() > settle:
                break
    finally:
        await consumer.stop()
    return found


@pytest.fixture
def service_log(tmp_path):
    with open(tmp_path / "escalation.log", "ab") as log:
        yield log


async def test_a_stalled_case_climbs_and_acknowledging_stops_the_next(
    stack: LocalStack, service_log
) -> None:
    proc = start(stack, service_log)
    try:
        now = datetime.now(UTC)
        stalled = routed(at=now, ack_s=2, resolve_s=3600)
        handled = routed(at=now, ack_s=2, resolve_s=3600)
        await publish(
            stack, stalled, handled, step(events.CaseAcknowledged(by="w-1"), handled.case_id, now)
        )
        # 5 rungs (grid leader … city) and one reminder at the top
        found = await escalations(stack, {stalled.case_id, handled.case_id}, until=6)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    mine = [e for _, e in found if e["case_id"] == stalled.case_id]
    assert [(e["payload"]["level"], e["payload"]["repeat"]) for e in mine] == [
        (1, 0),
        (2, 0),
        (3, 0),
        (4, 0),
        (5, 0),
        (5, 1),
    ]
    assert [e for _, e in found if e["case_id"] == handled.case_id] == []


async def test_kill_9_while_timers_fall_due_fires_each_exactly_once(
    stack: LocalStack, service_log
) -> None:
    proc = start(stack, service_log)
    now = datetime.now(UTC)
    cases = [routed(at=now, ack_s=3 + (i % 10) * 0.3, resolve_s=3600) for i in range(200)]
    ids = [c.case_id for c in cases]
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        await publish(stack, *cases)
        # kill it in the middle of the work: every case armed, some timers fired, some not
        for _ in range(1200):
            row = await conn.fetchrow(
                "SELECT count(DISTINCT case_id) AS armed, "
                "count(*) FILTER (WHERE state = 'fired') AS fired "
                "FROM escalation.timers WHERE case_id = ANY($1)",
                ids,
            )
            if row["armed"] == 200 and row["fired"] > 0:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        pending = await conn.fetchval(
            "SELECT count(*) FROM escalation.timers WHERE state = 'pending' AND case_id = ANY($1)",
            ids,
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        await conn.close()
    proc = start(stack, service_log)
    try:
        # every case escalates to level 1 once, …, level 5, then one reminder: 6 each
        found = await escalations(stack, {c.case_id for c in cases}, until=6 * 200, timeout_s=90)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    by_id: dict[str, set[bytes]] = {}
    for raw, env in found:
        by_id.setdefault(env["event_id"], set()).add(raw)
    assert pending > 0  # the kill really happened with work outstanding
    assert len(by_id) == 6 * 200  # nothing lost …
    assert all(len(v) == 1 for v in by_id.values())  # … and a re-sent event is the same event
    per_case: dict[str, list[tuple[int, int]]] = {}
    for env in {e["event_id"]: e for _, e in found}.values():
        per_case.setdefault(env["case_id"], []).append(
            (env["payload"]["level"], env["payload"]["repeat"])
        )
    assert all(
        sorted(v) == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (5, 1)] for v in per_case.values()
    )
