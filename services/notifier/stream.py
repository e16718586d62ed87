"""The live stream: server-sent events of a department's feed, for consoles and worker apps.

Each connection reads the department's `dept.<code>` topic itself (from now on, no consumer
group), so every replica serves the whole feed. Optionally filtered to one grid. A department's
stream token is checked again every minute while the stream is open: revoking it ends the
streams it opened.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer

from shared import topics
from shared.kafka import client_options, ensure_topics

HEARTBEAT_S = 15.0
RECHECK_S = 60.0


async def department_events(
    kafka: str | Mapping[str, Any],
    department: str,
    grid: str | None,
    pool: asyncpg.Pool,
    stop: asyncio.Event | None = None,
    partitions: int = 12,
    replication_factor: int = 1,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
    recheck_s: float = RECHECK_S,
) -> AsyncIterator[bytes]:
    topic = topics.department_feed(department)
    # The feed topic may not exist yet (no case so far): create it now, so that the partitions
    # are assigned at once and "latest" cannot skip the department's first messages.
    await ensure_topics(
        kafka, [topic], partitions=partitions, replication_factor=replication_factor
    )
    consumer = AIOKafkaConsumer(
        topic,
        **client_options(kafka),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        metadata_max_age_ms=5000,
    )
    await consumer.start()
    grids: dict[str, str | None] = {}
    checked = time.monotonic()
    try:
        yield b": connected\n\n"
        while stop is None or not stop.is_set():
            if still_allowed is not None and time.monotonic() - checked >= recheck_s:
                if not await still_allowed():
                    yield b"event: revoked\ndata: {}\n\n"
                    return
                checked = time.monotonic()
            wait_s = min(HEARTBEAT_S, recheck_s) if still_allowed is not None else HEARTBEAT_S
            batch = await consumer.getmany(timeout_ms=int(wait_s * 1000))
            if not batch:
                yield b": keep-alive\n\n"
                continue
            for records in batch.values():
                for r in records:
                    msg = json.loads(r.value)
                    if grid is not None:
                        case_grid = msg.get("details", {}).get("grid_id")
                        if case_grid is None:
                            cid = msg["case_id"]
                            if cid not in grids:
                                grids[cid] = await pool.fetchval(
                                    "SELECT grid_id FROM notifier.cases WHERE case_id = $1", cid
                                )
                            case_grid = grids[cid]
                        if case_grid != grid:
                            continue
                    yield (
                        f"id: {msg.get('feed_id', '')}\nevent: {msg['event_type']}\n"
                        f"data: {r.value.decode()}\n\n"
                    ).encode()
    finally:
        await consumer.stop()
