"""The department directory: every department's code and name, on a compacted topic.

Departments are the router's reference data. People should read a department's name, not its
code: a resident's SMS says "市供热公司 is on it", not "heating is on it", and Open311 clients
show `agency_responsible`. Lifecycle events carry the code only (a name is not a fact of one
case), and services share no tables, so the router publishes the directory on
`directory.departments`: one record per department keyed by its code, the latest kept for
ever by compaction, a tombstone when a department is removed.

- `DepartmentDirectory` follows the topic from its beginning, without a consumer group (every
  replica keeps the whole directory in memory; it is a few dozen records), and answers
  `name(code)`. Until it has caught up, or for a code it does not know, it answers None and the
  caller shows the code.
- `DirectoryPublisher` (the router) publishes what differs between the topic, as its own
  directory follows it, and the reference data: on start, after each reload, and every
  `interval_s`. Two router replicas write the same values; compaction keeps one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import topics
from shared.aio import until_set
from shared.kafka import client_options
from shared.metrics import REGISTRY

log = logging.getLogger(__name__)

DIRECTORY_ENTRIES = Gauge(
    "griddispatch_directory_departments",
    "Departments this process knows by name from the department directory",
    registry=REGISTRY,
)


class DepartmentEntry(BaseModel):
    """One record's value on `directory.departments` (its key is the code, as UTF-8)."""

    # A later version may add fields: readers ignore what they do not know.
    model_config = ConfigDict(frozen=True, extra="ignore")

    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump())


def changes(
    published: Mapping[str, str], current: Mapping[str, str]
) -> list[tuple[str, bytes | None]]:
    """The records that make the directory on the topic (`published`, code → name) say what
    the reference data says (`current`): a value for a new or renamed department, a tombstone
    (None) for a removed one. Pure."""
    out: list[tuple[str, bytes | None]] = [
        (code, DepartmentEntry(code=code, name=name).to_json())
        for code, name in sorted(current.items())
        if published.get(code) != name
    ]
    out += [(code, None) for code in sorted(published.keys() - current.keys())]
    return out


class DepartmentDirectory:
    """Department names, as the directory topic says (see the module's docstring)."""

    def __init__(
        self,
        connection: str | Mapping[str, Any],
        *,
        topic: str = topics.DEPARTMENTS,
        client_id: str = "griddispatch-directory",
    ) -> None:
        self.connection = connection
        self.topic = topic
        self.client_id = client_id
        self.names: dict[str, str] = {}
        self.caught_up = asyncio.Event()  # read to the end the topic had when we started

    def name(self, code: str | None) -> str | None:
        return self.names.get(code) if code else None

    def apply(
        self, key: bytes | None, value: bytes | None, into: dict[str, str] | None = None
    ) -> None:
        """One record of the topic: a name, or a tombstone. A record that is not an entry is
        logged and skipped (there is no one to dead-letter it to: the directory is not ours)."""
        names = self.names if into is None else into
        if key is None:
            log.warning("department directory: a record without a key, skipped")
            return
        code = key.decode(errors="replace")
        if value is None:
            names.pop(code, None)
        else:
            try:
                entry = DepartmentEntry.model_validate_json(value)
            except ValidationError as exc:
                log.warning("department directory: record for %r skipped: %s", code, exc)
                return
            names[code] = entry.name
        DIRECTORY_ENTRIES.set(len(self.names))

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the topic until `stop`; Kafka away or the topic missing: try again."""
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                **client_options(self.connection),
                client_id=self.client_id,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # a topic created after we started is found within seconds, not minutes
                metadata_max_age_ms=10_000,
                # an idle directory: one long poll every 5 s, not two fetches a second (a
                # record still arrives at once)
                fetch_max_wait_ms=5000,
            )
            try:
                await consumer.start()
                await self._follow(consumer, stop)
            except KafkaError as exc:
                log.warning("department directory unavailable, retrying: %s", exc)
                await until_set(stop, at_most_s=2.0)
            finally:
                await consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        # Without a group, aiokafka assigns every partition of the topic once it exists, and
        # starts at the beginning. The topic is read whole into a fresh map, which replaces
        # the names once read (after a reconnection the old names serve meanwhile).
        consumer.subscribe([self.topic])
        reading: dict[str, str] | None = {}
        ends: dict[TopicPartition, int] | None = None
        waited_s = 0
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    self.apply(record.key, record.value, into=reading)
            if reading is None:
                continue
            parts = sorted(consumer.assignment())
            if not parts:
                waited_s += 1
                if waited_s == 5:
                    log.warning(
                        "topic %s does not exist yet; waiting for it (it is created with the "
                        "contract's other topics: its KafkaTopic, or `griddispatch stack up`)",
                        self.topic,
                    )
                continue
            if ends is None:
                ends = await consumer.end_offsets(parts)
            positions = [await consumer.position(tp) for tp in ends]
            if all(at >= end for at, end in zip(positions, ends.values(), strict=True)):
                self.names, reading = reading, None
                DIRECTORY_ENTRIES.set(len(self.names))
                self.caught_up.set()


class DirectoryPublisher:
    """Keeps the directory topic in step with the reference data (the router's side)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        directory: DepartmentDirectory,
        current: Callable[[], Mapping[str, str]],
        *,
        interval_s: float = 30.0,
    ) -> None:
        self.producer = producer
        self.directory = directory
        self.current = current
        self.interval_s = interval_s
        self.wake = asyncio.Event()  # set after a reference-data reload

    async def publish(self) -> int:
        """Publish what differs; returns how many records. Each acknowledged record is
        applied to the local directory at once, so the next round does not send it again."""
        sent = 0
        for code, value in changes(self.directory.names, self.current()):
            await self.producer.send_and_wait(self.directory.topic, value=value, key=code.encode())
            self.directory.apply(code.encode(), value)
            sent += 1
        if sent:
            log.info("department directory: %d record(s) published", sent)
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        while not (self.directory.caught_up.is_set() or stop.is_set()):
            # publish only against the whole directory, or every department looks new
            await until_set(self.directory.caught_up, stop, at_most_s=60.0)
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.publish()
            except KafkaError as exc:
                log.warning("department directory not published, will retry: %s", exc)
            await until_set(self.wake, stop, at_most_s=self.interval_s)
