"""Dead letters, read and replayed: what `griddispatch dlq list|replay` does.

`shared.kafka.DeadLetters` copies a poison message to `<topic>.dlq` unchanged, with why in
`x-dlq-*` headers. Here an operator reads them back and, once the cause is fixed (a release, a
catalogue entry), sends chosen ones to their original topic. Every consumer deduplicates by
`event_id`, so replaying a message that was in fact processed does no harm. A replayed message
carries `x-replayed-from: <dlq>/<partition>/<offset>`; if it fails again it comes back to the
DLQ as a new record with that header kept, so the trail is visible.

The top half is plain data (parse, select); `read_dead_letters` and `replay` are the Kafka edge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import topics
from shared.kafka import DLQ_HEADER_PREFIX, client_options, make_producer
from shared.service import KafkaAccess
from shared.settings import KafkaSettings

REPLAYED_FROM = "x-replayed-from"


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic, and why it is there."""

    dlq: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def _header(self, name: str) -> str:
        for k, v in self.headers:
            if k == name:
                return v.decode("utf-8", "replace")
        return ""

    @property
    def position(self) -> str:
        """`<dlq>/<partition>/<offset>`: where this dead letter is, as `--offset` takes it."""
        return f"{self.dlq}/{self.partition}/{self.offset}"

    @property
    def origin(self) -> str:
        """The topic it was read from (the DLQ's name without `.dlq` if the header is lost)."""
        return self._header(DLQ_HEADER_PREFIX + "topic") or self.dlq.removesuffix(topics.DLQ_SUFFIX)

    @property
    def target(self) -> str:
        """Where a replay sends it: its origin, which must be a topic of the contract (the
        header is data, and a replay must not write anywhere else, a department's feed say)."""
        if self.origin not in topics.CONTRACT_TOPICS:
            raise ValueError(f"{self.position}: not replayable to {self.origin!r}")
        return self.origin

    @property
    def consumer(self) -> str:
        return self._header(DLQ_HEADER_PREFIX + "consumer")

    @property
    def error_type(self) -> str:
        return self._header(DLQ_HEADER_PREFIX + "error-type")

    @property
    def error(self) -> str:
        return self._header(DLQ_HEADER_PREFIX + "error")

    @property
    def dead_at(self) -> datetime | None:
        text = self._header(DLQ_HEADER_PREFIX + "at")
        try:
            return datetime.fromisoformat(text) if text else None
        except ValueError:
            return None

    @property
    def replayed_from(self) -> str:
        """Set when this dead letter was itself a replay that failed again."""
        return self._header(REPLAYED_FROM)

    def replay_headers(self) -> list[tuple[str, bytes]]:
        """The original message's headers (trace context and the like), without the DLQ's,
        and where the replay came from."""
        kept = [
            (k, v)
            for k, v in self.headers
            if not k.startswith(DLQ_HEADER_PREFIX) and k != REPLAYED_FROM
        ]
        return [*kept, (REPLAYED_FROM, self.position.encode())]


@dataclass(frozen=True)
class Selection:
    """Which dead letters to act on; every given criterion must hold. Empty selects all."""

    consumer: str | None = None
    error_type: str | None = None
    after: datetime | None = None  # dead-lettered after this moment
    positions: frozenset[str] = frozenset()  # `<dlq>/<partition>/<offset>`

    @property
    def everything(self) -> bool:
        return self == Selection()

    def __call__(self, letter: DeadLetter) -> bool:
        if self.consumer is not None and letter.consumer != self.consumer:
            return False
        if self.error_type is not None and letter.error_type != self.error_type:
            return False
        if self.after is not None:
            at = letter.dead_at
            if at is None or at <= self.after:
                return False
        return not self.positions or letter.position in self.positions


# What the tool does on Kafka: the `griddispatch-dlq` KafkaUser's ACLs (deploy/k8s), which
# tests/ops compare with this.
KAFKA_ACCESS = KafkaAccess(
    follows=tuple(topics.dead_letter_topics()), writes=topics.CONTRACT_TOPICS
)


# A dead letter's Kafka timestamp is when it was written to its DLQ, and so is its
# `x-dlq-at` header, give or take the producer's clock: a read from a moment starts this much
# earlier, and `keep` judges by the header.
SEEK_MARGIN = timedelta(minutes=5)


async def read_dead_letters(
    connection: str | dict[str, Any],
    dlqs: Sequence[str],
    timeout_s: float = 30.0,
    keep: Callable[[DeadLetter], bool] | None = None,
    since: datetime | None = None,
) -> list[DeadLetter]:
    """Every record now in `dlqs` (that `keep` selects), oldest first per partition. Reads up
    to the end offsets seen at the start, without a consumer group: reading commits nothing
    and moves nothing. What `keep` refuses is dropped as it is read: a DLQ filled by a bad
    release can hold millions of records, and a selection is usually a few of them. With
    `since`, each partition is read from the first record written then (less `SEEK_MARGIN`),
    found by the broker's time index, not from its beginning."""
    consumer = AIOKafkaConsumer(
        **client_options(connection), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        # what `subscribe` does to learn the topics' partitions, without joining a group
        await consumer._client.set_topics(list(dlqs))
        parts = [
            TopicPartition(dlq, p) for dlq in dlqs for p in consumer.partitions_for_topic(dlq) or ()
        ]
        if not parts:
            return []
        consumer.assign(parts)
        end = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        todo = {tp for tp in parts if end[tp] > 0}
        if since is not None and todo:
            ms = int((since - SEEK_MARGIN).timestamp() * 1000)
            starts = await consumer.offsets_for_times({tp: ms for tp in todo})
            for tp in list(todo):
                found = starts.get(tp)
                if found is None:  # nothing written since then
                    todo.discard(tp)
                else:
                    consumer.seek(tp, found.offset)
        letters: list[DeadLetter] = []
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=int(timeout_s * 1000))
            if not batch:
                raise TimeoutError(f"no records from {sorted(str(tp) for tp in todo)} in time")
            for tp, records in batch.items():
                for r in records:
                    if r.offset < end[tp]:
                        letter = _letter(r)
                        if keep is None or keep(letter):
                            letters.append(letter)
            for tp in list(todo):
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
        return sorted(letters, key=lambda x: (x.dlq, x.partition, x.offset))
    finally:
        await consumer.stop()


def _letter(record: Any) -> DeadLetter:
    return DeadLetter(
        dlq=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value or b"",
        headers=tuple((k, v or b"") for k, v in record.headers or ()),
    )


async def replay(settings: KafkaSettings, letters: Iterable[DeadLetter]) -> int:
    """Send each dead letter to its original topic (same key, so the same partition; same
    value), and wait until the broker has them all. Returns how many were sent."""
    chosen = [(letter.target, letter) for letter in letters]  # refuses before sending any
    producer = make_producer(settings, "dlq-replay")
    await producer.start()
    try:
        sent = [
            await producer.send(
                target, letter.value, key=letter.key, headers=letter.replay_headers()
            )
            for target, letter in chosen
        ]
        for ack in sent:
            await ack
        return len(sent)
    finally:
        await producer.stop()
