"""Test fixtures. Integration tests get a real Kafka broker and a real PostgreSQL, started
once per test session on free ports in a temporary folder, and stopped at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.localstack import LocalStack
from shared.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    home = Path(tempfile.mkdtemp(prefix="griddispatch-test-"))
    os.chmod(home, 0o755)  # the PostgreSQL server user must reach its data folder
    cache = Path(os.environ.get("GRIDDISPATCH_LOCAL__HOME", PROJECT_ROOT / ".local")) / "cache"
    stack = LocalStack.ephemeral(home, cache, partitions=6)
    try:
        stack.up(lambda msg: print(msg, flush=True))
        yield stack
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_env(stack: LocalStack) -> dict[str, str]:
    return stack.env()


@pytest.fixture
def schema() -> str:
    """A fresh schema name, so tests never see each other's tables."""
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
async def db(stack: LocalStack) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.postgres.url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
def topic() -> str:
    return "test." + uuid.uuid4().hex[:12]
