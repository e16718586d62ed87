"""A local stack started from nothing is ready for the services: its contract topics exist
and the first consumer group joins without the broker refusing it."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from shared import topics
from shared.settings import PROJECT_ROOT


def test_a_fresh_stack_has_its_topics_and_a_group_coordinator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shared.localstack import LocalStack

    home = Path(tempfile.mkdtemp(prefix="griddispatch-fresh-"))
    os.chmod(home, 0o755)
    cache = Path(os.environ.get("GRIDDISPATCH_LOCAL__HOME", PROJECT_ROOT / ".local")) / "cache"
    stack = LocalStack.ephemeral(home, cache, partitions=2)

    async def first_group() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
        finally:
            await admin.close()
        consumer = AIOKafkaConsumer(
            topics.CASES_INTAKE, bootstrap_servers=stack.kafka.bootstrap, group_id="first"
        )
        await consumer.start()
        try:
            await consumer.getmany(timeout_ms=1000)
        finally:
            await consumer.stop()
        return existing

    try:
        stack.up(lambda _: None)
        with caplog.at_level(logging.WARNING, logger="aiokafka"):
            existing = asyncio.run(first_group())
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
    assert set(topics.all_contract_topics()) <= existing
    # before the stack asked for a coordinator itself, the first join failed once, loudly
    assert not [r for r in caplog.records if "Coordinator" in r.getMessage()]
