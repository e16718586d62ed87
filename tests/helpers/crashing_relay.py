"""An outbox relay that is killed (SIGKILL) after the broker acknowledged its second batch but
before that batch is deleted: the worst moment for exactly-once publication.

    python -m tests.helpers.crashing_relay DSN SCHEMA BOOTSTRAP BATCH_SIZE
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg

from shared.kafka import make_producer
from shared.outbox import OutboxRelay
from shared.settings import KafkaSettings


class CrashingRelay(OutboxRelay):
    batches = 0

    async def after_publish(self, rows: list[asyncpg.Record]) -> None:
        self.batches += 1
        if self.batches == 2:
            print(f"published {len(rows)} rows, dying before the delete", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


async def main(dsn: str, schema: str, bootstrap: str, batch_size: int) -> None:
    producer = make_producer(KafkaSettings(bootstrap_servers=bootstrap), "crash-test")
    await producer.start()
    relay = CrashingRelay(dsn, schema, producer, batch_size=batch_size, poll_interval_s=0.2)
    await relay.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
