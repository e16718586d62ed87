"""Filling an outbox with numbered events, and checking what came out of Kafka."""

from __future__ import annotations

import json
from collections import defaultdict

import asyncpg
from aiokafka import ConsumerRecord

from shared.events import CaseProgressed, wrap
from shared.outbox import Outbox


async def fill_outbox(
    conn: asyncpg.Connection, schema: str, topic: str, *, cases: int, per_case: int
) -> list[str]:
    """Writes `per_case` numbered events for each of `cases` cases, interleaved across cases
    and spread over many transactions, as a busy service would. Returns the event ids."""
    outbox = Outbox(schema)
    ids: list[str] = []
    for seq in range(per_case):
        async with conn.transaction():
            items = []
            for c in range(cases):
                env = wrap(
                    CaseProgressed(by="test", note=str(seq)),
                    case_id=f"case-{c}",
                    producer="test",
                )
                items.append((env, topic))
                ids.append(str(env.event_id))
            await outbox.add_many(conn, items)
    return ids


def per_case_sequences(records: list[ConsumerRecord[bytes, bytes]]) -> dict[str, list[int]]:
    """What a deduplicating consumer sees: per case, the sequence numbers in arrival order,
    each event id taken once."""
    seen: set[str] = set()
    out: dict[str, list[int]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        env = json.loads(rec.value)
        if env["event_id"] in seen:
            continue
        seen.add(env["event_id"])
        out[env["case_id"]].append(int(env["payload"]["note"]))
    return dict(out)
