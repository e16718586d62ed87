"""`griddispatch dlq list|replay` on the real broker, with the router consuming: a message
dead-lettered by a (since fixed) bug is replayed and routed; a poison message replayed comes
back to the DLQ, marked as a replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.router import democity
from shared import topics
from shared.kafka import DeadLetters, make_broker
from shared.localstack import LocalStack
from shared.settings import KafkaSettings
from tests.helpers.cli import run_cli
from tests.router.conftest import decisions_for, report
from tests.router.test_pipeline import _comprehensive

TRACEPARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def _dead_letter_as_the_router_would(stack: LocalStack, key: bytes, value: bytes) -> None:
    """What `DeadLetters` writes when the router's handler fails on a message of its own."""
    broker = make_broker(KafkaSettings(bootstrap_servers=stack.kafka.bootstrap), "test-dlq")
    await broker.connect()
    try:
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            topics.CASES_INTAKE, 0, 123, int(time.time() * 1000), 0, key, value, None,
            len(key), len(value), [("traceparent", TRACEPARENT)],
        )  # fmt: skip
        await DeadLetters(broker, "router").publish(record, ValueError("a bug, since fixed"))
    finally:
        await broker.stop()


def _listed(stack: LocalStack, *args: str) -> list[dict[str, Any]]:
    out = run_cli(stack, "dlq", "list", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [orjson.loads(line) for line in out.stdout.splitlines()]


async def _wait_listed(stack: LocalStack, match: Any, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _listed(stack, "--consumer", "router")
        found = [row for row in rows if match(row)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"not dead-lettered in time; listed: {rows}"
        await asyncio.sleep(1)


async def test_dead_letters_are_listed_and_replayed_to_the_router(
    router_url: str, stack: LocalStack
) -> None:
    lat, lon = democity.point_in(_comprehensive(12), 0.9, 0.9)
    valid = report("roads.pothole", lat=lat, lon=lon)
    await _dead_letter_as_the_router_would(stack, valid.case_id.encode(), valid.to_json())
    poison_key = f"poison-{uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.CASES_INTAKE, b'{"broken": ', key=poison_key)
    finally:
        await producer.stop()

    dead_valid = await _wait_listed(stack, lambda r: r["key"] == valid.case_id)
    assert dead_valid["topic"] == topics.CASES_INTAKE
    assert dead_valid["error_type"] == "ValueError"
    assert "value" not in dead_valid  # the message itself only with --payload
    dead_poison = await _wait_listed(stack, lambda r: r["key"] == poison_key.decode())
    assert dead_poison["error_type"] == "DecodeError"
    assert dead_poison["replayed_from"] is None
    assert not await decisions_for(stack, valid.case_id, timeout_s=2)

    unselected = run_cli(stack, "dlq", "replay")
    assert unselected.returncode == 2
    assert "--all" in unselected.stderr
    unknown = run_cli(stack, "dlq", "replay", "--offset", "cases.intake.dlq/0/999999")
    assert unknown.returncode == 1
    assert "no such dead letter" in unknown.stderr
    dry = run_cli(stack, "dlq", "replay", "--offset", dead_valid["position"], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 would be replayed" in dry.stderr
    assert not await decisions_for(stack, valid.case_id, timeout_s=2)

    replayed = run_cli(
        stack,
        "dlq",
        "replay",
        "--offset",
        dead_valid["position"],
        "--offset",
        dead_poison["position"],
    )
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 2" in replayed.stderr

    [(_, routed)] = await decisions_for(stack, valid.case_id)
    assert routed["event_type"] == "CaseRouted"
    assert routed["payload"]["department"] == "roads"
    again = await _wait_listed(
        stack, lambda r: r["replayed_from"] == dead_poison["position"]
    )  # the poison failed again, and says it was a replay
    assert again["key"] == poison_key.decode()
    assert again["position"] != dead_poison["position"]
    with_payload = _listed(stack, "--payload", "--error-type", "DecodeError")
    assert any(r["value"] == '{"broken": ' for r in with_payload)


async def test_reading_dead_letters_since_a_moment_starts_there_not_at_the_beginning(
    stack: LocalStack,
) -> None:
    """`dlq list --after` asks the broker's time index where to start: a letter written
    before the moment (less the margin) is never read, even when nothing else filters."""
    from datetime import UTC, datetime, timedelta

    from shared.dlq import read_dead_letters
    from shared.kafka import ensure_topics

    now = datetime.now(UTC)
    old, new = (f"since-{uuid.uuid4().hex[:8]}".encode() for _ in range(2))
    # a DLQ of its own: its letters are appended in time order, as a real DLQ's are
    dlqs = [f"test.since-{uuid.uuid4().hex[:8]}.dlq"]
    await ensure_topics(stack.kafka.bootstrap, dlqs, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        for key, at in ((old, now - timedelta(hours=2)), (new, now)):
            await producer.send_and_wait(
                dlqs[0],
                b"{}",
                key=key,
                partition=0,
                timestamp_ms=int(at.timestamp() * 1000),
                headers=[("x-dlq-at", at.isoformat().encode())],
            )
    finally:
        await producer.stop()
    everything = {x.key for x in await read_dead_letters(stack.kafka.bootstrap, dlqs)}
    assert everything == {old, new}
    since = {
        x.key
        for x in await read_dead_letters(
            stack.kafka.bootstrap, dlqs, since=now - timedelta(minutes=30)
        )
    }
    assert new in since
    assert old not in since
    nothing = await read_dead_letters(stack.kafka.bootstrap, dlqs, since=now + timedelta(hours=1))
    assert nothing == []
