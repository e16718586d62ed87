"""Kafka helpers: producers and brokers with safe defaults, subscribers that commit only after
the effect is durable, and dead-lettering of poison messages.

- Producers use `acks=all` with idempotence, so a retried send never duplicates or reorders.
- FastStream's Kafka default acknowledges *first*; `durable_subscriber` always passes an explicit
  `AckPolicy.NACK_ON_ERROR`: the offset is committed after the handler returns, and a handler
  that raises (a transient failure) makes the consumer seek back and retry the message.
- `DeadLetters.guard` turns every *non*-transient failure of one message into a copy on
  `<topic>.dlq` (the error in headers) and lets the consumer go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
import traceback
import types
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import asyncpg
import murmurhash2
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.kafka.subscriber.usecase import BatchSubscriber
from faststream.message import StreamMessage
from faststream.security import BaseSecurity, SASLScram512
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared import topics
from shared.db import DATABASE_AWAY
from shared.events import DecodeError, Envelope, Event, decode
from shared.logging import COLLAPSE
from shared.metrics import REGISTRY, sample_every
from shared.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

DEAD_LETTERS = Counter(
    "griddispatch_dead_letters_total",
    "Messages moved to a dead-letter topic",
    ["topic", "consumer", "error_type"],
    registry=REGISTRY,
)

CONSUMER_LAG = Gauge(
    "griddispatch_consumer_lag",
    "Records not yet committed by this process's consumers (high watermark minus committed)",
    ["group", "topic"],
    registry=REGISTRY,
)

# Failures that say nothing about the message itself: retry it, never dead-letter it.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    *DATABASE_AWAY,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    KafkaError,
)


def connection_options(settings: KafkaSettings) -> dict[str, Any]:
    """Where the brokers are and how to log in (aiokafka names), for every Kafka client."""
    opts: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    if settings.security_protocol != "PLAINTEXT":
        opts |= {
            "security_protocol": settings.security_protocol,
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password.get_secret_value(),
        }
    if settings.security_protocol == "SASL_SSL":
        opts["ssl_context"] = create_ssl_context(
            cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
        )
    return opts


def client_options(connection: str | Mapping[str, Any]) -> dict[str, Any]:
    """A bare bootstrap address (tests, the local stack) or `connection_options(...)`."""
    if isinstance(connection, str):
        return {"bootstrap_servers": connection}
    return dict(connection)


_MURMUR2_SEED = 0x9747B28C  # the Java client's (org.apache.kafka.common.utils.Utils.murmur2)


def key_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """aiokafka's `DefaultPartitioner` — the Java client's murmur2 of the key, so a case's
    events land in the same partition whoever produces them — with the hash in compiled code
    (`murmurhash2`): aiokafka's is pure Python, ~10 µs a 36-byte case id; this is ~0.3 µs.
    A test holds the two to the same partition for any key."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[
        (murmurhash2.murmurhash2(key, _MURMUR2_SEED) & 0x7FFFFFFF) % len(all_partitions)
    ]


def producer_options(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Options of every producer in GridDispatch (aiokafka names)."""
    return {
        **connection_options(settings),
        "client_id": f"{settings.client_id_prefix}-{client_id}",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": settings.linger_ms,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
        "partitioner": key_partitioner,
    }


def make_producer(settings: KafkaSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(**producer_options(settings, client_id))


def fetch_options(settings: KafkaSettings) -> dict[str, int]:
    """How consumers fetch: the broker answers a fetch once `fetch_min_bytes` are there or
    `fetch_max_wait_ms` has passed. See `durable_subscriber`."""
    return {
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "fetch_min_bytes": settings.fetch_min_bytes,
    }


# The fetch options each broker's subscribers use, from the settings it was made with.
_FETCH: weakref.WeakKeyDictionary[KafkaBroker, dict[str, int]] = weakref.WeakKeyDictionary()


def make_broker(
    settings: KafkaSettings, service: str, registry: CollectorRegistry = REGISTRY
) -> KafkaBroker:
    """A FastStream broker whose publisher is `acks=all` + idempotent, with Prometheus
    metrics per handler. Subscribers must still be declared with `durable_subscriber`."""
    opts = producer_options(settings, service)
    security: BaseSecurity | None = None
    if settings.security_protocol != "PLAINTEXT":
        security = SASLScram512(
            username=settings.sasl_username,
            password=settings.sasl_password.get_secret_value(),
            ssl_context=opts.get("ssl_context"),
            use_ssl=settings.security_protocol == "SASL_SSL",
        )
    broker = KafkaBroker(
        opts["bootstrap_servers"],
        security=security,
        client_id=opts["client_id"],
        acks="all",
        enable_idempotence=True,
        linger_ms=opts["linger_ms"],
        max_batch_size=opts["max_batch_size"],
        partitioner=opts["partitioner"],
        allow_auto_create_topics=False,
        # Handlers take the decoded records (`Records`) and nothing else. With FastDepends on,
        # every call resolved the message from FastStream's context in a worker thread (the
        # context's resolver is synchronous), a thread hop per batch.
        apply_types=False,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        middlewares=[KafkaPrometheusMiddleware(registry=registry, app_name=service)],
        logger=_broker_logger(service),
        log_level=logging.DEBUG,  # "Received"/"Processed" per message: not at INFO
    )
    _FETCH[broker] = fetch_options(settings)  # for its durable_subscribers
    return broker


class _TopicsAreOurs(logging.Filter):
    """Drops FastStream's start-up warning, once per subscriber, that it will not create topics.
    By design: the contract topics are created with their partitions and replication by the
    deployment (Strimzi `KafkaTopic`s, `deploy/k8s/base/kafka/topics.yaml`) or the local stack,
    and the feeds by the notifier (`ensure_topics`). A topic that is really missing still shows
    in aiokafka's own errors ("not found in cluster metadata") and in the consumer lag."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Auto create topics is disabled")


def _broker_logger(service: str) -> logging.Logger:
    logger = logging.getLogger(f"griddispatch.{service}.broker")
    if not any(isinstance(f, _TopicsAreOurs) for f in logger.filters):
        logger.addFilter(_TopicsAreOurs())
    return logger


# How long a batch subscriber's poll waits when nothing comes: it returns as soon as records
# are there (see `poll_batch`), so this paces only an idle consumer's polls.
BATCH_TIMEOUT_MS = 100


# What a durable subscriber's handler is called with: the batch's records as they came (one
# record for a subscriber without `batch`).
Records = tuple[ConsumerRecord[Any, Any], ...]


async def undecoded(msg: StreamMessage[Any]) -> Records:
    """The message's records as they came. Our handlers validate them with the contract's
    models; FastStream's default decoder built a message object and tried a JSON parse per
    record of a batch, a fifth of a busy consumer's time."""
    return records_of(msg)


# How long a subscriber waits before a failed message or batch is delivered again.
RETRY_PAUSE_S = 1.0


def durable_subscriber(
    broker: KafkaBroker,
    *topic_names: str,
    group_id: str,
    retry_pause_s: float = RETRY_PAUSE_S,
    **options: Any,
) -> Callable[[Callable[..., Awaitable[None]]], object]:
    """`broker.subscriber` with commit-after-effect semantics and a start from the earliest
    offset for new groups (a new consumer must not skip reports that were already accepted).

    A handler that raises (the database is away, say: poison messages never get here, see
    `handle_isolating`) gets the same records again after `retry_pause_s`. Without the pause a
    database outage was a hot loop: the batch fetched, failed and logged with its traceback ~50
    times a second per consumer."""
    options.setdefault("auto_offset_reset", "earliest")
    # The broker may hold a fetch up to `fetch_max_wait_ms` until `fetch_min_bytes` are there,
    # and the consumer sends no other fetch meanwhile: at aiokafka's default wait (500 ms) a
    # consumer whose busy partition was still buffered waited on a fetch for its idle ones (a
    # third of the speed); much lower polls an idle broker hard. Its min bytes (1) answered
    # every record with a fetch of its own under load; `FetchTuner` uses 1 only while a
    # consumer is quiet. docs/operations.md, "Consumer polling".
    for name, value in _FETCH.get(broker, fetch_options(KafkaSettings())).items():
        options.setdefault(name, value)
    options.setdefault("decoder", undecoded)
    if options.get("batch"):
        options.setdefault("batch_timeout_ms", BATCH_TIMEOUT_MS)
    subscriber: Callable[[Callable[..., Awaitable[None]]], object] = broker.subscriber(
        *topic_names, group_id=group_id, ack_policy=AckPolicy.NACK_ON_ERROR, **options
    )
    if isinstance(subscriber, BatchSubscriber):
        subscriber.get_msg = types.MethodType(poll_batch, subscriber)  # type: ignore[method-assign]

    def register(handler: Callable[..., Awaitable[None]]) -> object:
        @functools.wraps(handler)
        async def pausing_before_a_retry(*args: Any, **kwargs: Any) -> None:
            try:
                await handler(*args, **kwargs)
            except Exception as exc:
                log.warning(
                    "%s: will retry in %.0f s: %s: %s",
                    group_id,
                    retry_pause_s,
                    type(exc).__name__,
                    exc,
                    extra=COLLAPSE,
                )
                await asyncio.sleep(retry_pause_s)
                raise

        return subscriber(pausing_before_a_retry)

    return register


async def poll_batch(
    subscriber: BatchSubscriber, consumer: AIOKafkaConsumer
) -> tuple[ConsumerRecord[Any, Any], ...]:
    """FastStream's batch poll (`BatchSubscriber.get_msg`) without its nap after an empty
    poll. aiokafka's `getmany` already waits up to the timeout and returns as soon as records
    come; FastStream then slept as long again, and a report arriving during that nap waited
    for it (up to 20 ms per hop at our former timeout, 200 ms at FastStream's default). Only
    a poll that came back early and empty (no partitions assigned yet) sleeps out the rest."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    batches = await consumer.getmany(
        timeout_ms=subscriber.batch_timeout_ms, max_records=subscriber.max_records
    )
    if batches:
        return tuple(itertools.chain.from_iterable(batches.values()))
    rest = subscriber.batch_timeout_ms / 1000 - (loop.time() - started)
    if rest > 0:
        await asyncio.sleep(rest)
    return ()


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(
        exc, asyncpg.PostgresConnectionError
    ):
        # asyncpg raises InterfaceError for a closed connection, but also for misuse (wrong
        # argument count): only the former is worth retrying.
        return "connection" in str(exc).lower()
    return isinstance(exc, TRANSIENT_ERRORS)


def _text(value: str) -> str:
    return value[:2000]


# The headers a dead letter carries beside the message's own: `x-dlq-topic`, `x-dlq-error`, …
DLQ_HEADER_PREFIX = "x-dlq-"


class DeadLetters:
    """Moves poison messages of one consumer to `<topic>.dlq`."""

    def __init__(self, broker: KafkaBroker, consumer: str) -> None:
        self._broker = broker
        self.consumer = consumer

    async def publish(self, record: ConsumerRecord[Any, Any], error: BaseException) -> None:
        """Copy `record` (key, value, headers untouched) to its DLQ, adding the error."""
        headers = {
            k: v.decode("utf-8", "replace")
            for k, v in (record.headers or ())
            if not k.startswith(DLQ_HEADER_PREFIX)
        }
        headers.update(
            {
                "x-dlq-error-type": _text(type(error).__name__),
                "x-dlq-error": _text(str(error)),
                "x-dlq-traceback": _text("".join(traceback.format_exception(error)[-3:])),
                "x-dlq-topic": record.topic,
                "x-dlq-partition": str(record.partition),
                "x-dlq-offset": str(record.offset),
                "x-dlq-consumer": self.consumer,
                "x-dlq-at": datetime.now(UTC).isoformat(),
            }
        )
        # The broker's producer is acks=all + idempotent; publish waits for the broker's ack,
        # so the offset of the poison message is committed only once its copy is safe.
        await self._broker.publish(
            record.value or b"", topic=topics.dlq(record.topic), key=record.key, headers=headers
        )
        DEAD_LETTERS.labels(record.topic, self.consumer, type(error).__name__).inc()
        log.warning(
            "dead-lettered a message",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "consumer": self.consumer,
                "error_type": type(error).__name__,
            },
        )

    def guard(self, record: ConsumerRecord[Any, Any]) -> _Guard:
        """`async with dead_letters.guard(record): ...` — a non-transient exception inside
        sends `record` to the DLQ and is swallowed; a transient one propagates, so the
        subscriber redelivers the message (after its pause)."""
        return _Guard(self, record)


class _Guard:
    def __init__(self, owner: DeadLetters, record: ConsumerRecord[Any, Any]) -> None:
        self._owner = owner
        self._record = record

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False  # success, or cancellation: let it through
        if is_transient(exc):
            return False
        await self._owner.publish(self._record, exc)
        return True


LEADER_WAIT_S = 10.0


async def _leaders_elected(admin: AIOKafkaAdminClient, names: list[str]) -> bool:
    topics_ = await admin.describe_topics(names)
    return len(topics_) == len(names) and all(
        t["error_code"] == 0
        and t["partitions"]
        and all(p["error_code"] == 0 and p["leader"] >= 0 for p in t["partitions"])
        for t in topics_
    )


async def _leaders_serving(
    connection: str | Mapping[str, Any], parts: list[TopicPartition], deadline: float
) -> None:
    """Wait until each new partition's leader answers for it. The metadata names a leader a
    moment before that broker acts as one: a producer's first writes then met
    NotLeaderForPartition (retried, but a WARNING per partition in the log). Asking the
    leaders for the partitions' end offsets retries until they answer."""
    consumer = AIOKafkaConsumer(**client_options(connection), group_id=None)
    await consumer.start()
    try:
        left = deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError, KafkaError):
            await asyncio.wait_for(consumer.end_offsets(parts), max(left, 0.1))
    finally:
        await consumer.stop()


async def ensure_topics(
    connection: str | Mapping[str, Any],
    names: Iterable[str],
    *,
    partitions: int,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created."""
    admin = AIOKafkaAdminClient(**client_options(connection))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            # created concurrently by another process: fine
            with contextlib.suppress(TopicAlreadyExistsError):
                answer = await admin.create_topics(
                    [
                        NewTopic(
                            n, partitions, replication_factor, topic_configs=dict(configs or {})
                        )
                        for n in missing
                    ]
                )
                refused = [
                    f"{topic}: {detail[0] if detail and detail[0] else f'error {code}'}"
                    for topic, code, *detail in answer.topic_errors  # detail: message (v1+)
                    if code not in (0, TopicAlreadyExistsError.errno)
                ]
                if refused:  # e.g. more replicas than brokers: say so instead of waiting
                    raise KafkaError(f"Kafka refused to create topics: {'; '.join(refused)}")
            # A new topic's partitions get leaders a moment later: wait, so that a consumer
            # starting on it at "latest" (the live stream) is assigned every partition at
            # once, and the first writes are not refused.
            deadline = asyncio.get_running_loop().time() + LEADER_WAIT_S
            while not await _leaders_elected(admin, missing):
                if asyncio.get_running_loop().time() > deadline:
                    log.warning("topics %s have no leaders yet; going on", missing)
                    break
                await asyncio.sleep(0.1)
            else:
                parts = [
                    TopicPartition(t["topic"], p["partition"])
                    for t in await admin.describe_topics(missing)
                    for p in t["partitions"]
                ]
                await _leaders_serving(connection, parts, deadline)
        return missing
    finally:
        await admin.close()


async def create_contract_topics(
    connection: str | Mapping[str, Any], partitions: int, replication_factor: int = 1
) -> list[str]:
    """Create every contract topic that does not exist yet (the case topics with `partitions`
    partitions, the compacted directory with one); returns the ones created."""
    created = await ensure_topics(
        connection,
        topics.case_topics(),
        partitions=partitions,
        replication_factor=replication_factor,
    )
    created += await ensure_topics(
        connection,
        [topics.DEPARTMENTS],
        partitions=1,
        replication_factor=replication_factor,
        configs=topics.DIRECTORY_CONFIG,
    )
    return created


async def wait_for_group_coordinator(
    connection: str | Mapping[str, Any], timeout_s: float = 30.0
) -> None:
    """On a new cluster, ask for a group coordinator until there is one. Kafka creates its
    offsets topic at the first such request; until then every consumer group's first join
    fails once and aiokafka logs it (two WARNINGs per group at the first `make up`)."""
    admin = AIOKafkaAdminClient(**client_options(connection))
    await admin.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                await admin.find_coordinator("griddispatch-warm-up")
                return
            except KafkaError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


def records_of(msg: Any) -> Records:
    """The raw records of a FastStream Kafka message, batch or single."""
    raw = msg.raw_message
    return raw if isinstance(raw, tuple) else (raw,)


async def decode_records(
    records: Sequence[ConsumerRecord[Any, Any]], dead_letters: DeadLetters | None
) -> list[tuple[Envelope, Event]]:
    """The records' events, in order. A malformed record goes to the dead-letter topic (or,
    without one, raises `DecodeError`)."""
    items = []
    for record in records:
        try:
            items.append(decode(record.value))
        except DecodeError as exc:
            if dead_letters is None:
                raise
            await dead_letters.publish(record, exc)
    return items


async def handle_isolating(
    records: Sequence[ConsumerRecord[Any, Any]],
    handle: Callable[[Sequence[ConsumerRecord[Any, Any]]], Awaitable[object]],
    dead_letters: DeadLetters,
) -> None:
    """Handle a batch at once; if it fails for a reason that is not transient, handle its
    records one by one so that only the culprit goes to the dead-letter topic and the stream
    goes on. Transient failures propagate: the batch is redelivered."""
    try:
        await handle(records)
    except Exception as exc:
        if is_transient(exc):
            raise
        log.exception("batch failed; retrying its records one by one")
        for record in records:
            async with dead_letters.guard(record):
                await handle([record])


async def start_when_reachable(*clients: Any, stop: asyncio.Event, what: str) -> None:
    """Start Kafka clients (producers, brokers), retrying while the broker is unreachable,
    so a service can come up before Kafka does."""
    while not stop.is_set():
        try:
            for client in clients:
                await client.start()
            return
        except Exception as exc:
            log.warning("%s: Kafka unavailable, retrying: %s", what, exc)
            for client in clients:
                with contextlib.suppress(Exception):
                    await client.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2)


class FetchTuner:
    """Fetches record by record while a consumer's topics are quiet, in `fetch_min_bytes`
    fetches while they are busy.

    The broker answers a fetch once `fetch_min_bytes` have arrived or `fetch_max_wait_ms` has
    passed. A large minimum makes a busy consumer read fewer, larger batches (less CPU for the
    broker and for each consumer); on a quiet pipeline it makes every lone report wait out the
    whole fetch wait at every hop. So each consumer's minimum follows its arrival rate (the
    growth of its partitions' high watermarks): the configured minimum from `busy_per_s`
    records a second, 1 again below half that.

    aiokafka has no public setter for the minimum: the tuner sets the attribute its fetcher
    reads for every fetch request (`tests/shared/test_fetch_tuner.py` holds the pinned
    aiokafka to it), and does nothing if a consumer has no such attribute.
    """

    def __init__(self, broker: KafkaBroker, settings: KafkaSettings, *, interval_s: float = 0.5):
        self._broker = broker
        self.busy_min_bytes = settings.fetch_min_bytes
        self.busy_per_s = settings.fetch_busy_per_s
        self.interval_s = interval_s
        self._last: dict[int, tuple[float, int]] = {}  # id(consumer) → (when, Σ high watermarks)

    def tune(self, consumer: Any, now: float) -> int | None:
        """Set `consumer`'s fetch minimum for its arrival rate since the last look; returns it
        (None: the consumer cannot be tuned)."""
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None or not hasattr(fetcher, "_fetch_min_bytes"):
            return None
        highs = [consumer.highwater(tp) for tp in consumer.assignment()]
        total = sum(h for h in highs if h is not None)
        last = self._last.get(id(consumer))
        self._last[id(consumer)] = (now, total)
        if last is not None and now <= last[0]:
            return None
        # No rate before the second look: start quiet, the next look sees a backlog.
        rate = 0.0 if last is None else (total - last[1]) / (now - last[0])
        current: int = fetcher._fetch_min_bytes
        if rate >= self.busy_per_s:
            current = self.busy_min_bytes
        elif rate < self.busy_per_s / 2:
            current = 1
        fetcher._fetch_min_bytes = current
        return current

    async def sample(self) -> None:
        now = time.monotonic()
        for sub in self._broker.subscribers:
            consumer = getattr(sub, "consumer", None)
            if consumer is not None:
                self.tune(consumer, now)

    async def run(self, stop: asyncio.Event) -> None:
        if self.busy_min_bytes <= 1:
            return  # nothing to tune: every fetch is answered at once anyway
        await sample_every(self.interval_s, self.sample, stop, "fetch tuner")


async def watch_consumers(broker: KafkaBroker, settings: Settings, stop: asyncio.Event) -> None:
    """What every service runs beside its broker's subscribers until `stop`: the consumer-lag
    metric and the fetch tuner."""
    await asyncio.gather(
        ConsumerLag(broker, interval_s=settings.metrics_interval_s).run(stop),
        FetchTuner(broker, settings.kafka).run(stop),
    )


class ConsumerLag:
    """Samples the lag of every consumer of a broker into `griddispatch_consumer_lag`.

    Lag is measured against the *committed* offset (as KEDA's Kafka scaler does), since a
    durable subscriber commits only after the effect is stored. Each replica reports its own
    partitions, so `sum by (group, topic)` is the group's lag."""

    def __init__(self, broker: KafkaBroker, *, interval_s: float = 10.0) -> None:
        self._broker = broker
        self._interval_s = interval_s
        self._reported: set[tuple[str, str]] = set()

    async def sample(self) -> None:
        lag: dict[tuple[str, str], int] = {}
        for sub in self._broker.subscribers:
            consumer = getattr(sub, "consumer", None)
            group = getattr(sub, "group_id", None)
            if consumer is None or group is None:
                continue
            highs = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
            for tp in highs:
                lag.setdefault((group, tp.topic), 0)
            known = [tp for tp, high in highs.items() if high is not None]
            committed = await committed_offsets(consumer, known)
            for tp in known:
                lag[(group, tp.topic)] += max(0, highs[tp] - (committed.get(tp) or 0))
        for key in self._reported - lag.keys():  # partitions moved to another replica
            CONSUMER_LAG.labels(*key).set(0)
        for (group, topic), value in lag.items():
            CONSUMER_LAG.labels(group, topic).set(value)
        self._reported |= lag.keys()

    async def run(self, stop: asyncio.Event) -> None:
        await sample_every(self._interval_s, self.sample, stop, "consumer lag")


async def committed_offsets(
    consumer: Any, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The group's committed offsets of `partitions` (a partition never committed is left out),
    in one request. aiokafka's public `committed` asks the coordinator once per partition: a
    dozen round trips per consumer per sample, 7–8% of the router's and the notifier's CPU in
    `bench/e2e.py` (which samples every second). Its coordinator's own call takes them all at
    once (a test holds the pinned aiokafka to it); without one, we ask partition by partition."""
    if not partitions:
        return {}
    fetch = getattr(getattr(consumer, "_coordinator", None), "fetch_committed_offsets", None)
    if fetch is None:
        each = {tp: await consumer.committed(tp) for tp in partitions}
        return {tp: offset for tp, offset in each.items() if offset is not None}
    found = await fetch(list(partitions))
    return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}
