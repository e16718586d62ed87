"""Keeping records no longer than they are needed.

Three kinds of rows would otherwise pile up for ever: personal data (a reporter's contact,
care flags, community-correction status) long after the case closed; what recognises a
redelivered message (seen-event ids, the router's decision log, delivered webhooks) long after
no topic can deliver it again; and intake's Idempotency-Key answers. Each service owns its
tables (services share none), so each lists its own `Purge`s and runs a `Retention` loop
beside its consumers; every purge is one set-based statement taking a batch of rows with
`FOR UPDATE SKIP LOCKED`, so replicas share the work and never wait for each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import Counter

from shared.aio import until_set
from shared.db import DATABASE_AWAY
from shared.metrics import REGISTRY
from shared.privacy import masked_sql
from shared.settings import RetentionSettings

log = logging.getLogger(__name__)

# Waited out until the next round. Any other error (a failing statement is a bug) ends the
# loop, and `supervised` logs it, counts it (the GridDispatchBackgroundLoopFailing alert) and
# starts it again.
_AWAY = (*DATABASE_AWAY, asyncpg.exceptions.OperatorInterventionError)

PRUNED = Counter(
    "griddispatch_retention_pruned_total",
    "Rows erased or deleted because their retention ran out",
    ["service", "purge"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Purge:
    """One kind of row and how long it is kept.

    `sql` erases or deletes at most `$2` rows whose retention ran out before `$1` (a
    timestamptz) and returns one row per row it touched (`RETURNING 1`)."""

    name: str  # the metric's label: a fixed word, never data
    keep: timedelta
    sql: str


class Retention:
    """Runs a service's purges now and then (every `check_s`), each in batches until done."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        service: str,
        purges: Sequence[Purge],
        settings: RetentionSettings,
    ) -> None:
        self.pool = pool
        self.service = service
        self.purges = tuple(purges)
        self.check_s = settings.check_s
        self.batch_size = settings.batch_size

    async def purge(self, now: datetime | None = None) -> dict[str, int]:
        """Every purge once, to the end; returns the rows each touched."""
        now = now or datetime.now(UTC)
        done: dict[str, int] = {}
        for purge in self.purges:
            total = 0
            while True:
                async with self.pool.acquire() as conn:
                    touched = len(await conn.fetch(purge.sql, now - purge.keep, self.batch_size))
                total += touched
                PRUNED.labels(self.service, purge.name).inc(touched)
                if touched < self.batch_size:
                    break
                await asyncio.sleep(0)  # a large backlog must not starve the service's work
            done[purge.name] = total
        return done

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                done = await self.purge()
            except _AWAY as exc:  # the database away or failing over: the next round
                log.warning(
                    "retention: database unavailable, next round in %.0f s: %r", self.check_s, exc
                )
            else:
                if any(done.values()):
                    log.info("retention: %s", ", ".join(f"{k} {v}" for k, v in done.items()))
            await until_set(stop, at_most_s=self.check_s)


def masked(sql_text: str, name_sql: str | None = None) -> str:
    """SQL for the text `sql_text` (an expression) with the personal data residents write into
    free text masked (`shared.privacy`), and the reporter's name `name_sql` if given: what
    erasing a resident's data does to their text."""
    return masked_sql(sql_text, name_sql)


def masked_fields(sql_json: str, fields: Sequence[str], name_sql: str | None = None) -> str:
    """SQL for the jsonb object `sql_json` with contacts (and the name `name_sql`) masked in
    its text `fields` (those it has; the others as they are)."""
    pairs = []
    for field in fields:
        value = f"({sql_json}) ->> '{field}'"
        pairs.append(f"'{field}', {masked(value, name_sql)}")
    return f"({sql_json}) || jsonb_strip_nulls(jsonb_build_object({', '.join(pairs)}))"


def seen_events_purge(schema: str, settings: RetentionSettings) -> Purge:
    """The ids a consumer keeps to drop a message delivered twice (`<schema>.seen_events`)."""
    return Purge(
        "seen events",
        settings.dedup_kept,
        f"""DELETE FROM {schema}.seen_events WHERE event_id IN (
               SELECT event_id FROM {schema}.seen_events WHERE seen_at < $1
               LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING 1""",
    )
