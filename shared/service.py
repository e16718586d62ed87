"""What a service tells the rest of the system about itself, and how it is run.

Each service exposes a `ServiceSpec` through the `griddispatch.services` entry-point group
(see pyproject.toml); the CLI finds services there, so `shared/` never imports a service.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from prometheus_client import Counter

from shared.aio import until_set
from shared.catalogue import Catalogue, Taken
from shared.db import MigrationSource
from shared.logging import configure_logging
from shared.metrics import REGISTRY
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

ServiceMain = Callable[[Settings, asyncio.Event], Awaitable[None]]


class TakesCatalogue(Protocol):
    def __call__(
        self, conn: asyncpg.Connection, catalogue: Catalogue, *, retire_others: bool
    ) -> Awaitable[Taken]: ...


@dataclass(frozen=True)
class KafkaAccess:
    """What a service does on Kafka. The Kubernetes KafkaUsers grant exactly this and nothing
    more (checked by tests/ops/test_kubernetes.py)."""

    reads: tuple[tuple[str, str], ...] = ()  # (topic, consumer group)
    follows: tuple[str, ...] = ()  # topics read whole, without a consumer group (the directory)
    writes: tuple[str, ...] = ()
    feeds: bool = False  # creates, writes and streams the department feeds `dept.*`


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    description: str
    main: ServiceMain
    schema: str | None = None
    migrations: tuple[MigrationSource, ...] = field(default=())
    order: int = 50  # start order for `griddispatch up`: lower first
    kafka: KafkaAccess = KafkaAccess()
    # the port of its HTTP API, /health and /metrics, as its settings say (for `up`'s Prometheus)
    http_port: Callable[[], int] | None = None
    # takes the service catalogue into its schema (`griddispatch catalogue import`): each
    # service that decides by category keeps its own copy. With `retire_others` (True), the
    # categories the file does not name stop being offered (cases in them keep them).
    take_catalogue: TakesCatalogue | None = None
    # what would keep this service from taking a catalogue (e.g. a department it does not
    # know); run for every service before any takes it, so a refusal changes nothing
    check_catalogue: Callable[[asyncpg.Connection, Catalogue], Awaitable[list[str]]] | None = None


def discover_services() -> dict[str, ServiceSpec]:
    found: dict[str, ServiceSpec] = {}
    for ep in entry_points(group="griddispatch.services"):
        spec = ep.load()
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"entry point {ep.name} is not a ServiceSpec")
        found[spec.name] = spec
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


def run_service(spec: ServiceSpec, settings: Settings | None = None) -> None:
    """Run one service in the foreground until SIGTERM or SIGINT, then stop it cleanly."""
    settings = settings or get_settings()
    configure_logging(spec.name, level=settings.log_level, json=settings.log_json)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("starting %s", spec.name)
        await spec.main(settings, stop)
        log.info("%s stopped", spec.name)

    asyncio.run(_main())


# Python's cycle collector runs a young-generation pass every 700 net allocations, and now and
# then a full pass over every object: in a service holding pools, clients, models and (the
# router) a city, a sixth of a busy intake worker's CPU. After start-up the long-lived objects
# are frozen out of those passes and young passes are rarer; reference counting still frees
# everything without cycles at once.
GEN0_THRESHOLD = 50_000


def settle_heap(*, collect: bool = True) -> None:
    """Call once a process has built what it keeps (and again, `collect=False`, after it
    swapped in a large new data set): freezes the objects alive now out of the collector's
    passes and raises the young-generation threshold."""
    if collect:
        gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, 20, 100)


BACKGROUND_RESTARTS = Counter(
    "griddispatch_background_restarts_total",
    "Background loops (senders, relays, schedulers) restarted after an unexpected error",
    ["task"],
    registry=REGISTRY,
)
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


async def supervised(
    name: str,
    loop: Callable[[asyncio.Event], Awaitable[None]],
    stop: asyncio.Event,
    *,
    backoff_s: tuple[float, ...] = RESTART_BACKOFF_S,
) -> None:
    """Run a background loop until `stop`; if it fails with an error it does not handle
    itself, log the error with its traceback and start it again after a pause (longer after
    each failure in a row, up to the last of `backoff_s`).

    The loops handle the failures they expect (the database or Kafka away). Anything else
    used to end the task without a word: its work (webhooks, messages, the outbox) would then
    wait, unseen, until the next restart of the whole service."""
    failures = 0
    while not stop.is_set():
        started = asyncio.get_running_loop().time()
        try:
            await loop(stop)
            return
        except Exception:
            # a loop that ran a good while before failing starts its back-off afresh
            ran_s = asyncio.get_running_loop().time() - started
            failures = 1 if ran_s > backoff_s[-1] else failures + 1
            pause = backoff_s[min(failures, len(backoff_s)) - 1]
            BACKGROUND_RESTARTS.labels(name).inc()
            log.exception("%s failed; starting it again in %.0f s", name, pause)
            await until_set(stop, at_most_s=pause)


async def run_until_stopped(
    stop: asyncio.Event,
    *,
    server: uvicorn.Server,
    broker: KafkaBroker,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    tasks: list[asyncio.Task[Any]],
    grace_s: float = 15.0,
) -> None:
    """Wait for `stop`, then shut a service down in order: its HTTP server and consumers
    first (no new work), then its background tasks (`grace_s` each to finish what they hold),
    then the producer and the database pool they used."""
    settle_heap()
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await broker.stop()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, grace_s)
        await producer.stop()
        await pool.close()
