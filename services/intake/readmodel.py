"""Keeps intake's view of every case current by consuming `cases.lifecycle`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker
from prometheus_client import Counter, Gauge

from services.intake import store
from shared import topics
from shared.kafka import (
    DeadLetters,
    Records,
    decode_records,
    durable_subscriber,
    handle_isolating,
)
from shared.metrics import REGISTRY, sample_every

log = logging.getLogger(__name__)

GROUP_ID = "intake-read-model"

READ_MODEL_LAG = Gauge(
    "griddispatch_intake_read_model_lag_seconds",
    "Age of the last lifecycle event folded into intake's read model when it was applied",
    registry=REGISTRY,
)
READ_MODEL_EVENTS = Counter(
    "griddispatch_intake_read_model_events_total",
    "Lifecycle events seen by the read model",
    ["outcome"],
    registry=REGISTRY,
)


def attach_read_model(broker: KafkaBroker, pool: asyncpg.Pool) -> None:
    """Register the `cases.lifecycle` consumer on `broker`."""
    dead_letters = DeadLetters(broker, GROUP_ID)

    @durable_subscriber(
        broker, topics.CASES_LIFECYCLE, group_id=GROUP_ID, batch=True, max_records=500
    )
    async def fold_lifecycle(records: Records) -> None:
        await handle_isolating(records, fold_records, dead_letters)

    async def fold_records(records: Sequence[ConsumerRecord[Any, Any]]) -> None:
        # The whole batch with a few set-based statements and one commit: a savepoint and
        # three statements per event made this consumer a fifth of intake's CPU.
        items = await decode_records(records, dead_letters)
        if not items:
            return
        async with pool.acquire() as conn:
            applied = await store.apply_lifecycle_events(conn, items)
        READ_MODEL_EVENTS.labels("applied").inc(applied)
        READ_MODEL_EVENTS.labels("duplicate").inc(len(items) - applied)
        READ_MODEL_LAG.set(
            max(0.0, time.time() - items[-1][0].occurred_at.astimezone(UTC).timestamp())
        )


OPEN_CASES = Gauge(
    "griddispatch_cases_open",
    "Cases not yet resolved, by department ('none': awaiting routing or in triage)",
    ["department"],
    registry=REGISTRY,
)


TRIAGE_CASES = Gauge(
    "griddispatch_triage_cases",
    "Cases in triage: no grid or department found, waiting for an operator to route them",
    registry=REGISTRY,
)
TRIAGE_OLDEST_AGE = Gauge(
    "griddispatch_triage_oldest_age_seconds",
    "How long the case longest in triage has waited (0: none waits); it has no deadline "
    "until an operator routes it",
    registry=REGISTRY,
)


EXTENSIONS_WAITING = Gauge(
    "griddispatch_extensions_waiting",
    "Requests for more time (a later resolve deadline) waiting for an operator's answer",
    registry=REGISTRY,
)
EXTENSION_OLDEST_WAIT = Gauge(
    "griddispatch_extension_oldest_wait_seconds",
    "How long the oldest request for more time has waited for an operator (0: none waits); "
    "unanswered, it lapses when the case's deadline passes",
    registry=REGISTRY,
)


class OpenCaseGauge:
    """Refreshes `griddispatch_cases_open`, the triage gauges and the waiting extensions from
    the read model. Every intake replica reports the same figures, so dashboards take `max`."""

    def __init__(self, pool: asyncpg.Pool, *, interval_s: float = 15.0) -> None:
        self._pool = pool
        self._interval_s = interval_s
        self._seen: set[str] = set()

    async def refresh(self) -> None:
        async with self._pool.acquire() as conn:
            counts = dict(await store.open_cases_by_department(conn))
            waiting, oldest = await store.triage_waiting(conn)
            asked, oldest_asked = await store.extensions_waiting(conn)
        EXTENSIONS_WAITING.set(asked)
        EXTENSION_OLDEST_WAIT.set(_waited_s(oldest_asked))
        TRIAGE_CASES.set(waiting)
        TRIAGE_OLDEST_AGE.set(_waited_s(oldest))
        for gone in self._seen - counts.keys():
            OPEN_CASES.labels(gone).set(0)
        for department, count in counts.items():
            OPEN_CASES.labels(department).set(count)
        self._seen |= counts.keys()

    async def run(self, stop: asyncio.Event) -> None:
        await sample_every(self._interval_s, self.refresh, stop, "open cases")


def _waited_s(since: datetime | None) -> float:
    """Seconds since `since` (0: nothing waits)."""
    return max(0.0, time.time() - since.timestamp()) if since is not None else 0.0
