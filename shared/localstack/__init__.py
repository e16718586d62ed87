"""The local stack for development and tests: a real Kafka broker and a real PostgreSQL,
run as plain processes (no containers). `griddispatch stack up|down|status` drives it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from shared.kafka import create_contract_topics, wait_for_group_coordinator
from shared.localstack.kafka import KafkaNode
from shared.localstack.postgres import PostgresNode
from shared.localstack.process import Progress, StackError, free_port
from shared.settings import Settings

__all__ = ["KafkaNode", "LocalStack", "PostgresNode", "StackError", "free_port"]


@dataclass
class LocalStack:
    kafka: KafkaNode
    postgres: PostgresNode
    partitions: int = 12

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStack:
        home = settings.local.home
        return cls(
            kafka=KafkaNode(
                home=home / "kafka",
                cache=home / "cache",
                port=settings.local.kafka_port,
                controller_port=settings.local.kafka_controller_port,
                partitions=settings.kafka.partitions,
                heap=settings.local.kafka_heap,
            ),
            postgres=PostgresNode(home=home / "postgres", port=settings.local.postgres_port),
            partitions=settings.kafka.partitions,
        )

    @classmethod
    def ephemeral(cls, home: Path, cache: Path, partitions: int = 12) -> LocalStack:
        """A throw-away stack on free ports (tests, benchmarks)."""
        return cls(
            kafka=KafkaNode(
                home=home / "kafka",
                cache=cache,
                port=free_port(),
                controller_port=free_port(),
                partitions=partitions,
            ),
            postgres=PostgresNode(
                home=home / "postgres",
                port=free_port(),
                # Tests kill services, never the machine: skipping fsync is safe there.
                settings={"fsync": "off", "full_page_writes": "off"},
            ),
            partitions=partitions,
        )

    def env(self) -> dict[str, str]:
        """The environment that points services at this stack."""
        return {
            "GRIDDISPATCH_DATABASE_URL": self.postgres.url,
            "GRIDDISPATCH_KAFKA__BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "GRIDDISPATCH_KAFKA__PARTITIONS": str(self.partitions),
        }

    def up(self, progress: Progress) -> dict[str, float]:
        """Start both servers and create the contract topics. Returns start-up seconds."""
        timings = {"postgres": self.postgres.start(progress)}
        try:
            timings["kafka"] = self.kafka.start(progress)
            created = asyncio.run(self._topics_and_groups())
        except BaseException:
            self.down()
            raise
        if created:
            progress(f"created topics: {', '.join(created)}")
        return timings

    async def _topics_and_groups(self) -> list[str]:
        created = await create_contract_topics(self.kafka.bootstrap, self.partitions)
        await wait_for_group_coordinator(self.kafka.bootstrap)
        return created

    def down(self) -> list[str]:
        stopped = []
        if self.kafka.stop():
            stopped.append("kafka")
        if self.postgres.stop():
            stopped.append("postgres")
        return stopped

    def status(self) -> dict[str, str]:
        return {
            "kafka": f"running at {self.kafka.bootstrap} (pid {self.kafka.process.pid})"
            if self.kafka.process.running()
            else "stopped",
            "postgres": f"running at {self.postgres.url} (pid {self.postgres.process.pid})"
            if self.postgres.process.running()
            else "stopped",
        }
